// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {IHostEarnings} from "./interfaces/IHostEarnings.sol";

/// @title HostEarnings
/// @notice Pull-payment ledger: the escrows (the session marketplace and the job board) credit
/// hosts and the treasury as work settles, and each account withdraws per token when it likes.
/// Keeping payouts out of the settlement path means a host's wallet can never block a
/// settlement.
contract HostEarnings is IHostEarnings, Ownable, ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// @notice The contracts allowed to credit (the escrows the owner set).
    mapping(address account => bool) public creditors;

    mapping(address account => mapping(address token => uint256)) private _balances;
    /// @notice Sum of all balances per token; the contract always holds at least this much.
    mapping(address token => uint256) public totalOwed;

    /// @notice Emitted when `creditor` is allowed (or no longer allowed) to credit.
    event CreditorSet(address indexed creditor, bool allowed);
    /// @notice Emitted when `account` is credited.
    event Credited(address indexed account, address indexed token, uint256 amount);
    /// @notice Emitted when `account` withdraws.
    event Withdrawn(address indexed account, address indexed token, uint256 amount);

    error NotCreditor(address caller);
    error WrongValue(uint256 expected, uint256 received);
    error Underfunded(address token);
    error NothingToWithdraw(address token);
    error EthTransferFailed();
    error ZeroAddress();

    /// @param initialOwner the owner, who chooses the creditors
    constructor(address initialOwner) Ownable(initialOwner) {}

    /// @notice Allows or forbids `creditor` (an escrow contract) to credit accounts.
    /// @param creditor the escrow contract; nonzero
    /// @param allowed whether it may credit
    function setCreditor(address creditor, bool allowed) external onlyOwner {
        if (creditor == address(0)) revert ZeroAddress();
        creditors[creditor] = allowed;
        emit CreditorSet(creditor, allowed);
    }

    /// @inheritdoc IHostEarnings
    function credit(address account, address token, uint256 amount) external payable {
        if (!creditors[msg.sender]) revert NotCreditor(msg.sender);
        if (token == address(0)) {
            if (msg.value != amount) revert WrongValue(amount, msg.value);
        } else {
            if (msg.value != 0) revert WrongValue(0, msg.value);
            if (IERC20(token).balanceOf(address(this)) < totalOwed[token] + amount) {
                revert Underfunded(token);
            }
        }
        _balances[account][token] += amount;
        totalOwed[token] += amount;
        emit Credited(account, token, amount);
    }

    /// @notice Sends the caller everything it has earned in `token` (address(0) = ETH).
    /// @param token the token to withdraw
    function withdraw(address token) external nonReentrant {
        uint256 amount = _balances[msg.sender][token];
        if (amount == 0) revert NothingToWithdraw(token);
        _balances[msg.sender][token] = 0;
        totalOwed[token] -= amount;
        emit Withdrawn(msg.sender, token, amount);
        if (token == address(0)) {
            // ETH to contract wallets needs call; balance zeroed first, nonReentrant, result checked.
            // slither-disable-next-line low-level-calls
            (bool ok,) = msg.sender.call{value: amount}("");
            if (!ok) revert EthTransferFailed();
        } else {
            IERC20(token).safeTransfer(msg.sender, amount);
        }
    }

    /// @notice What `account` can withdraw in `token`.
    /// @param account the host or treasury
    /// @param token the token (address(0) = ETH)
    /// @return the amount withdrawable
    function balanceOf(address account, address token) external view returns (uint256) {
        return _balances[account][token];
    }
}
