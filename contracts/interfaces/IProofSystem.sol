// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

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
    function verifyJob(
        uint256 jobId,
        bytes32 modelId,
        bytes32 inputCommitment,
        bytes[] calldata proofs,
        uint256[][] calldata instances
    ) external returns (Verdict verdict, bytes32 outputCommitment);
}
