// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title IReputationSystem
/// @notice What other contracts read from the ReputationSystem: the audits clients reported,
/// the evidence governance may slash a host on.
interface IReputationSystem {
    /// @notice One reported audit of a host-signed transcript, in one slot.
    struct AuditReport {
        /// @dev The session the transcript belongs to (its client reported it).
        uint128 sessionId;
        bool reported;
        bool passed;
    }

    /// @notice The audit reported for the transcript with hash `transcriptHash` (`reported`
    /// false when none was).
    /// @param transcriptHash keccak256 of the host-signed transcript
    /// @return the report
    function auditOf(bytes32 transcriptHash) external view returns (AuditReport memory);

    /// @notice The EIP-712 digest a host signs for a transcript it served in session
    /// `sessionId`, in the marketplace's domain.
    /// @param sessionId the session
    /// @param transcriptHash keccak256 of the transcript
    /// @return the digest
    function transcriptDigest(uint256 sessionId, bytes32 transcriptHash) external view returns (bytes32);
}
