// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title IPaymentEscrow
/// @notice What other contracts read from an escrow (the session marketplace, the job board).
interface IPaymentEscrow {
    /// @notice The account credited with treasury fees.
    /// @return the treasury
    function treasury() external view returns (address);
}
