// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {IHostEarnings} from "./interfaces/IHostEarnings.sol";
import {IJobMarketplace} from "./interfaces/IJobMarketplace.sol";
import {PaymentEscrow} from "./PaymentEscrow.sol";

/// @title JobMarketplace
/// @notice Inference sessions paid per token. A client deposits ETH or an allow-listed ERC20
/// and names an ephemeral session signer; the signer signs EIP-712 vouchers for the cumulative
/// tokens delivered, so the host is never paid for more than the client signed. The host
/// settles with its best voucher: payment = tokens * price / 1000, split into a treasury fee
/// and host earnings, and the rest of the deposit goes back to the client, in one transaction.
/// If the host vanishes, the client requests close and anyone finalizes after the dispute
/// window on the best checkpointed voucher. Every session settles exactly once, and
/// deposit == host earnings + treasury fee + refund, to the wei.
///
/// The fee and the dispute window that apply to a session are fixed when it opens. Opening a
/// session locks the host's stake in the NodeRegistry until the session can no longer settle.
///
/// A token can never block settlement (see PaymentEscrow): a fee-on-transfer switched on after
/// the deposit is paid out for what arrives, and a refused payout waits in `pendingPayouts`.
contract JobMarketplace is IJobMarketplace, PaymentEscrow, EIP712 {
    uint256 public constant PRICE_PRECISION = 1000;
    /// @notice The longest dispute window; it is stored per session in 32 bits.
    uint64 public constant MAX_DISPUTE_WINDOW = 30 days;
    bytes32 public constant VOUCHER_TYPEHASH =
        keccak256("Voucher(uint256 sessionId,uint256 cumulativeTokens,bytes32 transcriptHash)");

    // `Status` (None, Open, CloseRequested, Settled) is declared in IJobMarketplace.

    /// @dev Packed into 8 slots; `open` writes 6 of them. `feeBps` and `disputeWindow` are
    /// copied from the marketplace's settings at `open` and never change afterwards.
    struct Session {
        address client;
        uint64 openedAt;
        uint16 feeBps;
        Status status;
        address host;
        uint64 expiresAt;
        uint32 disputeWindow;
        address token;
        uint64 closeRequestedAt;
        address signer;
        bytes32 modelId;
        uint128 deposit;
        uint128 price;
        uint256 checkpointTokens;
        bytes32 checkpointTranscript;
    }

    IModelRegistry public immutable modelRegistry;
    INodeRegistry public immutable nodeRegistry;
    uint64 public disputeWindow;
    uint256 public nextSessionId = 1;

    mapping(uint256 sessionId => Session) private _sessions;

    /// @notice Emitted when a client opens a session.
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
    error HostNotActive(address host);
    error HostDoesNotServeModel(address host, bytes32 modelId);
    error PriceNotOffered(address host, bytes32 modelId, address token);
    error PriceBelowHostPrice(uint256 price, uint256 hostPrice);
    error SessionNotOpen(uint256 sessionId);
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
    /// @param hostEarnings_ the ledger hosts and the treasury are credited in
    /// @param treasury_ the account credited with fees; nonzero
    /// @param feeBps_ the treasury's share of each payment, in basis points, at most MAX_FEE_BPS
    /// @param disputeWindow_ seconds a host has to settle after a close request or expiry, at
    /// most MAX_DISPUTE_WINDOW
    constructor(
        address initialOwner,
        IModelRegistry modelRegistry_,
        INodeRegistry nodeRegistry_,
        IHostEarnings hostEarnings_,
        address treasury_,
        uint16 feeBps_,
        uint64 disputeWindow_
    ) PaymentEscrow(initialOwner, hostEarnings_, treasury_, feeBps_, 7 days) EIP712("Fabstir JobMarketplace", "1") {
        if (disputeWindow_ > MAX_DISPUTE_WINDOW) revert DisputeWindowTooLong(disputeWindow_);
        modelRegistry = modelRegistry_;
        nodeRegistry = nodeRegistry_;
        disputeWindow = disputeWindow_;
    }

    // ----------------------------------------------------------------- client

    /// @notice Opens a session with `host` for `modelId`, depositing `deposit` of `token`
    /// (address(0) = ETH, sent as value; an ERC20 must be approved first).
    /// @param host an active host serving `modelId`
    /// @param modelId an active model
    /// @param token an allow-listed payment token
    /// @param deposit the amount escrowed, within the token's deposit bounds; it caps the payment
    /// @param price what the client agrees to pay per PRICE_PRECISION tokens; at least the host's
    /// current price, which protects the client from a price change racing this transaction
    /// @param duration seconds until the session expires and can be finalized
    /// @param signer the ephemeral key that signs this session's vouchers
    /// @return sessionId the new session's id
    function open(
        address host,
        bytes32 modelId,
        address token,
        uint256 deposit,
        uint256 price,
        uint64 duration,
        address signer
    ) external payable whenNotPaused nonReentrant returns (uint256 sessionId) {
        _checkDeposit(token, deposit);
        _checkDuration(duration);
        if (signer == address(0)) revert ZeroAddress();
        _checkHostTerms(host, modelId, token, price);

        sessionId = nextSessionId++;
        uint64 expiresAt = uint64(block.timestamp) + duration;
        Session storage s = _sessions[sessionId];
        s.client = msg.sender;
        s.host = host;
        s.token = token;
        s.signer = signer;
        s.modelId = modelId;
        s.deposit = SafeCast.toUint128(deposit);
        s.price = SafeCast.toUint128(price);
        s.openedAt = uint64(block.timestamp);
        s.expiresAt = expiresAt;
        s.feeBps = feeBps;
        s.disputeWindow = uint32(disputeWindow); // <= MAX_DISPUTE_WINDOW
        s.status = Status.Open;
        emit SessionOpened(sessionId, msg.sender, host, modelId, token, deposit, price, signer, expiresAt);

        nodeRegistry.lockStake(host, expiresAt + uint64(s.disputeWindow));
        if (token != address(0)) _pullExactly(IERC20(token), deposit);
    }

    /// @notice Asks to close session `sessionId`; the host has the dispute window to settle with
    /// its best voucher, after which anyone may finalize on the best checkpoint.
    /// @param sessionId an open session the caller opened
    function requestClose(uint256 sessionId) external {
        Session storage s = _live(sessionId);
        if (msg.sender != s.client) revert NotSessionClient(sessionId);
        if (s.status != Status.Open) revert CloseAlreadyRequested(sessionId);
        s.status = Status.CloseRequested;
        s.closeRequestedAt = uint64(block.timestamp);
        emit CloseRequested(sessionId, _finalizableAt(s));
    }

    // ----------------------------------------------------------------- host

    /// @notice Records the voucher for `cumulativeTokens` on-chain without closing, so that a
    /// finalize after a dispute pays at least this much. Host only; counts must increase.
    /// @param sessionId a live session the caller serves
    /// @param cumulativeTokens the tokens delivered since the session opened, as vouched for
    /// @param transcriptHash the hash of the transcript so far, as vouched for
    /// @param signature the session signer's EIP-712 signature over the voucher
    function checkpoint(
        uint256 sessionId,
        uint256 cumulativeTokens,
        bytes32 transcriptHash,
        bytes calldata signature
    ) external {
        Session storage s = _live(sessionId);
        if (msg.sender != s.host) revert NotSessionHost(sessionId);
        if (cumulativeTokens <= s.checkpointTokens) {
            revert VoucherNotNewer(cumulativeTokens, s.checkpointTokens);
        }
        _verifyVoucher(s, sessionId, cumulativeTokens, transcriptHash, signature);
        s.checkpointTokens = cumulativeTokens;
        s.checkpointTranscript = transcriptHash;
        emit Checkpointed(sessionId, cumulativeTokens, transcriptHash);
    }

    /// @notice Settles the session with the host's best voucher: pays the host and the treasury
    /// and refunds the rest of the deposit to the client. Host only; exactly once.
    /// @param sessionId a live session the caller serves
    /// @param cumulativeTokens the tokens to be paid for, as vouched for; at least the
    /// checkpoint's
    /// @param transcriptHash the hash of the whole transcript, as vouched for
    /// @param signature the session signer's EIP-712 signature over the voucher
    function settle(
        uint256 sessionId,
        uint256 cumulativeTokens,
        bytes32 transcriptHash,
        bytes calldata signature
    ) external nonReentrant {
        Session storage s = _live(sessionId);
        if (msg.sender != s.host) revert NotSessionHost(sessionId);
        if (cumulativeTokens < s.checkpointTokens) {
            revert VoucherNotNewer(cumulativeTokens, s.checkpointTokens);
        }
        _verifyVoucher(s, sessionId, cumulativeTokens, transcriptHash, signature);
        _settle(sessionId, s, cumulativeTokens, transcriptHash);
    }

    // ----------------------------------------------------------------- anyone

    /// @notice Settles on the best checkpointed voucher once the dispute window after a close
    /// request, or after expiry, has passed.
    /// @param sessionId a live session
    function finalize(uint256 sessionId) external nonReentrant {
        Session storage s = _live(sessionId);
        uint64 at = _finalizableAt(s);
        // Dispute-window deadline; seconds of skew do not matter.
        // slither-disable-next-line timestamp
        if (block.timestamp < at) revert DisputeWindowOpen(at);
        _settle(sessionId, s, s.checkpointTokens, s.checkpointTranscript);
    }

    // ----------------------------------------------------------------- owner

    /// @notice Sets how long a host has to settle after a close request or expiry, for sessions
    /// opened from now on (at most MAX_DISPUTE_WINDOW).
    /// @param window the dispute window, in seconds
    function setDisputeWindow(uint64 window) external onlyOwner {
        if (window > MAX_DISPUTE_WINDOW) revert DisputeWindowTooLong(window);
        disputeWindow = window;
        emit DisputeWindowSet(window);
    }

    // ----------------------------------------------------------------- views

    /// @notice The session `sessionId` (status None when unknown).
    /// @param sessionId the session
    /// @return the session's terms and state
    function getSession(uint256 sessionId) external view returns (Session memory) {
        return _sessions[sessionId];
    }

    /// @inheritdoc IJobMarketplace
    function parties(uint256 sessionId)
        external
        view
        returns (address client, address host, Status status, uint256 tokens)
    {
        Session storage s = _sessions[sessionId];
        return (s.client, s.host, s.status, s.checkpointTokens);
    }

    /// @notice The EIP-712 digest the session signer signs for a voucher.
    /// @param sessionId the session
    /// @param cumulativeTokens the tokens delivered since the session opened
    /// @param transcriptHash the hash of the transcript so far
    /// @return the digest
    function voucherDigest(uint256 sessionId, uint256 cumulativeTokens, bytes32 transcriptHash)
        public
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(
            keccak256(abi.encode(VOUCHER_TYPEHASH, sessionId, cumulativeTokens, transcriptHash))
        );
    }

    /// @notice The most tokens a voucher may cover: what the deposit pays for at the session price.
    /// @param sessionId the session
    /// @return the token count (zero when unknown)
    function maxTokens(uint256 sessionId) external view returns (uint256) {
        Session storage s = _sessions[sessionId];
        return s.price == 0 ? 0 : _maxTokens(s);
    }

    /// @notice When session `sessionId` can be finalized by anyone.
    /// @param sessionId the session
    /// @return the earliest timestamp `finalize` accepts
    function finalizableAt(uint256 sessionId) external view returns (uint64) {
        return _finalizableAt(_sessions[sessionId]);
    }

    /// @inheritdoc IJobMarketplace
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    // ----------------------------------------------------------------- internals

    function _checkHostTerms(address host, bytes32 modelId, address token, uint256 price) private view {
        if (!modelRegistry.isActive(modelId)) revert ModelNotActive(modelId);
        if (!nodeRegistry.isActiveHost(host)) revert HostNotActive(host);
        if (!nodeRegistry.servesModel(host, modelId)) revert HostDoesNotServeModel(host, modelId);
        uint256 hostPrice = nodeRegistry.getPrice(host, modelId, token);
        if (hostPrice == 0) revert PriceNotOffered(host, modelId, token);
        if (price < hostPrice) revert PriceBelowHostPrice(price, hostPrice);
    }

    function _live(uint256 sessionId) private view returns (Session storage s) {
        s = _sessions[sessionId];
        if (s.status != Status.Open && s.status != Status.CloseRequested) {
            revert SessionNotOpen(sessionId);
        }
    }

    /// @dev The largest t with t * price / PRICE_PRECISION <= deposit (integer division). In
    /// 256 bits: deposit <= MAX_DEPOSIT < 2^128, so nothing here can overflow.
    function _maxTokens(Session storage s) private view returns (uint256) {
        return ((uint256(s.deposit) + 1) * PRICE_PRECISION - 1) / s.price;
    }

    function _verifyVoucher(
        Session storage s,
        uint256 sessionId,
        uint256 cumulativeTokens,
        bytes32 transcriptHash,
        bytes calldata signature
    ) private view {
        // errorArg only details the error; err and the signer are checked.
        // slither-disable-next-line unused-return
        (address recovered, ECDSA.RecoverError err,) =
            ECDSA.tryRecover(voucherDigest(sessionId, cumulativeTokens, transcriptHash), signature);
        if (err != ECDSA.RecoverError.NoError || recovered != s.signer) {
            revert InvalidVoucherSignature(sessionId);
        }
        uint256 limit = _maxTokens(s);
        if (cumulativeTokens > limit) revert VoucherExceedsDeposit(cumulativeTokens, limit);
    }

    /// @dev Uses the session's own dispute window, fixed at `open`.
    function _finalizableAt(Session storage s) private view returns (uint64 at) {
        uint64 window = s.disputeWindow;
        at = s.expiresAt + window;
        if (s.closeRequestedAt != 0 && s.closeRequestedAt + window < at) {
            at = s.closeRequestedAt + window;
        }
    }

    function _settle(uint256 sessionId, Session storage s, uint256 tokens, bytes32 transcriptHash)
        private
    {
        uint256 payment = tokens * s.price / PRICE_PRECISION;
        (uint256 hostAmount, uint256 fee) = _split(payment, s.feeBps);
        uint256 refund = s.deposit - payment;
        s.status = Status.Settled;
        s.checkpointTokens = tokens;
        s.checkpointTranscript = transcriptHash;
        emit SessionSettled(sessionId, tokens, payment, hostAmount, fee, refund, transcriptHash);

        _payEarnings(sessionId, s.token, s.host, hostAmount, fee);
        // Settled first; payout entry points nonReentrant; pendingPayouts grows only if the push failed.
        // slither-disable-next-line reentrancy-eth
        if (refund != 0) _refund(sessionId, s.client, s.token, refund);
    }
}
