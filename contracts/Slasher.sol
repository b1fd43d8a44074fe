// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {IJobMarketplace} from "./interfaces/IJobMarketplace.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {IPaymentEscrow} from "./interfaces/IPaymentEscrow.sol";
import {IReputationSystem} from "./interfaces/IReputationSystem.sol";
import {TranscriptRecords} from "./TranscriptRecords.sol";

/// @title Slasher
/// @notice Slashes a host's stake, on public evidence only, when governance (its owner, the
/// timelock) decides to. Two kinds of evidence count, both checked here on-chain:
///
/// - a failed audit: a session's client reported, in the ReputationSystem, that an answer the
///   host signed failed its audit (the transcript is in that report's calldata, for anyone to
///   re-run before voting);
/// - a double-signed transcript: two different records the host signed for the same answer of
///   the same session (same session id and `start`): it told two parties two different things
///   about one answer.
///
/// The slashed stake goes to the treasury or to the session's client (the party harmed), as
/// the proposal says, never to whoever brought the evidence, so slashing pays no bounty that
/// could be farmed. Each piece of evidence slashes at most once. This is why stakes unbond
/// slowly (NodeRegistry): evidence has time to come to light and a vote to pass while the
/// stake is still there.
contract Slasher is Ownable {
    /// @notice Who receives a slashed stake.
    enum Recipient {
        Treasury,
        Client
    }

    /// @notice A transcript record and the host's signature over its keccak256 (the SDK's
    /// `SignedTranscript`).
    struct SignedRecord {
        bytes record;
        bytes signature;
    }

    INodeRegistry public immutable nodeRegistry;
    IJobMarketplace public immutable marketplace;
    IReputationSystem public immutable reputation;

    /// @notice Evidence already slashed on (see `auditEvidence`, `doubleSignEvidence`).
    mapping(bytes32 evidenceId => bool) public evidenceUsed;

    /// @notice Emitted when `host` is slashed `amount` on evidence `evidenceId`, to `recipient`.
    event Slashed(address indexed host, bytes32 indexed evidenceId, uint256 amount, address recipient);

    error NotAFailedAudit(bytes32 transcriptHash);
    error NotConflicting();
    error NotSignedByHost(uint256 sessionId);
    error EvidenceAlreadyUsed(bytes32 evidenceId);
    error ZeroAddress();

    /// @param initialOwner the account that decides slashes (the timelock)
    /// @param nodeRegistry_ the registry holding the stakes (it must name this contract slasher)
    /// @param marketplace_ the marketplace whose sessions the evidence comes from
    /// @param reputation_ the ReputationSystem holding clients' audit reports
    constructor(
        address initialOwner,
        INodeRegistry nodeRegistry_,
        IJobMarketplace marketplace_,
        IReputationSystem reputation_
    ) Ownable(initialOwner) {
        if (
            address(nodeRegistry_) == address(0) || address(marketplace_) == address(0)
                || address(reputation_) == address(0)
        ) revert ZeroAddress();
        nodeRegistry = nodeRegistry_;
        marketplace = marketplace_;
        reputation = reputation_;
    }

    /// @notice Slashes the host of the answer whose failed audit a client reported. Owner only.
    /// @param transcriptHash keccak256 of the transcript reported as failed (ReputationSystem)
    /// @param amount the stake to take
    /// @param to the treasury, or the session's client (who reported the failure)
    function slashFailedAudit(bytes32 transcriptHash, uint256 amount, Recipient to) external onlyOwner {
        IReputationSystem.AuditReport memory report = reputation.auditOf(transcriptHash);
        if (!report.reported || report.passed) revert NotAFailedAudit(transcriptHash);
        // The session's status and tokens don't matter: the evidence counts at any status.
        // slither-disable-next-line unused-return
        (address client, address host,,) = marketplace.parties(report.sessionId);
        _slash(host, auditEvidence(transcriptHash), amount, _recipient(to, client));
    }

    /// @notice Slashes a host that signed two different records for the same answer of a
    /// session. Owner only.
    /// @param a one transcript record the host signed (CBOR, as the SDK encodes it), with the
    /// host's transcript signature over its keccak256
    /// @param b another signed record for the same session and `start`
    /// @param amount the stake to take
    /// @param to the treasury, or the session's client
    function slashDoubleSigned(SignedRecord calldata a, SignedRecord calldata b, uint256 amount, Recipient to)
        external
        onlyOwner
    {
        (uint256 sessionId, uint256 start) = _sameAnswer(a.record, b.record);
        // The session's status and tokens don't matter: the evidence counts at any status.
        // slither-disable-next-line unused-return
        (address client, address host,,) = marketplace.parties(sessionId);
        _checkHostSigned(host, sessionId, a);
        _checkHostSigned(host, sessionId, b);
        _slash(host, doubleSignEvidence(sessionId, start), amount, _recipient(to, client));
    }

    /// @notice The id a failed audit is used under (once).
    /// @param transcriptHash the audited transcript's hash
    /// @return the evidence id
    function auditEvidence(bytes32 transcriptHash) public pure returns (bytes32) {
        return keccak256(abi.encode("failed audit", transcriptHash));
    }

    /// @notice The id double-signing of an answer is used under (once, whichever two records).
    /// @param sessionId the session
    /// @param start the answer's `start` in the session
    /// @return the evidence id
    function doubleSignEvidence(uint256 sessionId, uint256 start) public pure returns (bytes32) {
        return keccak256(abi.encode("double-signed", sessionId, start));
    }

    /// @dev The answer two different records both name; reverts unless they conflict.
    function _sameAnswer(bytes calldata recordA, bytes calldata recordB)
        private
        pure
        returns (uint256 sessionId, uint256 start)
    {
        (sessionId, start) = TranscriptRecords.answerOf(recordA);
        (uint256 sessionB, uint256 startB) = TranscriptRecords.answerOf(recordB);
        if (sessionB != sessionId || startB != start || keccak256(recordA) == keccak256(recordB)) {
            revert NotConflicting();
        }
    }

    function _checkHostSigned(address host, uint256 sessionId, SignedRecord calldata signed) private view {
        bytes32 digest = reputation.transcriptDigest(sessionId, keccak256(signed.record));
        // The error's argument (a bad length or s value) adds nothing to "not signed by the host".
        // slither-disable-next-line unused-return
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, signed.signature);
        if (err != ECDSA.RecoverError.NoError || signer != host) revert NotSignedByHost(sessionId);
    }

    function _recipient(Recipient to, address client) private view returns (address) {
        return to == Recipient.Client ? client : IPaymentEscrow(address(marketplace)).treasury();
    }

    function _slash(address host, bytes32 evidenceId, uint256 amount, address recipient) private {
        if (evidenceUsed[evidenceId]) revert EvidenceAlreadyUsed(evidenceId);
        evidenceUsed[evidenceId] = true;
        emit Slashed(host, evidenceId, amount, recipient);
        nodeRegistry.slash(host, amount, recipient);
    }
}
