// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {IProofSystem} from "./interfaces/IProofSystem.sol";
import {PaymentEscrow} from "./PaymentEscrow.sol";

/// @title JobBoard
/// @notice Work any host may take: a client posts a job (a model, the content hash of its
/// input in the store, the most it pays, a deadline) with the payment in escrow; the first
/// active host serving the model to `claim` it has `claimTimeout` to deliver, after which the
/// job returns to the board. The host stores the result and completes with its content hash
/// and the payment it asks (at most the maximum).
///
/// An unproven job pays after the challenge window, unless the client disputes it in time
/// (the owner, later governance, then decides). A proven job pays at once when the
/// ProofSystem accepts its proofs, bound to the job's input commitment; refused proofs pay
/// nothing and the job returns to the board. A job nobody completed by its deadline refunds
/// its client in full. Every job settles exactly once, and
/// deposit == host earnings + treasury fee + refund, to the wei.
///
/// A client may also sign a job (`Post`, EIP-712 in this contract's domain, one nonce per client)
/// for a sponsor (a relayer, a host) to post with `postFor`: the sponsor pays the gas, the
/// deposit is pulled from the client's ERC20 allowance, and the job is the client's. The client
/// may be an EOA (ECDSA) or a contract wallet (ERC-1271).
contract JobBoard is PaymentEscrow, EIP712, Nonces {

    enum Status {
        None,
        Open,
        Claimed,
        Completed,
        Disputed,
        Paid,
        Refunded
    }

    /// @dev Packed into 9 slots. `feeBps` and `challengeWindow` are fixed when the job is posted.
    struct Job {
        address client;
        uint64 deadline;
        uint16 feeBps;
        Status status;
        bool proofRequired;
        address host;
        uint64 claimedUntil;
        address token;
        uint64 completedAt;
        uint32 challengeWindow;
        bytes32 modelId;
        bytes32 inputHash;
        /// @dev keccak256 of the input instances the proofs must carry (proven jobs only).
        bytes32 inputCommitment;
        bytes32 resultHash;
        /// @dev keccak256 of the proven outputs (proven jobs only).
        bytes32 outputCommitment;
        uint128 maxPayment;
        uint128 payment;
    }

    /// @notice A job a client signs for `postFor`: `post`'s terms, the client, the client's next
    /// nonce (`nonces`) and the last second (block time) the signature is valid.
    /// @dev Every field is static, so `abi.encode(POST_TYPEHASH, request)` is its EIP-712
    /// encodeData (`postDigest`).
    struct PostRequest {
        address client;
        bytes32 modelId;
        bytes32 inputHash;
        bytes32 inputCommitment;
        address token;
        uint256 maxPayment;
        uint64 duration;
        bool proofRequired;
        uint256 nonce;
        uint256 deadline;
    }

    /// @notice The EIP-712 type of a `PostRequest`, in this contract's domain ("Fabstir
    /// JobBoard", "1").
    bytes32 public constant POST_TYPEHASH = keccak256(
        "Post(address client,bytes32 modelId,bytes32 inputHash,bytes32 inputCommitment,address token,"
        "uint256 maxPayment,uint64 duration,bool proofRequired,uint256 nonce,uint256 deadline)"
    );
    /// @notice The longest challenge window; it is stored per job in 32 bits.
    uint64 public constant MAX_CHALLENGE_WINDOW = 30 days;

    IModelRegistry public immutable modelRegistry;
    INodeRegistry public immutable nodeRegistry;
    IProofSystem public immutable proofSystem;

    /// @notice How long a claim lasts before the job returns to the board.
    uint64 public claimTimeout;
    /// @notice How long a client has to dispute an unproven result before it is paid.
    uint64 public challengeWindow;
    uint256 public nextJobId = 1;

    mapping(uint256 jobId => Job) private _jobs;

    /// @notice Emitted when a client posts a job.
    event JobPosted(
        uint256 indexed jobId,
        address indexed client,
        bytes32 indexed modelId,
        bytes32 inputHash,
        bytes32 inputCommitment,
        address token,
        uint256 maxPayment,
        uint64 deadline,
        bool proofRequired
    );
    /// @notice Emitted when `host` claims a job; it returns to the board after `claimedUntil`.
    event JobClaimed(uint256 indexed jobId, address indexed host, uint64 claimedUntil);
    /// @notice Emitted when the host completes an unproven job; paid from `releasableAt`.
    event JobCompleted(
        uint256 indexed jobId, address indexed host, bytes32 resultHash, uint256 payment, uint64 releasableAt
    );
    /// @notice Emitted when a proven job's proofs are accepted (it is paid in the same call).
    event JobProven(uint256 indexed jobId, address indexed host, bytes32 resultHash, bytes32 outputCommitment);
    /// @notice Emitted when a host's proofs are refused; the job is back on the board.
    event ProofRejected(uint256 indexed jobId, address indexed host, IProofSystem.Verdict verdict);
    /// @notice Emitted when the client disputes an unproven result.
    event JobDisputed(uint256 indexed jobId);
    /// @notice Emitted once per job when it settles: `paid` when the host is paid what it asked
    /// (released, proven, or a dispute decided for it; the payment may be zero), otherwise
    /// refunded in full (expired, cancelled, or a dispute decided for the client).
    event JobSettled(
        uint256 indexed jobId, uint256 payment, uint256 hostAmount, uint256 fee, uint256 refund, bool paid
    );
    /// @notice Emitted when the claim timeout changes.
    event ClaimTimeoutSet(uint64 claimTimeout);
    /// @notice Emitted when the challenge window for new jobs changes.
    event ChallengeWindowSet(uint64 challengeWindow);

    error ModelNotActive(bytes32 modelId);
    error NotProvenModel(bytes32 modelId);
    error ZeroHash();
    error HostNotActive(address host);
    error HostDoesNotServeModel(address host, bytes32 modelId);
    error NotClaimable(uint256 jobId);
    error NotJobHost(uint256 jobId);
    error NotJobClient(uint256 jobId);
    error ClaimExpired(uint256 jobId, uint64 claimedUntil);
    error ProofRequired(uint256 jobId);
    error NoProofRequired(uint256 jobId);
    error PaymentTooHigh(uint256 payment, uint256 maxPayment);
    error WrongStatus(uint256 jobId, Status status);
    error ChallengeWindowOpen(uint64 releasableAt);
    error ChallengeWindowClosed(uint64 releasableAt);
    error DeadlineNotReached(uint64 deadline);
    error ChallengeWindowTooLong(uint64 window);
    error SignatureExpired(uint256 deadline);
    error InvalidPostSignature(address client);
    error EthNotPullable();

    /// @param initialOwner the owner, who configures tokens, fee, treasury, durations and
    /// windows, decides disputes, and pauses
    /// @param modelRegistry_ the registry of the models jobs may use
    /// @param nodeRegistry_ the registry of the hosts that may claim jobs; claims lock their stake
    /// @param proofSystem_ the checker of proven jobs' proofs
    /// @param treasury_ the account credited with fees; nonzero
    /// @param feeBps_ the treasury's share of each payment, in basis points, at most MAX_FEE_BPS
    /// @param claimTimeout_ seconds a claim lasts; nonzero
    /// @param challengeWindow_ seconds a client has to dispute an unproven result, at most
    /// MAX_CHALLENGE_WINDOW
    constructor(
        address initialOwner,
        IModelRegistry modelRegistry_,
        INodeRegistry nodeRegistry_,
        IProofSystem proofSystem_,
        address treasury_,
        uint16 feeBps_,
        uint64 claimTimeout_,
        uint64 challengeWindow_
    ) PaymentEscrow(initialOwner, treasury_, feeBps_, 30 days) EIP712("Fabstir JobBoard", "1") {
        if (challengeWindow_ > MAX_CHALLENGE_WINDOW) revert ChallengeWindowTooLong(challengeWindow_);
        if (claimTimeout_ == 0) revert InvalidDuration(claimTimeout_);
        modelRegistry = modelRegistry_;
        nodeRegistry = nodeRegistry_;
        proofSystem = proofSystem_;
        claimTimeout = claimTimeout_;
        challengeWindow = challengeWindow_;
    }

    // ----------------------------------------------------------------- client

    /// @notice Posts a job for `modelId` and escrows `maxPayment` of `token` (address(0) = ETH,
    /// sent as value; an ERC20 must be approved first).
    /// @param modelId an active model; a proven one when `proofRequired`
    /// @param inputHash the content hash of the job's input in the store; nonzero
    /// @param inputCommitment for a proven job, keccak256 of the input instances the proofs
    /// must carry (`ProofSystem`); zero otherwise
    /// @param token an allow-listed payment token
    /// @param maxPayment the most the job pays, escrowed; within the token's deposit bounds
    /// @param duration seconds until the deadline, after which an unfinished job refunds
    /// @param proofRequired whether the job pays only on a proof (a proven model only)
    /// @return jobId the new job's id
    function post(
        bytes32 modelId,
        bytes32 inputHash,
        bytes32 inputCommitment,
        address token,
        uint256 maxPayment,
        uint64 duration,
        bool proofRequired
    ) external payable nonReentrant returns (uint256 jobId) {
        return _post(msg.sender, modelId, inputHash, inputCommitment, token, maxPayment, duration, proofRequired);
    }

    /// @notice Posts the job `request.client` signed (`postDigest`), for the caller (a
    /// sponsor) who pays the gas: `maxPayment` of the ERC20 `request.token` is pulled from the
    /// client, who must have approved it to this contract, and the job is the client's (its
    /// refund goes there). ETH cannot be pulled, so it is refused. Each signature posts once.
    /// @param request the job's terms, the client, its nonce and the signature's deadline
    /// @param signature the client's signature over `postDigest(request)`: an EOA's ECDSA or a
    /// contract wallet's ERC-1271
    /// @return jobId the new job's id
    function postFor(PostRequest calldata request, bytes calldata signature)
        external
        nonReentrant
        returns (uint256 jobId)
    {
        // A signature's expiry; seconds of skew do not matter.
        // slither-disable-next-line timestamp
        if (block.timestamp > request.deadline) revert SignatureExpired(request.deadline);
        if (request.token == address(0)) revert EthNotPullable();
        if (!SignatureChecker.isValidSignatureNow(request.client, postDigest(request), signature)) {
            revert InvalidPostSignature(request.client);
        }
        _useCheckedNonce(request.client, request.nonce);
        return _post(
            request.client,
            request.modelId,
            request.inputHash,
            request.inputCommitment,
            request.token,
            request.maxPayment,
            request.duration,
            request.proofRequired
        );
    }

    /// @notice Takes back an unclaimed job (or one whose claim lapsed): the deposit is refunded
    /// in full. Client only.
    /// @param jobId a job the caller posted
    function cancel(uint256 jobId) external nonReentrant {
        Job storage j = _jobs[jobId];
        if (msg.sender != j.client) revert NotJobClient(jobId);
        if (!_claimable(j)) revert NotClaimable(jobId);
        _refundAll(jobId, j);
    }

    /// @notice Disputes an unproven result within the challenge window; the owner decides.
    /// Client only.
    /// @param jobId a completed job the caller posted
    function dispute(uint256 jobId) external {
        Job storage j = _jobs[jobId];
        if (msg.sender != j.client) revert NotJobClient(jobId);
        if (j.status != Status.Completed) revert WrongStatus(jobId, j.status);
        uint64 at = _releasableAt(j);
        // Challenge-window deadline; seconds of skew do not matter.
        // slither-disable-next-line timestamp
        if (block.timestamp >= at) revert ChallengeWindowClosed(at);
        j.status = Status.Disputed;
        emit JobDisputed(jobId);
    }

    // ----------------------------------------------------------------- host

    /// @notice Claims job `jobId` for the caller, an active host serving its model, until
    /// `claimTimeout` from now (or the deadline, if sooner). First valid claim wins; a lapsed
    /// claim can be taken over.
    /// @param jobId an open job, or one whose claim lapsed, before its deadline
    function claim(uint256 jobId) external {
        Job storage j = _jobs[jobId];
        // Job deadline; seconds of skew do not matter.
        // slither-disable-next-line timestamp
        if (!_claimable(j) || block.timestamp >= j.deadline) revert NotClaimable(jobId);
        if (!nodeRegistry.isActiveHost(msg.sender)) revert HostNotActive(msg.sender);
        if (!nodeRegistry.servesModel(msg.sender, j.modelId)) {
            revert HostDoesNotServeModel(msg.sender, j.modelId);
        }
        uint64 until = uint64(block.timestamp) + claimTimeout;
        if (until > j.deadline) until = j.deadline;
        j.host = msg.sender;
        j.claimedUntil = until;
        j.status = Status.Claimed;
        emit JobClaimed(jobId, msg.sender, until);
        nodeRegistry.lockStake(msg.sender, j.deadline + uint64(j.challengeWindow));
    }

    /// @notice Completes an unproven job with the content hash of its stored result, asking
    /// `payment` (at most the job's maximum); paid after the challenge window. Claimer only,
    /// while the claim lasts.
    /// @param jobId an unproven job the caller claimed
    /// @param resultHash the content hash of the result in the store; nonzero
    /// @param payment what the host asks, at most the job's `maxPayment`
    function complete(uint256 jobId, bytes32 resultHash, uint256 payment) external {
        Job storage j = _claimed(jobId, payment);
        if (j.proofRequired) revert ProofRequired(jobId);
        if (resultHash == bytes32(0)) revert ZeroHash();
        j.status = Status.Completed;
        j.completedAt = uint64(block.timestamp);
        j.resultHash = resultHash;
        j.payment = uint128(payment); // <= maxPayment
        emit JobCompleted(jobId, msg.sender, resultHash, payment, _releasableAt(j));
    }

    /// @notice Completes a proven job: `proofs` (one per input, with their public
    /// `instances`) are checked by the ProofSystem. Accepted, the job is paid `payment` at
    /// once; refused, it pays nothing and returns to the board. Claimer only, while the claim
    /// lasts.
    /// @param jobId a proven job the caller claimed
    /// @param resultHash the content hash of the result in the store; nonzero
    /// @param payment what the host asks, at most the job's `maxPayment`
    /// @param proofs one proof per input
    /// @param instances each proof's public instances: its inputs, then its outputs
    function submitProofs(
        uint256 jobId,
        bytes32 resultHash,
        uint256 payment,
        bytes[] calldata proofs,
        uint256[][] calldata instances
    ) external nonReentrant {
        Job storage j = _claimed(jobId, payment);
        if (!j.proofRequired) revert NoProofRequired(jobId);
        if (resultHash == bytes32(0)) revert ZeroHash();
        (IProofSystem.Verdict verdict, bytes32 outputCommitment) =
            proofSystem.verifyJob(jobId, j.modelId, j.inputCommitment, proofs, instances);
        if (verdict != IProofSystem.Verdict.Valid) {
            j.status = Status.Open;
            j.host = address(0);
            j.claimedUntil = 0;
            emit ProofRejected(jobId, msg.sender, verdict);
            return;
        }
        j.completedAt = uint64(block.timestamp);
        j.resultHash = resultHash;
        j.outputCommitment = outputCommitment;
        emit JobProven(jobId, msg.sender, resultHash, outputCommitment);
        _settle(jobId, j, payment, true);
    }

    // ----------------------------------------------------------------- anyone

    /// @notice Pays an unproven job once its challenge window has passed undisputed.
    /// @param jobId a completed job
    function release(uint256 jobId) external nonReentrant {
        Job storage j = _jobs[jobId];
        if (j.status != Status.Completed) revert WrongStatus(jobId, j.status);
        uint64 at = _releasableAt(j);
        // Challenge-window deadline; seconds of skew do not matter.
        // slither-disable-next-line timestamp
        if (block.timestamp < at) revert ChallengeWindowOpen(at);
        _settle(jobId, j, j.payment, true);
    }

    /// @notice Refunds in full a job nobody completed by its deadline (from the second after
    /// it: at the deadline itself a claimer may still deliver).
    /// @param jobId an open or claimed job past its deadline
    function expire(uint256 jobId) external nonReentrant {
        Job storage j = _jobs[jobId];
        if (j.status != Status.Open && j.status != Status.Claimed) revert WrongStatus(jobId, j.status);
        // Job deadline; seconds of skew do not matter.
        // slither-disable-next-line timestamp
        if (block.timestamp <= j.deadline) revert DeadlineNotReached(j.deadline);
        _refundAll(jobId, j);
    }

    // ----------------------------------------------------------------- owner

    /// @notice Decides a disputed job: pays the host its asked payment, or refunds the client.
    /// @param jobId a disputed job
    /// @param payHost true to pay the host, false to refund the client in full
    function resolveDispute(uint256 jobId, bool payHost) external onlyOwner nonReentrant {
        Job storage j = _jobs[jobId];
        if (j.status != Status.Disputed) revert WrongStatus(jobId, j.status);
        if (payHost) _settle(jobId, j, j.payment, true);
        else _refundAll(jobId, j);
    }

    /// @notice Sets how long a claim lasts (for claims from now on).
    /// @param timeout the claim timeout, in seconds; nonzero
    function setClaimTimeout(uint64 timeout) external onlyOwner {
        if (timeout == 0) revert InvalidDuration(timeout);
        claimTimeout = timeout;
        emit ClaimTimeoutSet(timeout);
    }

    /// @notice Sets the challenge window for jobs posted from now on (at most
    /// MAX_CHALLENGE_WINDOW).
    /// @param window the challenge window, in seconds
    function setChallengeWindow(uint64 window) external onlyOwner {
        if (window > MAX_CHALLENGE_WINDOW) revert ChallengeWindowTooLong(window);
        challengeWindow = window;
        emit ChallengeWindowSet(window);
    }

    // ----------------------------------------------------------------- views

    /// @notice The job `jobId` (status None when unknown).
    /// @param jobId the job
    /// @return the job's terms and state
    function getJob(uint256 jobId) external view returns (Job memory) {
        return _jobs[jobId];
    }

    /// @notice Whether a host may claim job `jobId` now.
    /// @param jobId the job
    /// @return true when it is open (or its claim lapsed) and before its deadline
    function isClaimable(uint256 jobId) external view returns (bool) {
        Job storage j = _jobs[jobId];
        // Job deadline; seconds of skew do not matter.
        // slither-disable-next-line timestamp
        return _claimable(j) && block.timestamp < j.deadline;
    }

    /// @notice The EIP-712 digest a client signs for `postFor`, in this contract's domain.
    /// @param request the job's terms, the client, its nonce and the signature's deadline
    /// @return the digest
    function postDigest(PostRequest calldata request) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(POST_TYPEHASH, request)));
    }

    // ----------------------------------------------------------------- internals

    /// @dev What `post` and `postFor` share: checks the terms, records the job as `client`'s,
    /// and escrows the deposit (ETH came as value; an ERC20 is pulled from `client`).
    function _post(
        address client,
        bytes32 modelId,
        bytes32 inputHash,
        bytes32 inputCommitment,
        address token,
        uint256 maxPayment,
        uint64 duration,
        bool proofRequired
    ) private returns (uint256 jobId) {
        Config memory config = _admitDeposit(token, maxPayment, duration);
        if (!modelRegistry.isActive(modelId)) revert ModelNotActive(modelId);
        if (inputHash == bytes32(0)) revert ZeroHash();
        if (proofRequired) {
            if (modelRegistry.getModel(modelId).kind != IModelRegistry.Kind.ProvenOnnx) {
                revert NotProvenModel(modelId);
            }
            if (inputCommitment == bytes32(0)) revert ZeroHash();
        }
        jobId = nextJobId++;
        uint64 deadline = uint64(block.timestamp) + duration;
        Job storage j = _jobs[jobId];
        j.client = client;
        j.deadline = deadline;
        j.feeBps = config.feeBps;
        j.status = Status.Open;
        j.proofRequired = proofRequired;
        j.token = token;
        j.challengeWindow = uint32(challengeWindow); // <= MAX_CHALLENGE_WINDOW
        j.modelId = modelId;
        j.inputHash = inputHash;
        j.inputCommitment = inputCommitment;
        j.maxPayment = SafeCast.toUint128(maxPayment);
        emit JobPosted(jobId, client, modelId, inputHash, inputCommitment, token, maxPayment, deadline, proofRequired);
        if (token != address(0)) _pullExactly(IERC20(token), client, maxPayment);
    }

    /// @dev Open, or claimed by a host whose claim has lapsed.
    function _claimable(Job storage j) private view returns (bool) {
        // Claim timeout; seconds of skew do not matter.
        // slither-disable-next-line timestamp
        return j.status == Status.Open || (j.status == Status.Claimed && block.timestamp > j.claimedUntil);
    }

    function _claimed(uint256 jobId, uint256 payment) private view returns (Job storage j) {
        j = _jobs[jobId];
        if (j.status != Status.Claimed) revert WrongStatus(jobId, j.status);
        if (msg.sender != j.host) revert NotJobHost(jobId);
        // Claim timeout; seconds of skew do not matter.
        // slither-disable-next-line timestamp
        if (block.timestamp > j.claimedUntil) revert ClaimExpired(jobId, j.claimedUntil);
        if (payment > j.maxPayment) revert PaymentTooHigh(payment, j.maxPayment);
    }

    function _releasableAt(Job storage j) private view returns (uint64) {
        return j.completedAt + uint64(j.challengeWindow);
    }

    function _refundAll(uint256 jobId, Job storage j) private {
        _settle(jobId, j, 0, false);
    }

    function _settle(uint256 jobId, Job storage j, uint256 payment, bool paid) private {
        (uint256 hostAmount, uint256 fee) = _split(payment, j.feeBps);
        uint256 refund = j.maxPayment - payment;
        j.status = paid ? Status.Paid : Status.Refunded;
        j.payment = uint128(payment);
        emit JobSettled(jobId, payment, hostAmount, fee, refund, paid);
        _payEarnings(j.token, j.host, hostAmount, fee);
        // Settled first; every payout entry point is nonReentrant; the ledger grows only when a
        // push failed.
        // slither-disable-next-line reentrancy-eth
        if (refund != 0) _refund(jobId, j.client, j.token, refund);
    }
}
