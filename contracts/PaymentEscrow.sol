// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {IPaymentEscrow} from "./interfaces/IPaymentEscrow.sol";
import {ReentrancyLock} from "./ReentrancyLock.sol";

/// @title PaymentEscrow
/// @notice What every contract that holds a client's deposit until work is paid shares: the
/// allow-listed payment tokens and their deposit bounds, the treasury and its fee, pausing,
/// and the ledger everyone is paid out of. A deposit is pulled exactly (fee-on-transfer tokens
/// are refused). At settlement the host's share and the treasury's fee are credited in the
/// ledger (`owed`), with no transfer and no external call, and each account withdraws when it
/// likes (fees go to whoever is the treasury when it withdraws) (pull payments: a host's wallet can never block a settlement). The client's refund is
/// pushed at once; if the token or the wallet refuses it, it waits in the ledger too. An ERC20
/// that turns on a transfer fee after a deposit delivers less to whoever receives a transfer;
/// the escrow still debits exactly what the ledger says (the shortfall is emitted as
/// `TransferShortfall`), so it never owes more than it holds.
abstract contract PaymentEscrow is IPaymentEscrow, Ownable, ReentrancyLock {
    using SafeERC20 for IERC20;

    uint256 public constant BPS = 10_000;
    uint16 public constant MAX_FEE_BPS = 2500;
    /// @notice The largest `maxDeposit` a token may be given: with it, products of a deposit
    /// with prices and counts stay far below 2^256, and a deposit bound fits 112 bits.
    uint256 public constant MAX_DEPOSIT = type(uint112).max;
    /// @notice Gas forwarded with an ETH refund; a receiver that needs more gets a claimable refund.
    uint256 public constant REFUND_GAS = 50_000;

    /// @notice A payment token's configuration, in one slot.
    struct TokenConfig {
        bool allowed;
        uint112 minDeposit;
        uint112 maxDeposit;
    }

    /// @dev What opening and settling read, in one slot: the treasury, its fee (fixed per
    /// deposit when it is made), the allowed durations of new deposits, and the pause switch.
    struct Config {
        address treasury;
        uint16 feeBps;
        uint32 minDuration;
        uint32 maxDuration;
        bool paused;
    }

    Config private _config;
    mapping(address token => TokenConfig) private _tokenConfigs;
    mapping(address account => mapping(address token => uint256)) private _owed;
    /// @dev Fees owed to the treasury, per token: whoever is the treasury when it withdraws
    /// (kept apart from `_owed` so that a settlement need not read the treasury's address).
    mapping(address token => uint256) private _fees;

    /// @notice Emitted when `account` is credited a payout it could not be pushed (a refund the
    /// token or its wallet refused) for deposit `id`; it waits in `owed`.
    event PayoutDeferred(uint256 indexed id, address indexed account, address indexed token, uint256 amount);
    /// @notice Emitted when `account` withdraws what it is owed in `token`.
    event Withdrawn(address indexed account, address indexed token, uint256 amount);
    /// @notice Emitted when `token` delivered less to `recipient` than the `expected` amount
    /// sent (a fee-on-transfer switched on after the deposit); `received` is what arrived.
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
    /// @notice Emitted when `account` pauses new deposits.
    event Paused(address indexed account);
    /// @notice Emitted when `account` allows new deposits again.
    event Unpaused(address indexed account);

    error TokenNotAllowed(address token);
    error DepositOutOfRange(uint256 deposit, uint256 minDeposit, uint256 maxDeposit);
    error WrongValue(uint256 expected, uint256 received);
    error UnsupportedToken(address token);
    error ZeroAddress();
    error NothingToWithdraw(address token);
    error EthTransferFailed();
    error FeeTooHigh(uint16 feeBps);
    error InvalidDepositRange();
    error MaxDepositTooHigh(uint256 maxDeposit, uint256 cap);
    error InvalidDuration(uint64 duration);
    error EnforcedPause();
    error ExpectedPause();

    /// @param initialOwner the owner, who configures tokens, fee, treasury and durations, and pauses
    /// @param treasury_ the account credited with fees; nonzero
    /// @param feeBps_ the treasury's share of each payment, in basis points, at most MAX_FEE_BPS
    /// @param maxDuration_ the longest a deposit may be held (seconds; the shortest is 60)
    constructor(address initialOwner, address treasury_, uint16 feeBps_, uint32 maxDuration_)
        Ownable(initialOwner)
    {
        if (treasury_ == address(0)) revert ZeroAddress();
        if (feeBps_ > MAX_FEE_BPS) revert FeeTooHigh(feeBps_);
        _config = Config(treasury_, feeBps_, 60, maxDuration_, false);
    }

    /// @notice Sends the caller everything it is owed in `token`: host earnings, refunds that
    /// could not be pushed, and, to the treasury, the fees.
    /// @param token the token to withdraw (address(0) = ETH)
    function withdraw(address token) external nonReentrant {
        uint256 amount = _owed[msg.sender][token];
        if (amount != 0) _owed[msg.sender][token] = 0;
        if (msg.sender == _config.treasury && _fees[token] != 0) {
            amount += _fees[token];
            _fees[token] = 0;
        }
        if (amount == 0) revert NothingToWithdraw(token);
        emit Withdrawn(msg.sender, token, amount);
        if (token == address(0)) {
            // ETH to a contract wallet needs a call; the ledger is zeroed first, the call
            // nonReentrant and its result checked.
            // slither-disable-next-line low-level-calls
            (bool ok,) = msg.sender.call{value: amount}("");
            if (!ok) revert EthTransferFailed();
        } else {
            IERC20(token).safeTransfer(msg.sender, amount);
        }
    }

    /// @notice Allows or forbids `token` (address(0) = ETH) for new deposits, with deposit bounds.
    /// @param token the token (address(0) = ETH)
    /// @param allowed whether new deposits may use it
    /// @param minDeposit the smallest deposit
    /// @param maxDeposit the largest deposit, at most MAX_DEPOSIT
    function setTokenConfig(address token, bool allowed, uint256 minDeposit, uint256 maxDeposit)
        external
        onlyOwner
    {
        if (maxDeposit > MAX_DEPOSIT) revert MaxDepositTooHigh(maxDeposit, MAX_DEPOSIT);
        if (minDeposit > maxDeposit) revert InvalidDepositRange();
        _tokenConfigs[token] = TokenConfig(allowed, uint112(minDeposit), uint112(maxDeposit));
        emit TokenConfigured(token, allowed, minDeposit, maxDeposit);
    }

    /// @notice Sets the treasury fee for deposits made from now on.
    /// @param feeBps_ the fee in basis points, at most MAX_FEE_BPS
    function setFeeBps(uint16 feeBps_) external onlyOwner {
        if (feeBps_ > MAX_FEE_BPS) revert FeeTooHigh(feeBps_);
        _config.feeBps = feeBps_;
        emit FeeSet(feeBps_);
    }

    /// @notice Sets the account credited with treasury fees.
    /// @param treasury_ the new treasury; nonzero
    function setTreasury(address treasury_) external onlyOwner {
        if (treasury_ == address(0)) revert ZeroAddress();
        _config.treasury = treasury_;
        emit TreasurySet(treasury_);
    }

    /// @notice Sets the allowed durations (seconds until expiry or deadline) of new deposits.
    /// @param minDuration_ the shortest; nonzero
    /// @param maxDuration_ the longest; at least `minDuration_`
    function setDurationLimits(uint32 minDuration_, uint32 maxDuration_) external onlyOwner {
        if (minDuration_ == 0 || minDuration_ > maxDuration_) revert InvalidDuration(minDuration_);
        _config.minDuration = minDuration_;
        _config.maxDuration = maxDuration_;
        emit DurationLimitsSet(minDuration_, maxDuration_);
    }

    /// @notice Stops new deposits. Settlement, refunds and withdrawals keep working.
    function pause() external onlyOwner {
        if (_config.paused) revert EnforcedPause();
        _config.paused = true;
        emit Paused(msg.sender);
    }

    /// @notice Allows new deposits again.
    function unpause() external onlyOwner {
        if (!_config.paused) revert ExpectedPause();
        _config.paused = false;
        emit Unpaused(msg.sender);
    }

    /// @notice The configuration of payment token `token`.
    /// @param token the token (address(0) = ETH)
    /// @return the configuration
    function getTokenConfig(address token) external view returns (TokenConfig memory) {
        return _tokenConfigs[token];
    }

    /// @notice What `account` can withdraw in `token`.
    /// @param account the host, the treasury, or a client with a deferred refund
    /// @param token the token (address(0) = ETH)
    /// @return the amount owed
    function owed(address account, address token) external view returns (uint256) {
        return _owed[account][token] + (account == _config.treasury ? _fees[token] : 0);
    }

    /// @inheritdoc IPaymentEscrow
    function treasury() external view returns (address) {
        return _config.treasury;
    }

    /// @notice The treasury's share of new deposits' payments, in basis points.
    /// @return the fee
    function feeBps() external view returns (uint16) {
        return _config.feeBps;
    }

    /// @notice The shortest a new deposit may be held, in seconds.
    /// @return the duration
    function minDuration() external view returns (uint32) {
        return _config.minDuration;
    }

    /// @notice The longest a new deposit may be held, in seconds.
    /// @return the duration
    function maxDuration() external view returns (uint32) {
        return _config.maxDuration;
    }

    /// @notice Whether new deposits are paused.
    /// @return true while paused
    function paused() external view returns (bool) {
        return _config.paused;
    }

    // ----------------------------------------------------------------- internals

    /// @dev The settings a new deposit is made under, checked: not paused, `duration` within
    /// the limits, `deposit` within the token's bounds and matching `msg.value` (ETH is sent as
    /// value; an ERC20 is pulled later with `_pullExactly`, after the caller's own effects).
    function _admitDeposit(address token, uint256 deposit, uint64 duration)
        internal
        view
        returns (Config memory config)
    {
        config = _config;
        if (config.paused) revert EnforcedPause();
        if (duration < config.minDuration || duration > config.maxDuration) revert InvalidDuration(duration);
        TokenConfig memory tc = _tokenConfigs[token];
        if (!tc.allowed) revert TokenNotAllowed(token);
        if (deposit < tc.minDeposit || deposit > tc.maxDeposit) {
            revert DepositOutOfRange(deposit, tc.minDeposit, tc.maxDeposit);
        }
        uint256 expectedValue = token == address(0) ? deposit : 0;
        if (msg.value != expectedValue) revert WrongValue(expectedValue, msg.value);
    }

    /// @dev Pulls `amount` of `token` from `from` (the caller, or a sponsored post's client).
    /// Fee-on-transfer and rebasing tokens would break exact accounting: refuse them.
    function _pullExactly(IERC20 token, address from, uint256 amount) internal {
        uint256 before = token.balanceOf(address(this));
        token.safeTransferFrom(from, address(this), amount);
        if (token.balanceOf(address(this)) - before != amount) revert UnsupportedToken(address(token));
    }

    /// @dev The treasury's fee at `feeBps_` and the host's share of `payment` (the rounding to
    /// the host).
    function _split(uint256 payment, uint16 feeBps_) internal pure returns (uint256 hostAmount, uint256 fee) {
        fee = payment * feeBps_ / BPS;
        hostAmount = payment - fee;
    }

    /// @dev Credits the host's share and the treasury's fee in the ledger: two storage writes,
    /// no transfer, so no token or wallet can block a settlement.
    function _payEarnings(address token, address host, uint256 hostAmount, uint256 fee) internal {
        if (hostAmount != 0) _owed[host][token] += hostAmount;
        if (fee != 0) _fees[token] += fee;
    }

    /// @dev Pushes the refund; if the receiver (or the token) refuses it, it waits in the ledger
    /// so a hostile client can never block the host's settlement. A token that delivers less
    /// than sent emits the shortfall.
    function _refund(uint256 id, address client, address token, uint256 amount) internal {
        bool ok;
        uint256 received = amount;
        if (token == address(0)) {
            // A refund with bounded gas: a refusal (rolled back) is deferred, and every caller
            // is nonReentrant.
            // slither-disable-next-line low-level-calls,reentrancy-benign,reentrancy-events
            (ok,) = client.call{value: amount, gas: REFUND_GAS}("");
        } else {
            (ok, received) = _push(IERC20(token), client, amount);
        }
        if (!ok) {
            _owed[client][token] += amount;
            emit PayoutDeferred(id, client, token, amount);
        } else if (received < amount) {
            emit TransferShortfall(id, token, client, amount, received);
        }
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
