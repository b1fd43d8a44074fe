// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title IModelRegistry
/// @notice The models the network may serve, each pinned to the sha256 of its GGUF file and
/// of its tokenizer file.
interface IModelRegistry {
    struct Model {
        string repo;
        string file;
        bytes32 sha256Hash;
        bytes32 tokenizerHash;
        uint8 tier;
        bool active;
        uint64 addedAt;
    }

    /// @notice Returns the model `modelId`; reverts when unknown.
    function getModel(bytes32 modelId) external view returns (Model memory);

    /// @notice True when `modelId` is registered and active.
    function isActive(bytes32 modelId) external view returns (bool);
}
