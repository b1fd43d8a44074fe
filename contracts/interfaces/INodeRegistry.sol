// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title INodeRegistry
/// @notice Staked hosts, the models they serve and their prices.
interface INodeRegistry {
    /// @notice True when `host` is registered, not unbonding, and stakes at least the minimum.
    /// @param host the host
    /// @return whether `host` may be chosen for new sessions and jobs
    function isActiveHost(address host) external view returns (bool);

    /// @notice True when active `host` serves `modelId`.
    /// @param host the host
    /// @param modelId the model
    /// @return whether `host` serves `modelId`
    function servesModel(address host, bytes32 modelId) external view returns (bool);

    /// @notice Price `host` asks for `modelId` paid in `token` (address(0) = ETH), per
    /// PRICE_PRECISION tokens: payment = tokens * price / 1000. Zero means "not accepted".
    /// @param host the host
    /// @param modelId the model
    /// @param token the payment token (address(0) = ETH)
    /// @return the price, or zero when `host` does not take `token` for `modelId`
    function getPrice(address host, bytes32 modelId, address token) external view returns (uint256);

    /// @notice Keeps `host`'s stake from being withdrawn before `until`, the last moment a
    /// session or job it serves can settle. Stake lockers only; extends, never shortens.
    /// @param host the host whose stake is locked
    /// @param until the last moment the session or job can still settle
    function lockStake(address host, uint64 until) external;

    /// @notice Admits new work for `host`: checks that it is active and offers `modelId` for
    /// `token`, locks its stake until `until`, and returns its price. Stake lockers only.
    /// @param host the host the client chose
    /// @param modelId the model the work is for
    /// @param token the payment token (address(0) = ETH)
    /// @param until the last moment the work can still settle
    /// @return price the host's current price, per PRICE_PRECISION tokens
    function admit(address host, bytes32 modelId, address token, uint64 until) external returns (uint256 price);

    /// @notice Takes `amount` of `host`'s stake (active or unbonding) and sends it to
    /// `recipient`. The slasher only.
    /// @param host the host to slash
    /// @param amount the stake to take, at most the host's stake
    /// @param recipient who receives it
    function slash(address host, uint256 amount, address recipient) external;
}
