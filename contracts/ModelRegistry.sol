// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";

/// @title ModelRegistry
/// @notice Registry of servable models. A model's id is keccak256(repo + "/" + file) (the
/// original Fabstir scheme) and it pins the sha256 of the GGUF file, which a node refuses to
/// serve when the hash differs, and the sha256 of the model's tokenizer file, which a client
/// checks before counting the tokens it pays for with it. A proven model (an ONNX file small
/// enough to prove with EZKL) pins the ONNX file's sha256 and its circuit: the settings, the
/// verifying key and the SRS by hash, and the address of the verifier contract EZKL generated
/// from that key. The owner (later: governance) curates the list.
contract ModelRegistry is IModelRegistry, Ownable {
    struct ModelInput {
        string repo;
        string file;
        bytes32 sha256Hash;
        bytes32 tokenizerHash;
        uint8 tier;
    }

    mapping(bytes32 modelId => Model) private _models;
    mapping(bytes32 modelId => Circuit) private _circuits;

    /// @notice Emitted when a model is added.
    event ModelAdded(
        bytes32 indexed modelId,
        string repo,
        string file,
        bytes32 sha256Hash,
        bytes32 tokenizerHash,
        uint8 tier
    );
    /// @notice Emitted when a proven model is added (after its `ModelAdded`).
    event CircuitPinned(
        bytes32 indexed modelId,
        bytes32 settingsHash,
        bytes32 vkHash,
        bytes32 srsHash,
        address verifier,
        uint32 inputs,
        uint32 outputs
    );
    /// @notice Emitted when a model is deactivated.
    event ModelDeactivated(bytes32 indexed modelId);
    /// @notice Emitted when a model is reactivated.
    event ModelReactivated(bytes32 indexed modelId);

    error ModelAlreadyExists(bytes32 modelId);
    error UnknownModel(bytes32 modelId);
    error ModelNotActive(bytes32 modelId);
    error ModelAlreadyActive(bytes32 modelId);
    error EmptyModelName();
    error ZeroHash();
    error NotProvenModel(bytes32 modelId);
    error InvalidCircuit();

    /// @param initialOwner the owner (later: governance), who curates the models
    constructor(address initialOwner) Ownable(initialOwner) {}

    /// @notice The id of the model stored as `file` in `repo`.
    /// @param repo where the file is published
    /// @param file the file's name in `repo`
    /// @return keccak256(repo + "/" + file)
    function modelIdOf(string calldata repo, string calldata file) public pure returns (bytes32) {
        return keccak256(abi.encodePacked(repo, "/", file));
    }

    /// @notice Adds an active model pinned to `sha256Hash` (its GGUF file) and `tokenizerHash`
    /// (its tokenizer file); returns its id.
    /// @param repo where the file is published (e.g. a Hugging Face repository)
    /// @param file the GGUF file's name in `repo`
    /// @param sha256Hash the sha256 of the GGUF file; nonzero
    /// @param tokenizerHash the sha256 of the model's tokenizer file; nonzero
    /// @param tier the hardware tier the model needs
    /// @return the new model's id
    function addModel(
        string calldata repo,
        string calldata file,
        bytes32 sha256Hash,
        bytes32 tokenizerHash,
        uint8 tier
    ) external onlyOwner returns (bytes32) {
        if (tokenizerHash == bytes32(0)) revert ZeroHash();
        return _add(repo, file, sha256Hash, tokenizerHash, tier, Kind.Gguf);
    }

    /// @notice Adds several models in one transaction; reverts as a whole if any is invalid.
    /// @param inputs the models, each as `addModel` takes it
    /// @return ids the new models' ids, in the order of `inputs`
    function addModels(ModelInput[] calldata inputs) external onlyOwner returns (bytes32[] memory ids) {
        ids = new bytes32[](inputs.length);
        for (uint256 i = 0; i < inputs.length; ++i) {
            ModelInput calldata input = inputs[i];
            if (input.tokenizerHash == bytes32(0)) revert ZeroHash();
            ids[i] = _add(input.repo, input.file, input.sha256Hash, input.tokenizerHash, input.tier, Kind.Gguf);
        }
    }

    /// @notice Adds an active proven model: the ONNX file `file` in `repo`, pinned to
    /// `onnxHash`, whose jobs are paid only on a proof `circuit.verifier` accepts; returns its id.
    /// @param repo where the files are published
    /// @param file the ONNX file's name in `repo`
    /// @param onnxHash the sha256 of the ONNX file; nonzero
    /// @param circuit the pinned settings, verifying key and SRS, and the verifier (a contract)
    /// @return modelId the new model's id
    function addProvenModel(
        string calldata repo,
        string calldata file,
        bytes32 onnxHash,
        Circuit calldata circuit
    ) external onlyOwner returns (bytes32 modelId) {
        if (
            circuit.settingsHash == bytes32(0) || circuit.vkHash == bytes32(0)
                || circuit.srsHash == bytes32(0)
        ) revert ZeroHash();
        if (circuit.verifier.code.length == 0 || circuit.inputs == 0 || circuit.outputs == 0) {
            revert InvalidCircuit();
        }
        modelId = _add(repo, file, onnxHash, bytes32(0), 0, Kind.ProvenOnnx);
        _circuits[modelId] = circuit;
        emit CircuitPinned(
            modelId,
            circuit.settingsHash,
            circuit.vkHash,
            circuit.srsHash,
            circuit.verifier,
            circuit.inputs,
            circuit.outputs
        );
    }

    /// @notice Stops new sessions and registrations for `modelId`; running sessions still settle.
    /// @param modelId an active model
    function deactivateModel(bytes32 modelId) external onlyOwner {
        Model storage model = _existing(modelId);
        if (!model.active) revert ModelNotActive(modelId);
        model.active = false;
        emit ModelDeactivated(modelId);
    }

    /// @notice Makes a deactivated model servable again.
    /// @param modelId a deactivated model
    function reactivateModel(bytes32 modelId) external onlyOwner {
        Model storage model = _existing(modelId);
        if (model.active) revert ModelAlreadyActive(modelId);
        model.active = true;
        emit ModelReactivated(modelId);
    }

    /// @inheritdoc IModelRegistry
    function getModel(bytes32 modelId) external view returns (Model memory) {
        return _existing(modelId);
    }

    /// @inheritdoc IModelRegistry
    function getCircuit(bytes32 modelId) external view returns (Circuit memory) {
        if (_existing(modelId).kind != Kind.ProvenOnnx) revert NotProvenModel(modelId);
        return _circuits[modelId];
    }

    /// @inheritdoc IModelRegistry
    function isActive(bytes32 modelId) external view returns (bool) {
        return _models[modelId].active;
    }

    function _add(
        string calldata repo,
        string calldata file,
        bytes32 sha256Hash,
        bytes32 tokenizerHash,
        uint8 tier,
        Kind kind
    ) private returns (bytes32 modelId) {
        if (bytes(repo).length == 0 || bytes(file).length == 0) revert EmptyModelName();
        if (sha256Hash == bytes32(0)) revert ZeroHash();
        modelId = modelIdOf(repo, file);
        if (_models[modelId].addedAt != 0) revert ModelAlreadyExists(modelId);
        _models[modelId] = Model({
            repo: repo,
            file: file,
            sha256Hash: sha256Hash,
            tokenizerHash: tokenizerHash,
            tier: tier,
            active: true,
            addedAt: uint64(block.timestamp),
            kind: kind
        });
        emit ModelAdded(modelId, repo, file, sha256Hash, tokenizerHash, tier);
    }

    function _existing(bytes32 modelId) private view returns (Model storage model) {
        model = _models[modelId];
        if (model.addedAt == 0) revert UnknownModel(modelId);
    }
}
