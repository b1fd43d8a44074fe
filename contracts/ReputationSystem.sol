// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IJobMarketplace} from "./interfaces/IJobMarketplace.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {IReputationSystem} from "./interfaces/IReputationSystem.sol";

/// @title ReputationSystem
/// @notice Public signals about each host, for clients to rank hosts by. None of them is a
/// verdict on its own; each says what it proves and how it can be gamed:
///
/// - Sessions served (`sessions`, `tokensServed`): recorded by anyone from the marketplace's
///   settled sessions, once each, only when the session paid for at least one token. They prove
///   that somebody paid the host through the marketplace. A host can deal sessions to itself
///   from another account, but every one costs it the treasury fee on the payment plus the gas
///   of opening and settling, so volume is bought, not free.
/// - Ratings (`ratings`, `ratingSum`, 1 to 5): one per session, by the session's client only,
///   and only once the session settled having paid for tokens, so a rating is bound to paid
///   service. Self-dealt sessions can rate themselves, at the same cost as above. The client
///   rates itself (`rate`) or signs the rating for anyone to submit (`rateBySig`: EIP-712 in
///   this contract's own domain, checked as an EOA's ECDSA or a contract wallet's ERC-1271).
/// - Audits (`auditsPassed`, `auditsFailed`): a session's client re-checks an answer (for
///   example by re-running it on a pinned model) and reports the result with the transcript the
///   host signed with its registered key. Only real host-signed transcripts of the reporter's
///   own sessions count, each at most once ever, so nobody can report on others' sessions or
///   invent transcripts. The transcript stays in the transaction's calldata as
///   public evidence: a false failure report is visible to anyone who re-runs it off-chain.
///   A host dealing a session to itself can report passes on its own transcripts for gas
///   alone (audits need no payment), which is why every report names its reporter: weigh
///   reports by who made them, and failures from independent clients above passes. A failed
///   audit is kept (`auditOf`) as evidence governance may slash the host's stake on (Slasher).
/// - Uptime (`uptime`): an active host sends at most one heartbeat per epoch (`EPOCH` seconds);
///   the last 256 epochs are kept as a bitmap. A heartbeat proves only that the host's key and
///   node process are up, not that the node answers peers; that is why clients also rank hosts
///   by their own dial results.
///
/// Every write is O(1): no loops, fixed storage per call.
contract ReputationSystem is IReputationSystem, EIP712 {
    /// @notice A host's counters. Packed into 2 slots.
    struct Record {
        uint64 sessions;
        uint64 auditsPassed;
        uint64 auditsFailed;
        uint64 ratings;
        /// @dev Saturates at type(uint128).max instead of reverting, so no host can make its
        /// own record unwritable (and so block its clients' ratings) with absurd token counts.
        uint128 tokensServed;
        uint128 ratingSum;
    }

    /// @dev A host's heartbeats: bit i of `beats` is a beat in epoch `lastEpoch - i`.
    struct Beats {
        uint64 lastEpoch;
        uint256 beats;
    }

    /// @dev What was done with one session, in one slot.
    struct SessionMarks {
        bool recorded;
        bool rated;
    }

    /// @notice The longest uptime window, in epochs (the bitmap's width).
    uint256 public constant MAX_WINDOW = 256;
    /// @notice The EIP-712 type the host signs for each transcript it served, in the
    /// marketplace's domain.
    bytes32 public constant TRANSCRIPT_TYPEHASH = keccak256("Transcript(uint256 sessionId,bytes32 transcriptHash)");
    /// @notice The EIP-712 type a session's client signs to rate its host with `rateBySig`, in
    /// this contract's domain ("Fabstir ReputationSystem", "1"). No nonce: a session is rated
    /// once.
    bytes32 public constant RATING_TYPEHASH = keccak256("Rating(uint256 sessionId,uint8 score,uint256 deadline)");

    IJobMarketplace public immutable marketplace;
    INodeRegistry public immutable nodeRegistry;
    /// @notice Seconds per heartbeat epoch.
    // EPOCH is public ABI (SDK reads EPOCH()); immutable named like a constant.
    // slither-disable-next-line naming-convention
    uint64 public immutable EPOCH;

    mapping(address host => Record) private _records;
    mapping(address host => Beats) private _beats;
    mapping(uint256 sessionId => SessionMarks) private _marks;
    mapping(bytes32 transcriptHash => AuditReport) private _audits;

    /// @notice Emitted once per session when it is counted in its host's record.
    event SessionRecorded(address indexed host, uint256 indexed sessionId, uint256 tokens);
    /// @notice Emitted when the client of session `sessionId` rates its host.
    event Rated(address indexed host, uint256 indexed sessionId, address indexed client, uint8 score);
    /// @notice Emitted when a session's client reports an audit of a host-signed transcript; the
    /// transcript itself is in the transaction's calldata.
    event AuditReported(
        address indexed host, uint256 indexed sessionId, bytes32 indexed transcriptHash, address reporter, bool passed
    );
    /// @notice Emitted when an active host beats in `epoch`.
    event Heartbeat(address indexed host, uint64 epoch);

    error ZeroAddress();
    error InvalidEpoch();
    error SessionNotSettled(uint256 sessionId);
    error NothingServed(uint256 sessionId);
    error SessionAlreadyRecorded(uint256 sessionId);
    error InvalidScore(uint8 score);
    error NotSessionClient(uint256 sessionId);
    error AlreadyRated(uint256 sessionId);
    error SignatureExpired(uint256 deadline);
    error InvalidRatingSignature(uint256 sessionId);
    error NotSignedByHost(uint256 sessionId);
    error AuditAlreadyReported(bytes32 transcriptHash);
    error HostNotActive(address host);
    error AlreadyBeat(uint64 epoch);
    error InvalidWindow(uint256 epochs);

    /// @param marketplace_ the JobMarketplace whose sessions are recorded, rated and audited
    /// @param nodeRegistry_ the NodeRegistry that says which hosts may beat
    /// @param epoch seconds per heartbeat epoch (production: 1 hour)
    constructor(IJobMarketplace marketplace_, INodeRegistry nodeRegistry_, uint64 epoch)
        EIP712("Fabstir ReputationSystem", "1")
    {
        if (address(marketplace_) == address(0) || address(nodeRegistry_) == address(0)) {
            revert ZeroAddress();
        }
        if (epoch == 0) revert InvalidEpoch();
        marketplace = marketplace_;
        nodeRegistry = nodeRegistry_;
        EPOCH = epoch;
    }

    // ----------------------------------------------------------------- anyone

    /// @notice Counts settled session `sessionId` in its host's record: one more session and the
    /// tokens it paid for. Anyone may call it, once per session.
    /// @param sessionId a session Settled having paid for at least one token
    function recordSession(uint256 sessionId) external {
        // parties() returns four fields; the client is not needed here.
        // slither-disable-next-line unused-return
        (, address host, IJobMarketplace.Status status, uint256 tokens) = marketplace.parties(sessionId);
        _checkServed(sessionId, status, tokens);
        if (_marks[sessionId].recorded) revert SessionAlreadyRecorded(sessionId);
        _record(sessionId, host, tokens);
    }

    // ----------------------------------------------------------------- clients

    /// @notice Rates the host of session `sessionId` from 1 (worst) to 5 (best); also records the
    /// session if nobody has yet. The session's client only, once per session, and only once
    /// the session settled having paid for tokens, so every rating is bound to paid service.
    /// @param sessionId a session the caller opened
    /// @param score 1 to 5
    function rate(uint256 sessionId, uint8 score) external {
        (address client, address host, IJobMarketplace.Status status, uint256 tokens) =
            marketplace.parties(sessionId);
        if (msg.sender != client) revert NotSessionClient(sessionId);
        _rate(sessionId, score, client, host, status, tokens);
    }

    /// @notice Submits a rating the client of session `sessionId` signed (`ratingDigest`), for
    /// a client that does not send it itself (a relayer pays the gas). Same rules as `rate`.
    /// The client may be an EOA (ECDSA) or a contract wallet (ERC-1271).
    /// @param sessionId a settled session
    /// @param score 1 to 5
    /// @param deadline the last second (block time) the signature is valid
    /// @param signature the client's signature over `ratingDigest(sessionId, score, deadline)`
    function rateBySig(uint256 sessionId, uint8 score, uint256 deadline, bytes calldata signature) external {
        // A signature's expiry; seconds of skew do not matter.
        // slither-disable-next-line timestamp
        if (block.timestamp > deadline) revert SignatureExpired(deadline);
        (address client, address host, IJobMarketplace.Status status, uint256 tokens) =
            marketplace.parties(sessionId);
        // An unknown session's client is address(0), which no signature recovers to.
        if (!SignatureChecker.isValidSignatureNow(client, ratingDigest(sessionId, score, deadline), signature)) {
            revert InvalidRatingSignature(sessionId);
        }
        _rate(sessionId, score, client, host, status, tokens);
    }

    /// @notice Reports whether an answer of session `sessionId` passed the caller's audit. The
    /// session's client only, at any status after opening (audits may come before settlement),
    /// and at most once per transcript ever.
    /// @dev `record` stays in this transaction's calldata as public evidence: anyone can fetch
    /// it, check that it hashes to the `transcriptHash` in the event and that the host signed it,
    /// and re-run the audit off-chain, so a false report is visible to all. An unknown session
    /// has no client, so it fails with NotSessionClient.
    /// @param sessionId a session the caller opened
    /// @param record the transcript the host served (its keccak256 is what the host signed)
    /// @param hostSignature the host's EIP-712 signature over Transcript(sessionId,
    /// keccak256(record)) in the marketplace's domain, made with its registered key
    /// @param passed whether the answer passed the audit
    function reportAudit(uint256 sessionId, bytes calldata record, bytes calldata hostSignature, bool passed)
        external
    {
        // parties() returns four fields; status and tokens are not needed (audits come at any status).
        // slither-disable-next-line unused-return
        (address client, address host,,) = marketplace.parties(sessionId);
        if (msg.sender != client) revert NotSessionClient(sessionId);
        bytes32 transcriptHash = keccak256(record);
        // errorArg only details the error; err and the signer are checked.
        // slither-disable-next-line unused-return
        (address signer, ECDSA.RecoverError err,) =
            ECDSA.tryRecover(transcriptDigest(sessionId, transcriptHash), hostSignature);
        if (err != ECDSA.RecoverError.NoError || signer != host) revert NotSignedByHost(sessionId);
        AuditReport storage report = _audits[transcriptHash];
        if (report.reported) revert AuditAlreadyReported(transcriptHash);
        report.sessionId = SafeCast.toUint128(sessionId);
        report.reported = true;
        report.passed = passed;
        Record storage r = _records[host];
        if (passed) {
            r.auditsPassed += 1;
        } else {
            r.auditsFailed += 1;
        }
        emit AuditReported(host, sessionId, transcriptHash, msg.sender, passed);
    }

    // ----------------------------------------------------------------- hosts

    /// @notice Marks the caller up in the current epoch. Active hosts only, at most once per
    /// epoch.
    function heartbeat() external {
        if (!nodeRegistry.isActiveHost(msg.sender)) revert HostNotActive(msg.sender);
        uint64 epoch = currentEpoch();
        Beats storage b = _beats[msg.sender];
        uint256 beats = b.beats;
        uint64 last = b.lastEpoch;
        // Bit 0 is set exactly when the host beat in `last`.
        // Same-epoch test is the intent; skew only moves a beat across an hour boundary.
        // slither-disable-next-line incorrect-equality,timestamp
        if (last == epoch && (beats & 1) != 0) revert AlreadyBeat(epoch);
        uint256 elapsed = epoch - last;
        beats = elapsed >= MAX_WINDOW ? 0 : beats << elapsed;
        b.beats = beats | 1;
        b.lastEpoch = epoch;
        emit Heartbeat(msg.sender, epoch);
    }

    // ----------------------------------------------------------------- views

    /// @notice The counters of `host` (all zero for a host never recorded).
    /// @param host the host
    /// @return the host's record
    function recordOf(address host) external view returns (Record memory) {
        return _records[host];
    }

    /// @notice How many of the last `epochs` epochs, counting the current one, `host` beat in.
    /// @param host the host
    /// @param epochs the window, 1 to MAX_WINDOW
    /// @return beats the epochs with a heartbeat in that window
    function uptime(address host, uint256 epochs) external view returns (uint256 beats) {
        if (epochs == 0 || epochs > MAX_WINDOW) revert InvalidWindow(epochs);
        Beats storage b = _beats[host];
        uint256 elapsed = currentEpoch() - b.lastEpoch;
        // Epoch arithmetic is the intent; skew only shifts the window by seconds.
        // slither-disable-next-line timestamp
        if (elapsed >= epochs) return 0;
        // Bits 0 .. epochs - elapsed - 1 are the epochs last .. current - epochs + 1.
        uint256 width = epochs - elapsed;
        // width <= MAX_WINDOW; the equality picks the full mask (1 << 256 is 0).
        // slither-disable-next-line incorrect-equality
        uint256 mask = width == MAX_WINDOW ? type(uint256).max : (uint256(1) << width) - 1;
        return _popcount(b.beats & mask);
    }

    /// @notice The current heartbeat epoch: block time divided by EPOCH.
    /// @return the epoch number
    function currentEpoch() public view returns (uint64) {
        return uint64(block.timestamp / EPOCH);
    }

    /// @notice Whether session `sessionId`'s client has rated it.
    /// @param sessionId the session
    /// @return true once rated
    function rated(uint256 sessionId) external view returns (bool) {
        return _marks[sessionId].rated;
    }

    /// @notice Whether session `sessionId` is counted in its host's record.
    /// @param sessionId the session
    /// @return true once recorded
    function sessionRecorded(uint256 sessionId) external view returns (bool) {
        return _marks[sessionId].recorded;
    }

    /// @notice Whether the transcript with hash `transcriptHash` has been reported.
    /// @param transcriptHash keccak256 of the transcript
    /// @return true once reported
    function auditReported(bytes32 transcriptHash) external view returns (bool) {
        return _audits[transcriptHash].reported;
    }

    /// @inheritdoc IReputationSystem
    function auditOf(bytes32 transcriptHash) external view returns (AuditReport memory) {
        return _audits[transcriptHash];
    }

    /// @notice The EIP-712 digest a host signs for a transcript it served in session
    /// `sessionId`, in the marketplace's domain.
    /// @param sessionId the session
    /// @param transcriptHash keccak256 of the transcript
    /// @return the digest
    function transcriptDigest(uint256 sessionId, bytes32 transcriptHash)
        public
        view
        override
        returns (bytes32)
    {
        return MessageHashUtils.toTypedDataHash(
            marketplace.domainSeparator(), keccak256(abi.encode(TRANSCRIPT_TYPEHASH, sessionId, transcriptHash))
        );
    }

    /// @notice The EIP-712 digest the client of session `sessionId` signs for `rateBySig`, in
    /// this contract's domain.
    /// @param sessionId the session
    /// @param score 1 to 5
    /// @param deadline the last second (block time) the signature is valid
    /// @return the digest
    function ratingDigest(uint256 sessionId, uint8 score, uint256 deadline) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(RATING_TYPEHASH, sessionId, score, deadline)));
    }

    // ----------------------------------------------------------------- internals

    /// @dev What `rate` and `rateBySig` share once the rater is known to be `client`.
    function _rate(
        uint256 sessionId,
        uint8 score,
        address client,
        address host,
        IJobMarketplace.Status status,
        uint256 tokens
    ) private {
        if (score == 0 || score > 5) revert InvalidScore(score);
        _checkServed(sessionId, status, tokens);
        SessionMarks storage marks = _marks[sessionId];
        if (marks.rated) revert AlreadyRated(sessionId);
        marks.rated = true;
        if (!marks.recorded) _record(sessionId, host, tokens);
        Record storage r = _records[host];
        r.ratings += 1;
        r.ratingSum += score;
        emit Rated(host, sessionId, client, score);
    }

    function _checkServed(uint256 sessionId, IJobMarketplace.Status status, uint256 tokens) private pure {
        if (status != IJobMarketplace.Status.Settled) revert SessionNotSettled(sessionId);
        if (tokens == 0) revert NothingServed(sessionId);
    }

    function _record(uint256 sessionId, address host, uint256 tokens) private {
        _marks[sessionId].recorded = true;
        Record storage r = _records[host];
        r.sessions += 1;
        uint256 served = uint256(r.tokensServed) + tokens;
        r.tokensServed = served > type(uint128).max ? type(uint128).max : uint128(served);
        emit SessionRecorded(host, sessionId, tokens);
    }

    /// @dev The number of set bits, in O(1) (SWAR: bits summed in 2-, 4-, 8- then 16-bit lanes,
    /// whose sum, at most 256, is gathered into the top lane by one multiplication).
    function _popcount(uint256 x) private pure returns (uint256) {
        unchecked {
            x -= (x >> 1) & 0x5555555555555555555555555555555555555555555555555555555555555555;
            x = (x & 0x3333333333333333333333333333333333333333333333333333333333333333)
                + ((x >> 2) & 0x3333333333333333333333333333333333333333333333333333333333333333);
            x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f;
            x = (x + (x >> 8)) & 0x00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff;
            return (x * 0x0001000100010001000100010001000100010001000100010001000100010001) >> 240;
        }
    }
}
