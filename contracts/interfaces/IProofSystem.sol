// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title IProofSystem
/// @notice Checks the proofs a host submits for a proven job.
interface IProofSystem {
    /// @notice Why proofs were refused (or `Valid`).
    enum Verdict {
        Valid,
        WrongCount,
        WrongInstances,
        InputMismatch,
        Replayed,
        Invalid
    }

    /// @notice Checks `proofs` (one per input, with their public `instances`: inputs, then
    /// outputs) for job `jobId` of proven model `modelId`, whose inputs must hash to
    /// `inputCommitment`; on `Valid` the proofs are consumed (never accepted again) and
    /// `outputCommitment` commits to the outputs. The job board only.
    /// @param jobId the job, named in the `ProofAccepted` events
    /// @param modelId the job's proven model, whose circuit the proofs are checked against
    /// @param inputCommitment keccak256 of the inputs the job was posted with
    /// @param proofs one proof per input, at most MAX_PROOFS
    /// @param instances each proof's public instances: its inputs, then its outputs
    /// @return verdict `Valid`, or why the proofs were refused
    /// @return outputCommitment keccak256 of all proofs' outputs, in proof order (zero unless
    /// `Valid`)
    function verifyJob(
        uint256 jobId,
        bytes32 modelId,
        bytes32 inputCommitment,
        bytes[] calldata proofs,
        uint256[][] calldata instances
    ) external returns (Verdict verdict, bytes32 outputCommitment);
}
