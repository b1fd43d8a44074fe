// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title IModelRegistry
/// @notice The models the network may serve: GGUF language models, each pinned to the sha256
/// of its GGUF file and of its tokenizer file, and ONNX models small enough to prove, pinned
/// to the sha256 of the ONNX file and to the circuit their proofs are checked against.
interface IModelRegistry {
    enum Kind {
        Gguf,
        ProvenOnnx
    }

    struct Model {
        string repo;
        string file;
        /// @dev The sha256 of the GGUF file, or of the ONNX file for a proven model.
        bytes32 sha256Hash;
        /// @dev The sha256 of the tokenizer file; zero for a proven model (it has none).
        bytes32 tokenizerHash;
        uint8 tier;
        bool active;
        uint64 addedAt;
        Kind kind;
    }

    /// @notice What a proof for a proven model is checked against. The EZKL settings, the
    /// verifying key and the structured reference string are pinned by their sha256, so a host
    /// proves with exactly the circuit the verifier contract was generated for.
    struct Circuit {
        bytes32 settingsHash;
        bytes32 vkHash;
        bytes32 srsHash;
        /// @dev The EZKL-generated verifier: `verifyProof(bytes, uint256[])`.
        address verifier;
        /// @dev Public instances per proof: the model's inputs, then its outputs.
        uint32 inputs;
        uint32 outputs;
    }

    /// @notice Returns the model `modelId`; reverts when unknown.
    /// @param modelId the model's id
    /// @return the model
    function getModel(bytes32 modelId) external view returns (Model memory);

    /// @notice The circuit of proven model `modelId`; reverts when it is not one.
    /// @param modelId the proven model's id
    /// @return the circuit its proofs are checked against
    function getCircuit(bytes32 modelId) external view returns (Circuit memory);

    /// @notice True when `modelId` is registered and active.
    /// @param modelId the model's id
    /// @return whether new sessions, jobs and registrations may use it
    function isActive(bytes32 modelId) external view returns (bool);
}
