// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title INodeRegistry
/// @notice Staked hosts, the models they serve and their prices.
interface INodeRegistry {
    /// @notice True when `host` is registered, not unbonding, and stakes at least the minimum.
    function isActiveHost(address host) external view returns (bool);

    /// @notice True when active `host` serves `modelId`.
    function servesModel(address host, bytes32 modelId) external view returns (bool);

    /// @notice Price `host` asks for `modelId` paid in `token` (address(0) = ETH), per
    /// PRICE_PRECISION tokens: payment = tokens * price / 1000. Zero means "not accepted".
    function getPrice(address host, bytes32 modelId, address token) external view returns (uint256);

    /// @notice Keeps `host`'s stake from being withdrawn before `until`, the last moment a
    /// session or job it serves can settle. Stake lockers only; extends, never shortens.
    function lockStake(address host, uint64 until) external;

    /// @notice Takes `amount` of `host`'s stake (active or unbonding) and sends it to
    /// `recipient`. The slasher only.
    /// @param host the host to slash
    /// @param amount the stake to take, at most the host's stake
    /// @param recipient who receives it
    function slash(address host, uint256 amount, address recipient) external;
}
