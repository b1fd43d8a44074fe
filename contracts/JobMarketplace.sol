// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {IJobMarketplace} from "./interfaces/IJobMarketplace.sol";
import {PaymentEscrow} from "./PaymentEscrow.sol";

/// @title JobMarketplace
/// @notice Inference sessions paid per token. A client deposits ETH or an allow-listed ERC20
/// and names a session signer, an ephemeral key (a smart-contract wallet opens sessions too, and
/// names such a key: a voucher must stay valid once given, and an ERC-1271 wallet could revoke
/// its signatures after the work was delivered); the signer signs EIP-712 vouchers for the cumulative tokens delivered, so the host is never paid
/// for more than the client signed. The host settles with its best voucher: payment = tokens *
/// price / 1000, split into a treasury fee and the host's earnings (credited in the ledger, see
/// PaymentEscrow), and the rest of the deposit goes back to the client, in one transaction.
/// If the host vanishes, the client requests close and anyone finalizes after the dispute
/// window on the best checkpointed voucher. Every session settles exactly once, and
/// deposit == host earnings + treasury fee + refund, to the wei.
///
/// Storage is what makes a session cheap: three slots are written at `open` and one of them
/// updated at settlement. Who took part and where the session stands are stored (the
/// ReputationSystem and the Slasher read them); the terms the settlement only needs to check
/// (token, signer, deposit, price) are kept as one hash, and whoever settles, checkpoints or
/// finalizes passes them as calldata (`Terms`). They are in the `SessionOpened` event, whose
/// block `getSession` gives.
///
/// The fee and the dispute window that apply to a session are fixed when it opens. Opening a
/// session locks the host's stake in the NodeRegistry until the session can no longer settle.
contract JobMarketplace is IJobMarketplace, PaymentEscrow, EIP712 {
    uint256 public constant PRICE_PRECISION = 1000;
    /// @notice The longest dispute window; it is stored per session in 24 bits.
    uint64 public constant MAX_DISPUTE_WINDOW = 30 days;
    bytes32 public constant VOUCHER_TYPEHASH =
        keccak256("Voucher(uint256 sessionId,uint256 cumulativeTokens,bytes32 transcriptHash)");

    // `Status` (None, Open, CloseRequested, Settled) is declared in IJobMarketplace.

    /// @notice A session's terms that are stored only as a hash (`termsHash`).
    struct Terms {
        address token;
        address signer;
        uint256 deposit;
        uint256 price;
    }

    /// @notice A session, in three slots.
    struct Session {
        // Slot 0: who opened it, and its schedule (fixed at `open`, but for a close request).
        address client;
        /// @dev Brought forward to the request's time by `requestClose`: the session can be
        /// finalized from `expiresAt + disputeWindow`.
        uint40 expiresAt;
        uint16 feeBps;
        /// @dev The block of `SessionOpened`, which carries the full terms.
        uint32 openedBlock;
        // Slot 1: the host, and what settling changes (one slot, one write).
        address host;
        /// @dev The best checkpoint while live; the tokens paid for once Settled.
        uint64 tokens;
        Status status;
        uint24 disputeWindow;
        // Slot 2.
        bytes32 termsHash;
    }

    IModelRegistry public immutable modelRegistry;
    INodeRegistry public immutable nodeRegistry;
    /// @dev Read and written together by `open`, so in one slot.
    uint64 private _nextSessionId = 1;
    uint24 private _disputeWindow;

    mapping(uint256 sessionId => Session) private _sessions;
    mapping(uint256 sessionId => bytes32) private _checkpointTranscripts;

    /// @notice Emitted when a client opens a session: everything a host, a client or an
    /// auditor needs to know about it.
    event SessionOpened(
        uint256 indexed sessionId,
        address indexed client,
        address indexed host,
        bytes32 modelId,
        address token,
        uint256 deposit,
        uint256 price,
        address signer,
        uint64 expiresAt
    );
    /// @notice Emitted when the host records a voucher on-chain without closing.
    event Checkpointed(uint256 indexed sessionId, uint256 cumulativeTokens, bytes32 transcriptHash);
    /// @notice Emitted when the client asks to close; finalizable by anyone from `finalizableAt`.
    event CloseRequested(uint256 indexed sessionId, uint64 finalizableAt);
    /// @notice Emitted once per session when it settles.
    event SessionSettled(
        uint256 indexed sessionId,
        uint256 tokens,
        uint256 payment,
        uint256 hostAmount,
        uint256 fee,
        uint256 refund,
        bytes32 transcriptHash
    );
    /// @notice Emitted when the dispute window changes.
    event DisputeWindowSet(uint64 disputeWindow);

    error ModelNotActive(bytes32 modelId);
    error PriceBelowHostPrice(uint256 price, uint256 hostPrice);
    error PriceTooLow(uint256 price, uint256 deposit);
    error SessionNotOpen(uint256 sessionId);
    error WrongTerms(uint256 sessionId);
    error NotSessionHost(uint256 sessionId);
    error NotSessionClient(uint256 sessionId);
    error CloseAlreadyRequested(uint256 sessionId);
    error InvalidVoucherSignature(uint256 sessionId);
    error VoucherNotNewer(uint256 cumulativeTokens, uint256 checkpointTokens);
    error VoucherExceedsDeposit(uint256 cumulativeTokens, uint256 maxTokens);
    error DisputeWindowOpen(uint64 finalizableAt);
    error DisputeWindowTooLong(uint64 window);

    /// @param initialOwner the owner, who configures tokens, fee, treasury, durations and the
    /// dispute window, and pauses
    /// @param modelRegistry_ the registry of the models sessions may serve
    /// @param nodeRegistry_ the registry of hosts and their prices; sessions lock its stakes
    /// @param treasury_ the account credited with fees; nonzero
    /// @param feeBps_ the treasury's share of each payment, in basis points, at most MAX_FEE_BPS
    /// @param disputeWindow_ seconds a host has to settle after a close request or expiry, at
    /// most MAX_DISPUTE_WINDOW
    constructor(
        address initialOwner,
        IModelRegistry modelRegistry_,
        INodeRegistry nodeRegistry_,
        address treasury_,
        uint16 feeBps_,
        uint64 disputeWindow_
    ) PaymentEscrow(initialOwner, treasury_, feeBps_, 7 days) EIP712("Fabstir JobMarketplace", "1") {
        if (disputeWindow_ > MAX_DISPUTE_WINDOW) revert DisputeWindowTooLong(disputeWindow_);
        modelRegistry = modelRegistry_;
        nodeRegistry = nodeRegistry_;
        _disputeWindow = uint24(disputeWindow_);
    }

    // ----------------------------------------------------------------- client

    /// @notice Opens a session with `host` for `modelId`, depositing `deposit` of `token`
    /// (address(0) = ETH, sent as value; an ERC20 must be approved first).
    /// @param host the host the client chose (active, offering `modelId` for `token`)
    /// @param modelId the model (active in the ModelRegistry)
    /// @param token the payment token (address(0) = ETH)
    /// @param deposit the most the session can pay, within the token's bounds
    /// @param price what the client agrees to pay per PRICE_PRECISION tokens; at least the host's
    /// current price, which protects the client from a price change racing this transaction
    /// @param duration seconds until the session expires and can be finalized
    /// @param signer the key that signs this session's vouchers (ECDSA: an ephemeral key)
    /// @return sessionId the new session's id
    function open(
        address host,
        bytes32 modelId,
        address token,
        uint256 deposit,
        uint256 price,
        uint64 duration,
        address signer
    ) external payable nonReentrant returns (uint256 sessionId) {
        Config memory config = _admitDeposit(token, deposit, duration);
        if (signer == address(0)) revert ZeroAddress();
        if (price == 0 || _maxTokens(deposit, price) > type(uint64).max) revert PriceTooLow(price, deposit);
        if (!modelRegistry.isActive(modelId)) revert ModelNotActive(modelId);

        uint24 window = _disputeWindow;
        uint40 expiresAt = SafeCast.toUint40(block.timestamp + duration);
        sessionId = _nextSessionId++;
        _sessions[sessionId] = Session({
            client: msg.sender,
            expiresAt: expiresAt,
            feeBps: config.feeBps,
            openedBlock: SafeCast.toUint32(block.number),
            host: host,
            tokens: 0,
            status: Status.Open,
            disputeWindow: window,
            termsHash: _hash(Terms(token, signer, deposit, price))
        });
        emit SessionOpened(sessionId, msg.sender, host, modelId, token, deposit, price, signer, expiresAt);

        uint256 hostPrice = nodeRegistry.admit(host, modelId, token, uint64(expiresAt) + window);
        // A price comparison: the timestamp only went into the stake lock's end.
        // slither-disable-next-line timestamp
        if (price < hostPrice) revert PriceBelowHostPrice(price, hostPrice);
        if (token != address(0)) _pullExactly(IERC20(token), msg.sender, deposit);
    }

    /// @notice Asks to close session `sessionId`: its expiry moves forward to now, and the host
    /// has the dispute window to settle with its best voucher, after which anyone may finalize
    /// on the best checkpoint.
    /// @param sessionId a live session the caller opened
    function requestClose(uint256 sessionId) external {
        Session storage s = _sessions[sessionId];
        if (s.status != Status.Open && s.status != Status.CloseRequested) revert SessionNotOpen(sessionId);
        if (msg.sender != s.client) revert NotSessionClient(sessionId);
        if (s.status == Status.CloseRequested) revert CloseAlreadyRequested(sessionId);
        s.status = Status.CloseRequested;
        // slither-disable-next-line timestamp
        if (block.timestamp < s.expiresAt) s.expiresAt = uint40(block.timestamp);
        emit CloseRequested(sessionId, _finalizableAt(s));
    }

    // ----------------------------------------------------------------- host

    /// @notice Records the voucher for `cumulativeTokens` on-chain without closing, so that a
    /// finalize after a dispute pays at least this much. Host only; counts must increase.
    /// @param sessionId the session
    /// @param terms the session's terms (as in `SessionOpened`)
    /// @param cumulativeTokens the tokens the voucher pays for
    /// @param transcriptHash what the voucher commits to
    /// @param signature the session signer's EIP-712 signature of the voucher
    function checkpoint(
        uint256 sessionId,
        Terms calldata terms,
        uint256 cumulativeTokens,
        bytes32 transcriptHash,
        bytes calldata signature
    ) external {
        Session storage s = _live(sessionId, terms);
        if (msg.sender != s.host) revert NotSessionHost(sessionId);
        if (cumulativeTokens <= s.tokens) revert VoucherNotNewer(cumulativeTokens, s.tokens);
        _verifyVoucher(sessionId, terms, cumulativeTokens, transcriptHash, signature);
        s.tokens = uint64(cumulativeTokens); // <= maxTokens <= 2^64 - 1, checked at open
        _checkpointTranscripts[sessionId] = transcriptHash;
        emit Checkpointed(sessionId, cumulativeTokens, transcriptHash);
    }

    /// @notice Settles the session with the host's best voucher: credits the host and the
    /// treasury and refunds the rest of the deposit to the client. Host only; exactly once.
    /// @param sessionId the session
    /// @param terms the session's terms (as in `SessionOpened`)
    /// @param cumulativeTokens the tokens the voucher pays for (at least the checkpoint's)
    /// @param transcriptHash what the voucher commits to
    /// @param signature the session signer's EIP-712 signature of the voucher
    function settle(
        uint256 sessionId,
        Terms calldata terms,
        uint256 cumulativeTokens,
        bytes32 transcriptHash,
        bytes calldata signature
    ) external nonReentrant {
        Session storage s = _live(sessionId, terms);
        if (msg.sender != s.host) revert NotSessionHost(sessionId);
        if (cumulativeTokens < s.tokens) revert VoucherNotNewer(cumulativeTokens, s.tokens);
        _verifyVoucher(sessionId, terms, cumulativeTokens, transcriptHash, signature);
        _settle(sessionId, s, terms, cumulativeTokens, transcriptHash);
    }

    // ----------------------------------------------------------------- anyone

    /// @notice Settles on the best checkpointed voucher once the dispute window after a close
    /// request, or after expiry, has passed.
    /// @param sessionId the session
    /// @param terms the session's terms (as in `SessionOpened`)
    function finalize(uint256 sessionId, Terms calldata terms) external nonReentrant {
        Session storage s = _live(sessionId, terms);
        uint64 at = _finalizableAt(s);
        // slither-disable-next-line timestamp
        if (block.timestamp < at) revert DisputeWindowOpen(at);
        _settle(sessionId, s, terms, s.tokens, _checkpointTranscripts[sessionId]);
    }

    // ----------------------------------------------------------------- owner

    /// @notice Sets how long a host has to settle after a close request or expiry, for sessions
    /// opened from now on (at most MAX_DISPUTE_WINDOW).
    /// @param window the dispute window, in seconds
    function setDisputeWindow(uint64 window) external onlyOwner {
        if (window > MAX_DISPUTE_WINDOW) revert DisputeWindowTooLong(window);
        _disputeWindow = uint24(window);
        emit DisputeWindowSet(window);
    }

    // ----------------------------------------------------------------- views

    /// @notice The session `sessionId` (status None when unknown). Its token, signer, deposit
    /// and price are in the `SessionOpened` event of block `openedBlock`.
    /// @param sessionId the session
    /// @return the session
    function getSession(uint256 sessionId) external view returns (Session memory) {
        return _sessions[sessionId];
    }

    /// @notice The transcript hash of session `sessionId`'s best checkpoint.
    /// @param sessionId the session
    /// @return the transcript hash (zero before any checkpoint)
    function checkpointTranscript(uint256 sessionId) external view returns (bytes32) {
        return _checkpointTranscripts[sessionId];
    }

    /// @inheritdoc IJobMarketplace
    function parties(uint256 sessionId)
        external
        view
        returns (address client, address host, Status status, uint256 tokens)
    {
        Session storage s = _sessions[sessionId];
        return (s.client, s.host, s.status, s.tokens);
    }

    /// @notice The id the next session gets.
    /// @return the id
    function nextSessionId() external view returns (uint256) {
        return _nextSessionId;
    }

    /// @notice How long a host has to settle after a close request or expiry, for sessions
    /// opened from now on.
    /// @return the window, in seconds
    function disputeWindow() external view returns (uint64) {
        return _disputeWindow;
    }

    /// @notice The hash of `terms` that a session stores.
    /// @param terms a session's token, signer, deposit and price
    /// @return the hash
    function termsHash(Terms calldata terms) external pure returns (bytes32) {
        return _hash(terms);
    }

    /// @notice The EIP-712 digest the session signer signs for a voucher.
    /// @param sessionId the session
    /// @param cumulativeTokens the tokens the voucher pays for
    /// @param transcriptHash what the voucher commits to
    /// @return the digest
    function voucherDigest(uint256 sessionId, uint256 cumulativeTokens, bytes32 transcriptHash)
        public
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(keccak256(abi.encode(VOUCHER_TYPEHASH, sessionId, cumulativeTokens, transcriptHash)));
    }

    /// @notice The most tokens a voucher may cover: what `deposit` pays for at `price`.
    /// @param deposit a session's deposit
    /// @param price its price per PRICE_PRECISION tokens (no session has price zero)
    /// @return the largest t with t * price / PRICE_PRECISION <= deposit; zero at price zero
    function maxTokens(uint256 deposit, uint256 price) external pure returns (uint256) {
        return price == 0 ? 0 : _maxTokens(deposit, price);
    }

    /// @notice When session `sessionId` can be finalized by anyone.
    /// @param sessionId the session
    /// @return the unix time
    function finalizableAt(uint256 sessionId) external view returns (uint64) {
        return _finalizableAt(_sessions[sessionId]);
    }

    /// @inheritdoc IJobMarketplace
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    // ----------------------------------------------------------------- internals

    function _hash(Terms memory terms) private pure returns (bytes32) {
        return keccak256(abi.encode(terms.token, terms.signer, terms.deposit, terms.price));
    }

    /// @dev A live session whose stored hash `terms` match.
    function _live(uint256 sessionId, Terms calldata terms) private view returns (Session storage s) {
        s = _sessions[sessionId];
        if (s.status != Status.Open && s.status != Status.CloseRequested) revert SessionNotOpen(sessionId);
        if (s.termsHash != _hash(terms)) revert WrongTerms(sessionId);
    }

    /// @dev The largest t with t * price / PRICE_PRECISION <= deposit (integer division). In
    /// 256 bits: deposit <= MAX_DEPOSIT < 2^112, so nothing here can overflow.
    function _maxTokens(uint256 deposit, uint256 price) private pure returns (uint256) {
        return ((deposit + 1) * PRICE_PRECISION - 1) / price;
    }

    function _verifyVoucher(
        uint256 sessionId,
        Terms calldata terms,
        uint256 cumulativeTokens,
        bytes32 transcriptHash,
        bytes calldata signature
    ) private view {
        // The error's argument (a bad length or s value) adds nothing to "invalid signature".
        // slither-disable-next-line unused-return
        (address recovered, ECDSA.RecoverError err,) =
            ECDSA.tryRecover(voucherDigest(sessionId, cumulativeTokens, transcriptHash), signature);
        if (err != ECDSA.RecoverError.NoError || recovered != terms.signer) {
            revert InvalidVoucherSignature(sessionId);
        }
        uint256 limit = _maxTokens(terms.deposit, terms.price);
        if (cumulativeTokens > limit) revert VoucherExceedsDeposit(cumulativeTokens, limit);
    }

    /// @dev Uses the session's own dispute window, fixed at `open`.
    function _finalizableAt(Session storage s) private view returns (uint64) {
        return uint64(s.expiresAt) + s.disputeWindow;
    }

    function _settle(
        uint256 sessionId,
        Session storage s,
        Terms calldata terms,
        uint256 tokens,
        bytes32 transcriptHash
    ) private {
        uint256 payment = tokens * terms.price / PRICE_PRECISION;
        (uint256 hostAmount, uint256 fee) = _split(payment, s.feeBps);
        uint256 refund = terms.deposit - payment;
        s.status = Status.Settled;
        s.tokens = uint64(tokens);
        emit SessionSettled(sessionId, tokens, payment, hostAmount, fee, refund, transcriptHash);

        _payEarnings(terms.token, s.host, hostAmount, fee);
        // Settled first; every payout entry point is nonReentrant; the ledger grows only when a
        // push failed.
        // slither-disable-next-line reentrancy-eth
        if (refund != 0) _refund(sessionId, s.client, terms.token, refund);
    }
}
