// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";
import {IProofSystem} from "./interfaces/IProofSystem.sol";
import {IHalo2Verifier} from "./interfaces/IHalo2Verifier.sol";

/// @title ProofSystem
/// @notice Checks the proofs of a proven job. Each proof's public instances are the model's
/// quantized inputs followed by its outputs (as field elements). A job is bound to its data by
/// `inputCommitment = keccak256(abi.encodePacked(inputs of proof 1, inputs of proof 2, ...))`,
/// fixed when the client posts it; the proofs must reproduce it exactly, verify against the
/// verifier the ModelRegistry pins for the job's model, and never have been accepted before.
/// So a proof for other data, for another model (another verifying key) or a replay of an
/// accepted proof is refused. The outputs are returned as `outputCommitment`, computed the
/// same way, which the stored result is checked against.
contract ProofSystem is IProofSystem, Ownable {
    /// @notice The most proofs (inputs) one job may carry.
    uint256 public constant MAX_PROOFS = 16;
    /// @notice Gas given to each verifier call (the most a pinned verifier may use). A call
    /// starts only with this much gas at hand: otherwise a refusal could be an out-of-gas
    /// the submitter chose (gas estimation would even choose it), not a bad proof.
    uint256 public constant VERIFY_GAS = 1_500_000;

    IModelRegistry public immutable modelRegistry;
    /// @notice The job board, the only caller whose accepted proofs are consumed.
    address public board;
    /// @notice keccak256 of every proof accepted so far.
    mapping(bytes32 proofHash => bool) public accepted;

    /// @notice Emitted when the board is set.
    event BoardSet(address indexed board);
    /// @notice Emitted for each proof accepted for job `jobId`.
    event ProofAccepted(uint256 indexed jobId, bytes32 indexed modelId, bytes32 proofHash);

    error NotBoard(address caller);
    error InsufficientGas(uint256 left, uint256 needed);
    error ZeroAddress();

    /// @param initialOwner the owner, who sets the board
    /// @param modelRegistry_ the registry that pins each proven model's circuit and verifier
    constructor(address initialOwner, IModelRegistry modelRegistry_) Ownable(initialOwner) {
        modelRegistry = modelRegistry_;
    }

    /// @notice Sets the job board whose proofs this contract checks (owner only).
    /// @param board_ the JobBoard; nonzero
    function setBoard(address board_) external onlyOwner {
        if (board_ == address(0)) revert ZeroAddress();
        board = board_;
        emit BoardSet(board_);
    }

    /// @inheritdoc IProofSystem
    function verifyJob(
        uint256 jobId,
        bytes32 modelId,
        bytes32 inputCommitment,
        bytes[] calldata proofs,
        uint256[][] calldata instances
    ) external returns (Verdict verdict, bytes32 outputCommitment) {
        if (msg.sender != board) revert NotBoard(msg.sender);
        IModelRegistry.Circuit memory c = modelRegistry.getCircuit(modelId);
        uint256 n = proofs.length;
        if (n == 0 || n > MAX_PROOFS || instances.length != n) return (Verdict.WrongCount, 0);
        bytes32 inputs;
        (verdict, inputs, outputCommitment) = _commitments(c.inputs, c.outputs, instances);
        if (verdict != Verdict.Valid) return (verdict, 0);
        if (inputs != inputCommitment) return (Verdict.InputMismatch, 0);
        bytes32[] memory hashes;
        // Owner-pinned verifier; only the board's nonReentrant submitProofs calls (else NotBoard).
        // slither-disable-next-line reentrancy-no-eth,reentrancy-events
        (verdict, hashes) = _check(c.verifier, proofs, instances);
        if (verdict != Verdict.Valid) return (verdict, 0);
        for (uint256 i = 0; i < n; ++i) {
            accepted[hashes[i]] = true;
            emit ProofAccepted(jobId, modelId, hashes[i]);
        }
    }

    /// @dev keccak256 of all proofs' inputs, and of all their outputs, each in proof order.
    function _commitments(uint256 nIn, uint256 nOut, uint256[][] calldata instances)
        private
        pure
        returns (Verdict, bytes32, bytes32)
    {
        for (uint256 i = 0; i < instances.length; ++i) {
            if (instances[i].length != nIn + nOut) return (Verdict.WrongInstances, 0, 0);
        }
        return (Verdict.Valid, _hashColumns(instances, 0, nIn), _hashColumns(instances, nIn, nOut));
    }

    /// @dev keccak256(abi.encodePacked(...)) of instances[i][from .. from + count) for every i.
    function _hashColumns(uint256[][] calldata instances, uint256 from, uint256 count)
        private
        pure
        returns (bytes32)
    {
        uint256[] memory values = new uint256[](instances.length * count);
        for (uint256 i = 0; i < instances.length; ++i) {
            for (uint256 k = 0; k < count; ++k) {
                values[i * count + k] = instances[i][from + k];
            }
        }
        return keccak256(abi.encodePacked(values));
    }

    /// @dev Each proof new (never accepted, not repeated in this call) and accepted by `verifier`.
    function _check(address verifier, bytes[] calldata proofs, uint256[][] calldata instances)
        private
        returns (Verdict, bytes32[] memory hashes)
    {
        hashes = new bytes32[](proofs.length);
        for (uint256 i = 0; i < proofs.length; ++i) {
            hashes[i] = keccak256(proofs[i]);
            if (accepted[hashes[i]]) return (Verdict.Replayed, hashes);
            for (uint256 j = 0; j < i; ++j) {
                if (hashes[j] == hashes[i]) return (Verdict.Replayed, hashes);
            }
            if (!_verifies(verifier, proofs[i], instances[i])) return (Verdict.Invalid, hashes);
        }
        return (Verdict.Valid, hashes);
    }

    /// @dev A verifier reverts on a bad proof (EZKL's do); either way it is a refusal. With
    /// VERIFY_GAS assured, a revert is the verifier's verdict, never a starved call.
    function _verifies(address verifier, bytes calldata proof, uint256[] calldata instances)
        private
        returns (bool)
    {
        uint256 needed = VERIFY_GAS + VERIFY_GAS / 63 + 10_000; // the 1/64 kept back, and return
        if (gasleft() < needed) revert InsufficientGas(gasleft(), needed);
        // At most MAX_PROOFS calls, fixed VERIFY_GAS each, a revert is caught as a refusal.
        // slither-disable-next-line calls-loop
        try IHalo2Verifier(verifier).verifyProof{gas: VERIFY_GAS}(proof, instances) returns (bool ok) {
            return ok;
        } catch {
            return false;
        }
    }
}
