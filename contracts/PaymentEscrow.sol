// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {IHostEarnings} from "./interfaces/IHostEarnings.sol";
import {IPaymentEscrow} from "./interfaces/IPaymentEscrow.sol";

/// @title PaymentEscrow
/// @notice What every contract that holds a client's deposit until work is paid shares: the
/// allow-listed payment tokens and their deposit bounds, the treasury and its fee, and the
/// payout paths. A deposit is pulled exactly (fee-on-transfer tokens are refused); at
/// settlement the host and the treasury are credited in HostEarnings and the client refunded,
/// and a token can never block that: an ERC20 that turns on a transfer fee after the deposit is
/// paid out for what actually arrives (the shortfall emitted as `TransferShortfall`), and a
/// payout the token or the receiver refuses waits in `pendingPayouts` for its owner to claim.
abstract contract PaymentEscrow is IPaymentEscrow, Ownable, Pausable, ReentrancyGuard {
    using SafeERC20 for IERC20;

    uint256 public constant BPS = 10_000;
    uint16 public constant MAX_FEE_BPS = 2500;
    /// @notice The largest `maxDeposit` a token may be given: with it, products of a deposit
    /// with prices and counts stay far below 2^256, and a deposit always fits a uint128 slot.
    uint256 public constant MAX_DEPOSIT = 2 ** 112;
    /// @notice Gas forwarded with an ETH refund; a receiver that needs more gets a claimable refund.
    uint256 public constant REFUND_GAS = 50_000;

    struct TokenConfig {
        bool allowed;
        uint256 minDeposit;
        uint256 maxDeposit;
    }

    IHostEarnings public immutable hostEarnings;
    /// @notice The treasury's share of each payment, fixed per deposit when it is made.
    uint16 public feeBps;
    /// @notice The shortest and longest a new session or job may run (in one slot with the fee:
    /// opening reads all three).
    uint64 public minDuration;
    uint64 public maxDuration;
    address public treasury;

    mapping(address token => TokenConfig) private _tokenConfigs;
    /// @notice Payouts whose push failed, claimable by their owner with `claimPayout`: refunds
    /// a client's wallet refused, and any payout an ERC20 refused to transfer.
    mapping(address account => mapping(address token => uint256)) public pendingPayouts;

    /// @notice Emitted when a payout (a refund, or host earnings and fee) of deposit `id` could
    /// not be pushed and waits in `pendingPayouts` for `account`.
    event PayoutDeferred(uint256 indexed id, address indexed account, address indexed token, uint256 amount);
    /// @notice Emitted when `account` claims a deferred payout.
    event PayoutClaimed(address indexed account, address indexed token, uint256 amount);
    /// @notice Emitted when `token` delivered less to `recipient` than the `expected` amount sent
    /// (a fee-on-transfer switched on after the deposit); `received` is what was accounted.
    event TransferShortfall(
        uint256 indexed id, address indexed token, address indexed recipient, uint256 expected, uint256 received
    );
    /// @notice Emitted when a payment token's configuration changes (address(0) = ETH).
    event TokenConfigured(address indexed token, bool allowed, uint256 minDeposit, uint256 maxDeposit);
    /// @notice Emitted when the fee for new deposits changes.
    event FeeSet(uint16 feeBps);
    /// @notice Emitted when the treasury changes.
    event TreasurySet(address indexed treasury);
    /// @notice Emitted when the allowed durations of new deposits change.
    event DurationLimitsSet(uint64 minDuration, uint64 maxDuration);

    error TokenNotAllowed(address token);
    error DepositOutOfRange(uint256 deposit, uint256 minDeposit, uint256 maxDeposit);
    error WrongValue(uint256 expected, uint256 received);
    error UnsupportedToken(address token);
    error ZeroAddress();
    error NothingToClaim(address token);
    error EthTransferFailed();
    error FeeTooHigh(uint16 feeBps);
    error InvalidDepositRange();
    error MaxDepositTooHigh(uint256 maxDeposit, uint256 cap);
    error InvalidDuration(uint64 duration);

    /// @param initialOwner the owner, who configures tokens, fee, treasury and durations, and
    /// pauses
    /// @param hostEarnings_ the ledger hosts and the treasury are credited in
    /// @param treasury_ the account credited with fees; nonzero
    /// @param feeBps_ the treasury's share of each payment, in basis points, at most MAX_FEE_BPS
    /// @param maxDuration_ the longest a session or job may run, in seconds
    constructor(
        address initialOwner,
        IHostEarnings hostEarnings_,
        address treasury_,
        uint16 feeBps_,
        uint64 maxDuration_
    ) Ownable(initialOwner) {
        if (treasury_ == address(0)) revert ZeroAddress();
        if (feeBps_ > MAX_FEE_BPS) revert FeeTooHigh(feeBps_);
        hostEarnings = hostEarnings_;
        treasury = treasury_;
        feeBps = feeBps_;
        minDuration = 60;
        maxDuration = maxDuration_;
    }

    /// @notice Sends the caller what could not be pushed to it at settlement (`pendingPayouts`).
    /// @param token the token to claim (address(0) = ETH)
    function claimPayout(address token) external nonReentrant {
        uint256 amount = pendingPayouts[msg.sender][token];
        if (amount == 0) revert NothingToClaim(token);
        pendingPayouts[msg.sender][token] = 0;
        emit PayoutClaimed(msg.sender, token, amount);
        if (token == address(0)) {
            // ETH to contract wallets needs call; state zeroed first, nonReentrant, result checked.
            // slither-disable-next-line low-level-calls
            (bool ok,) = msg.sender.call{value: amount}("");
            if (!ok) revert EthTransferFailed();
        } else {
            IERC20(token).safeTransfer(msg.sender, amount);
        }
    }

    /// @notice Allows or forbids `token` (address(0) = ETH) for new deposits, with deposit bounds
    /// (`maxDeposit` at most MAX_DEPOSIT).
    /// @param token the token (address(0) = ETH)
    /// @param allowed whether new deposits may be made in it
    /// @param minDeposit the smallest deposit accepted
    /// @param maxDeposit the largest deposit accepted, at most MAX_DEPOSIT
    function setTokenConfig(address token, bool allowed, uint256 minDeposit, uint256 maxDeposit)
        external
        onlyOwner
    {
        if (maxDeposit > MAX_DEPOSIT) revert MaxDepositTooHigh(maxDeposit, MAX_DEPOSIT);
        if (minDeposit > maxDeposit) revert InvalidDepositRange();
        _tokenConfigs[token] = TokenConfig(allowed, minDeposit, maxDeposit);
        emit TokenConfigured(token, allowed, minDeposit, maxDeposit);
    }

    /// @notice Sets the treasury fee for deposits made from now on.
    /// @param feeBps_ the fee in basis points, at most MAX_FEE_BPS
    function setFeeBps(uint16 feeBps_) external onlyOwner {
        if (feeBps_ > MAX_FEE_BPS) revert FeeTooHigh(feeBps_);
        feeBps = feeBps_;
        emit FeeSet(feeBps_);
    }

    /// @notice Sets the account credited with treasury fees.
    /// @param treasury_ the new treasury; nonzero
    function setTreasury(address treasury_) external onlyOwner {
        if (treasury_ == address(0)) revert ZeroAddress();
        treasury = treasury_;
        emit TreasurySet(treasury_);
    }

    /// @notice Sets the allowed durations (seconds until expiry or deadline) of new deposits.
    /// @param minDuration_ the shortest; nonzero
    /// @param maxDuration_ the longest; at least `minDuration_`
    function setDurationLimits(uint64 minDuration_, uint64 maxDuration_) external onlyOwner {
        if (minDuration_ == 0 || minDuration_ > maxDuration_) revert InvalidDuration(minDuration_);
        minDuration = minDuration_;
        maxDuration = maxDuration_;
        emit DurationLimitsSet(minDuration_, maxDuration_);
    }

    /// @notice Stops new deposits. Settlement, refunds and claims keep working.
    function pause() external onlyOwner {
        _pause();
    }

    /// @notice Allows new deposits again.
    function unpause() external onlyOwner {
        _unpause();
    }

    /// @notice The configuration of payment token `token`.
    /// @param token the token (address(0) = ETH)
    /// @return whether it is allowed, and its deposit bounds
    function getTokenConfig(address token) external view returns (TokenConfig memory) {
        return _tokenConfigs[token];
    }

    // ----------------------------------------------------------------- internals

    /// @dev Checks `deposit` against the token's bounds and `msg.value` (ETH is sent as value; an
    /// ERC20 is pulled later with `_pullExactly`, after the caller's own effects).
    function _checkDeposit(address token, uint256 deposit) internal {
        TokenConfig storage config = _tokenConfigs[token];
        if (!config.allowed) revert TokenNotAllowed(token);
        if (deposit < config.minDeposit || deposit > config.maxDeposit) {
            revert DepositOutOfRange(deposit, config.minDeposit, config.maxDeposit);
        }
        uint256 expectedValue = token == address(0) ? deposit : 0;
        if (msg.value != expectedValue) revert WrongValue(expectedValue, msg.value);
    }

    function _checkDuration(uint64 duration) internal view {
        if (duration < minDuration || duration > maxDuration) revert InvalidDuration(duration);
    }

    /// @dev Fee-on-transfer and rebasing tokens would break exact accounting: refuse them.
    function _pullExactly(IERC20 token, uint256 amount) internal {
        uint256 before = token.balanceOf(address(this));
        token.safeTransferFrom(msg.sender, address(this), amount);
        if (token.balanceOf(address(this)) - before != amount) revert UnsupportedToken(address(token));
    }

    /// @dev The treasury's fee at `feeBps_` and the host's share of `payment` (the rounding to
    /// the host).
    function _split(uint256 payment, uint16 feeBps_) internal pure returns (uint256 hostAmount, uint256 fee) {
        fee = payment * feeBps_ / BPS;
        hostAmount = payment - fee;
    }

    /// @dev Credits the host and the treasury in HostEarnings. For an ERC20 it first moves the
    /// tokens there and credits only what arrived (split in proportion, the rounding to the
    /// host), emitting the shortfall; if the token refuses the transfer, both amounts wait in
    /// `pendingPayouts`. The token can thus never block a settlement.
    function _payEarnings(uint256 id, address token, address host, uint256 hostAmount, uint256 fee) internal {
        if (token == address(0)) {
            if (hostAmount != 0) hostEarnings.credit{value: hostAmount}(host, token, hostAmount);
            if (fee != 0) hostEarnings.credit{value: fee}(treasury, token, fee);
            return;
        }
        uint256 total = hostAmount + fee;
        if (total == 0) return;
        (bool ok, uint256 received) = _push(IERC20(token), address(hostEarnings), total);
        if (!ok) {
            _defer(id, host, token, hostAmount);
            _defer(id, treasury, token, fee);
            return;
        }
        if (received < total) {
            emit TransferShortfall(id, token, address(hostEarnings), total, received);
            fee = fee * received / total;
            hostAmount = received - fee;
        }
        if (hostAmount != 0) hostEarnings.credit(host, token, hostAmount);
        if (fee != 0) hostEarnings.credit(treasury, token, fee);
    }

    /// @dev Pushes the refund; if the receiver (or the token) refuses it, it waits in
    /// `pendingPayouts` so a hostile client can never block the host's settlement. A token that
    /// delivers less than sent emits the shortfall.
    function _refund(uint256 id, address client, address token, uint256 amount) internal {
        bool ok;
        uint256 received = amount;
        if (token == address(0)) {
            // REFUND_GAS push; a refusal (rolled back) is deferred; callers are nonReentrant.
            // slither-disable-next-line low-level-calls,reentrancy-benign,reentrancy-events
            (ok,) = client.call{value: amount, gas: REFUND_GAS}("");
        } else {
            (ok, received) = _push(IERC20(token), client, amount);
        }
        if (!ok) {
            _defer(id, client, token, amount);
        } else if (received < amount) {
            emit TransferShortfall(id, token, client, amount, received);
        }
    }

    function _defer(uint256 id, address account, address token, uint256 amount) private {
        if (amount == 0) return;
        pendingPayouts[account][token] += amount;
        emit PayoutDeferred(id, account, token, amount);
    }

    /// @dev Transfers `amount` of `token` to `to` without ever reverting; returns whether the
    /// transfer succeeded and how much `to`'s balance grew (at most `amount`).
    function _push(IERC20 token, address to, uint256 amount) private returns (bool ok, uint256 received) {
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
