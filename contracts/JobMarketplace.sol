// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {IHostEarnings} from "./interfaces/IHostEarnings.sol";

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
/// A token can never block settlement: an ERC20 that turns on a transfer fee after the deposit
/// (as USDT may) is paid out for what actually arrives, the shortfall emitted as
/// `TransferShortfall`; a payout the token refuses outright (a paused token, a blocked
/// address) waits in `pendingPayouts` for its owner to claim, as a refused refund does.
contract JobMarketplace is Ownable, Pausable, ReentrancyGuard, EIP712 {
    using SafeERC20 for IERC20;

    uint256 public constant PRICE_PRECISION = 1000;
    uint256 public constant BPS = 10_000;
    uint16 public constant MAX_FEE_BPS = 2500;
    /// @notice The largest `maxDeposit` a token may be given: with it, `(deposit + 1) * 1000`
    /// and `tokens * price` stay far below 2^256, and a deposit always fits its uint128 slot.
    uint256 public constant MAX_DEPOSIT = 2 ** 112;
    /// @notice The longest dispute window; it is stored per session in 32 bits.
    uint64 public constant MAX_DISPUTE_WINDOW = 30 days;
    /// @notice Gas forwarded with an ETH refund; a receiver that needs more gets a claimable refund.
    uint256 public constant REFUND_GAS = 50_000;
    bytes32 public constant VOUCHER_TYPEHASH =
        keccak256("Voucher(uint256 sessionId,uint256 cumulativeTokens,bytes32 transcriptHash)");

    enum Status {
        None,
        Open,
        CloseRequested,
        Settled
    }

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

    struct TokenConfig {
        bool allowed;
        uint256 minDeposit;
        uint256 maxDeposit;
    }

    IModelRegistry public immutable modelRegistry;
    INodeRegistry public immutable nodeRegistry;
    IHostEarnings public immutable hostEarnings;

    address public treasury;
    uint16 public feeBps;
    uint64 public disputeWindow;
    uint64 public minDuration;
    uint64 public maxDuration;
    uint256 public nextSessionId = 1;

    mapping(uint256 sessionId => Session) private _sessions;
    mapping(address token => TokenConfig) private _tokenConfigs;
    /// @notice Payouts whose push failed, claimable by their owner with `claimPayout`: refunds
    /// a client's wallet refused, and any payout an ERC20 refused to transfer.
    mapping(address account => mapping(address token => uint256)) public pendingPayouts;

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
    /// @notice Emitted when a payout (a refund, or host earnings and fee) could not be pushed
    /// and waits in `pendingPayouts` for `account`.
    event PayoutDeferred(
        uint256 indexed sessionId, address indexed account, address indexed token, uint256 amount
    );
    /// @notice Emitted when `account` claims a deferred payout.
    event PayoutClaimed(address indexed account, address indexed token, uint256 amount);
    /// @notice Emitted when `token` delivered less to `recipient` than the `expected` amount sent
    /// (a fee-on-transfer switched on after the deposit); `received` is what was accounted.
    event TransferShortfall(
        uint256 indexed sessionId,
        address indexed token,
        address indexed recipient,
        uint256 expected,
        uint256 received
    );
    /// @notice Emitted when a payment token's configuration changes (address(0) = ETH).
    event TokenConfigured(address indexed token, bool allowed, uint256 minDeposit, uint256 maxDeposit);
    /// @notice Emitted when the fee for new sessions changes.
    event FeeSet(uint16 feeBps);
    /// @notice Emitted when the treasury changes.
    event TreasurySet(address treasury);
    /// @notice Emitted when the dispute window changes.
    event DisputeWindowSet(uint64 disputeWindow);
    /// @notice Emitted when the allowed session durations change.
    event DurationLimitsSet(uint64 minDuration, uint64 maxDuration);

    error TokenNotAllowed(address token);
    error DepositOutOfRange(uint256 deposit, uint256 minDeposit, uint256 maxDeposit);
    error WrongValue(uint256 expected, uint256 received);
    error UnsupportedToken(address token);
    error InvalidDuration(uint64 duration);
    error ZeroAddress();
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
    error NothingToClaim(address token);
    error EthTransferFailed();
    error FeeTooHigh(uint16 feeBps);
    error InvalidDepositRange();
    error MaxDepositTooHigh(uint256 maxDeposit, uint256 cap);
    error DisputeWindowTooLong(uint64 window);

    constructor(
        address initialOwner,
        IModelRegistry modelRegistry_,
        INodeRegistry nodeRegistry_,
        IHostEarnings hostEarnings_,
        address treasury_,
        uint16 feeBps_,
        uint64 disputeWindow_
    ) Ownable(initialOwner) EIP712("Fabstir JobMarketplace", "1") {
        if (treasury_ == address(0)) revert ZeroAddress();
        if (feeBps_ > MAX_FEE_BPS) revert FeeTooHigh(feeBps_);
        if (disputeWindow_ > MAX_DISPUTE_WINDOW) revert DisputeWindowTooLong(disputeWindow_);
        modelRegistry = modelRegistry_;
        nodeRegistry = nodeRegistry_;
        hostEarnings = hostEarnings_;
        treasury = treasury_;
        feeBps = feeBps_;
        disputeWindow = disputeWindow_;
        minDuration = 60;
        maxDuration = 7 days;
    }

    // ----------------------------------------------------------------- client

    /// @notice Opens a session with `host` for `modelId`, depositing `deposit` of `token`
    /// (address(0) = ETH, sent as value; an ERC20 must be approved first).
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
        if (duration < minDuration || duration > maxDuration) revert InvalidDuration(duration);
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
    function requestClose(uint256 sessionId) external {
        Session storage s = _live(sessionId);
        if (msg.sender != s.client) revert NotSessionClient(sessionId);
        if (s.status != Status.Open) revert CloseAlreadyRequested(sessionId);
        s.status = Status.CloseRequested;
        s.closeRequestedAt = uint64(block.timestamp);
        emit CloseRequested(sessionId, _finalizableAt(s));
    }

    /// @notice Sends the caller what could not be pushed to it at settlement (`pendingPayouts`).
    /// @param token the token to claim (address(0) = ETH)
    function claimPayout(address token) external nonReentrant {
        uint256 amount = pendingPayouts[msg.sender][token];
        if (amount == 0) revert NothingToClaim(token);
        pendingPayouts[msg.sender][token] = 0;
        emit PayoutClaimed(msg.sender, token, amount);
        if (token == address(0)) {
            (bool ok,) = msg.sender.call{value: amount}("");
            if (!ok) revert EthTransferFailed();
        } else {
            IERC20(token).safeTransfer(msg.sender, amount);
        }
    }

    // ----------------------------------------------------------------- host

    /// @notice Records the voucher for `cumulativeTokens` on-chain without closing, so that a
    /// finalize after a dispute pays at least this much. Host only; counts must increase.
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
    function finalize(uint256 sessionId) external nonReentrant {
        Session storage s = _live(sessionId);
        uint64 at = _finalizableAt(s);
        if (block.timestamp < at) revert DisputeWindowOpen(at);
        _settle(sessionId, s, s.checkpointTokens, s.checkpointTranscript);
    }

    // ----------------------------------------------------------------- owner

    /// @notice Allows or forbids `token` (address(0) = ETH) for new sessions, with deposit bounds
    /// (`maxDeposit` at most MAX_DEPOSIT).
    function setTokenConfig(address token, bool allowed, uint256 minDeposit, uint256 maxDeposit)
        external
        onlyOwner
    {
        if (maxDeposit > MAX_DEPOSIT) revert MaxDepositTooHigh(maxDeposit, MAX_DEPOSIT);
        if (minDeposit > maxDeposit) revert InvalidDepositRange();
        _tokenConfigs[token] = TokenConfig(allowed, minDeposit, maxDeposit);
        emit TokenConfigured(token, allowed, minDeposit, maxDeposit);
    }

    /// @notice Sets the treasury fee for sessions opened from now on.
    function setFeeBps(uint16 feeBps_) external onlyOwner {
        if (feeBps_ > MAX_FEE_BPS) revert FeeTooHigh(feeBps_);
        feeBps = feeBps_;
        emit FeeSet(feeBps_);
    }

    /// @notice Sets the account credited with treasury fees.
    function setTreasury(address treasury_) external onlyOwner {
        if (treasury_ == address(0)) revert ZeroAddress();
        treasury = treasury_;
        emit TreasurySet(treasury_);
    }

    /// @notice Sets how long a host has to settle after a close request or expiry, for sessions
    /// opened from now on (at most MAX_DISPUTE_WINDOW).
    function setDisputeWindow(uint64 window) external onlyOwner {
        if (window > MAX_DISPUTE_WINDOW) revert DisputeWindowTooLong(window);
        disputeWindow = window;
        emit DisputeWindowSet(window);
    }

    /// @notice Sets the allowed session durations for new sessions.
    function setDurationLimits(uint64 minDuration_, uint64 maxDuration_) external onlyOwner {
        if (minDuration_ == 0 || minDuration_ > maxDuration_) revert InvalidDuration(minDuration_);
        minDuration = minDuration_;
        maxDuration = maxDuration_;
        emit DurationLimitsSet(minDuration_, maxDuration_);
    }

    /// @notice Stops new sessions. Settlement, finalization and claims keep working.
    function pause() external onlyOwner {
        _pause();
    }

    /// @notice Allows new sessions again.
    function unpause() external onlyOwner {
        _unpause();
    }

    // ----------------------------------------------------------------- views

    /// @notice The session `sessionId` (status None when unknown).
    function getSession(uint256 sessionId) external view returns (Session memory) {
        return _sessions[sessionId];
    }

    /// @notice The configuration of payment token `token`.
    function getTokenConfig(address token) external view returns (TokenConfig memory) {
        return _tokenConfigs[token];
    }

    /// @notice The EIP-712 digest the session signer signs for a voucher.
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
    function maxTokens(uint256 sessionId) external view returns (uint256) {
        Session storage s = _sessions[sessionId];
        return s.price == 0 ? 0 : _maxTokens(s);
    }

    /// @notice When session `sessionId` can be finalized by anyone.
    function finalizableAt(uint256 sessionId) external view returns (uint64) {
        return _finalizableAt(_sessions[sessionId]);
    }

    /// @notice The EIP-712 domain separator vouchers are bound to (chain and contract).
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    // ----------------------------------------------------------------- internals

    function _checkDeposit(address token, uint256 deposit) private view {
        TokenConfig storage config = _tokenConfigs[token];
        if (!config.allowed) revert TokenNotAllowed(token);
        if (deposit < config.minDeposit || deposit > config.maxDeposit) {
            revert DepositOutOfRange(deposit, config.minDeposit, config.maxDeposit);
        }
        uint256 expectedValue = token == address(0) ? deposit : 0;
        if (msg.value != expectedValue) revert WrongValue(expectedValue, msg.value);
    }

    function _checkHostTerms(address host, bytes32 modelId, address token, uint256 price) private view {
        if (!modelRegistry.isActive(modelId)) revert ModelNotActive(modelId);
        if (!nodeRegistry.isActiveHost(host)) revert HostNotActive(host);
        if (!nodeRegistry.servesModel(host, modelId)) revert HostDoesNotServeModel(host, modelId);
        uint256 hostPrice = nodeRegistry.getPrice(host, modelId, token);
        if (hostPrice == 0) revert PriceNotOffered(host, modelId, token);
        if (price < hostPrice) revert PriceBelowHostPrice(price, hostPrice);
    }

    /// @dev Fee-on-transfer and rebasing tokens would break exact accounting: refuse them.
    function _pullExactly(IERC20 token, uint256 amount) private {
        uint256 before = token.balanceOf(address(this));
        token.safeTransferFrom(msg.sender, address(this), amount);
        if (token.balanceOf(address(this)) - before != amount) revert UnsupportedToken(address(token));
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
        uint256 fee = payment * s.feeBps / BPS;
        uint256 hostAmount = payment - fee;
        uint256 refund = s.deposit - payment;
        s.status = Status.Settled;
        s.checkpointTokens = tokens;
        s.checkpointTranscript = transcriptHash;
        emit SessionSettled(sessionId, tokens, payment, hostAmount, fee, refund, transcriptHash);

        _payEarnings(sessionId, s.token, s.host, hostAmount, fee);
        if (refund != 0) _refund(sessionId, s.client, s.token, refund);
    }

    /// @dev Credits the host and the treasury in HostEarnings. For an ERC20 it first moves the
    /// tokens there and credits only what arrived (split in proportion, the rounding to the
    /// host), emitting the shortfall; if the token refuses the transfer, both amounts wait in
    /// `pendingPayouts`. The token can thus never block a settlement.
    function _payEarnings(
        uint256 sessionId,
        address token,
        address host,
        uint256 hostAmount,
        uint256 fee
    ) private {
        if (token == address(0)) {
            if (hostAmount != 0) hostEarnings.credit{value: hostAmount}(host, token, hostAmount);
            if (fee != 0) hostEarnings.credit{value: fee}(treasury, token, fee);
            return;
        }
        uint256 total = hostAmount + fee;
        if (total == 0) return;
        (bool ok, uint256 received) = _push(IERC20(token), address(hostEarnings), total);
        if (!ok) {
            _defer(sessionId, host, token, hostAmount);
            _defer(sessionId, treasury, token, fee);
            return;
        }
        if (received < total) {
            emit TransferShortfall(sessionId, token, address(hostEarnings), total, received);
            fee = fee * received / total;
            hostAmount = received - fee;
        }
        if (hostAmount != 0) hostEarnings.credit(host, token, hostAmount);
        if (fee != 0) hostEarnings.credit(treasury, token, fee);
    }

    /// @dev Pushes the refund; if the receiver (or the token) refuses it, it waits in
    /// `pendingPayouts` so a hostile client can never block the host's settlement. A token that
    /// delivers less than sent emits the shortfall.
    function _refund(uint256 sessionId, address client, address token, uint256 amount) private {
        bool ok;
        uint256 received = amount;
        if (token == address(0)) {
            (ok,) = client.call{value: amount, gas: REFUND_GAS}("");
        } else {
            (ok, received) = _push(IERC20(token), client, amount);
        }
        if (!ok) {
            _defer(sessionId, client, token, amount);
        } else if (received < amount) {
            emit TransferShortfall(sessionId, token, client, amount, received);
        }
    }

    function _defer(uint256 sessionId, address account, address token, uint256 amount) private {
        if (amount == 0) return;
        pendingPayouts[account][token] += amount;
        emit PayoutDeferred(sessionId, account, token, amount);
    }

    /// @dev Transfers `amount` of `token` to `to` without ever reverting; returns whether the
    /// transfer succeeded and how much `to`'s balance grew (at most `amount`).
    function _push(IERC20 token, address to, uint256 amount)
        private
        returns (bool ok, uint256 received)
    {
        uint256 before = _balanceOf(token, to);
        ok = token.trySafeTransfer(to, amount);
        if (!ok) return (false, 0);
        uint256 balance = _balanceOf(token, to);
        received = balance > before ? balance - before : 0;
        if (received > amount) received = amount;
    }

    function _balanceOf(IERC20 token, address account) private view returns (uint256) {
        try token.balanceOf(account) returns (uint256 balance) {
            return balance;
        } catch {
            return 0;
        }
    }
}
