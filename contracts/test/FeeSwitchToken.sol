// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title FeeSwitchToken (fault injection for tests)
/// @notice An ERC20 whose issuer can, at any time, switch on a transfer fee (as USDT's
/// `basisPointsRate` allows) or block an address (as USDT's and USDC's blacklists do). It proves
/// that a token allow-listed while it behaved can never freeze a session's settlement.
contract FeeSwitchToken is ERC20 {
    /// @notice Receives the fees.
    address public immutable feeCollector;
    /// @notice The fee on every transfer (not mints), in basis points of the amount sent.
    uint256 public feeBps;
    /// @notice Addresses that can neither send nor receive.
    mapping(address account => bool) public blocked;

    /// @notice Emitted when the fee changes.
    event FeeSet(uint256 feeBps);
    /// @notice Emitted when `account` is blocked or unblocked.
    event BlockedSet(address indexed account, bool blocked);

    /// @notice A transfer from or to a blocked address.
    error Blocked(address account);

    constructor() ERC20("Fee Switch USD", "FSUSD") {
        feeCollector = msg.sender;
    }

    /// @notice Mints `amount` to `to` (test faucet).
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Switches the transfer fee to `bps` basis points (0 switches it off).
    function setFee(uint256 bps) external {
        feeBps = bps;
        emit FeeSet(bps);
    }

    /// @notice Blocks or unblocks `account`.
    function setBlocked(address account, bool blocked_) external {
        blocked[account] = blocked_;
        emit BlockedSet(account, blocked_);
    }

    function _update(address from, address to, uint256 value) internal override {
        if (blocked[from]) revert Blocked(from);
        if (blocked[to]) revert Blocked(to);
        uint256 fee = from == address(0) || to == address(0) ? 0 : value * feeBps / 10_000;
        if (fee != 0) super._update(from, feeCollector, fee);
        super._update(from, to, value - fee);
    }
}
