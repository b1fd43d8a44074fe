// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title IHalo2Verifier
/// @notice The verifier EZKL generates for a circuit (a Halo2 KZG verifier). The ModelRegistry
/// pins one per proven model; the ProofSystem calls it for every proof.
interface IHalo2Verifier {
    /// @notice Checks `proof` against the circuit's verifying key and its public `instances`.
    /// @dev EZKL's verifiers revert on a bad proof rather than return false.
    /// @param proof the proof, as EZKL serializes it
    /// @param instances the proof's public instances: the model's inputs, then its outputs
    /// @return whether the proof is valid
    function verifyProof(bytes calldata proof, uint256[] calldata instances) external returns (bool);
}
