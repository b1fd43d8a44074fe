// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title IHostEarnings
/// @notice Pull-payment ledger the marketplace credits and hosts (and the treasury) withdraw from.
interface IHostEarnings {
    /// @notice Credits `amount` of `token` (address(0) = ETH, sent as value) to `account`.
    /// @dev For ERC20 the caller transfers the tokens to this contract first.
    /// @param account the host or treasury credited
    /// @param token the token credited (address(0) = ETH)
    /// @param amount how much; for ETH, exactly the value sent
    function credit(address account, address token, uint256 amount) external payable;
}
