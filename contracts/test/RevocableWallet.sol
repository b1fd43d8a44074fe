// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title RevocableWallet (fault injection for tests)
/// @notice An ERC-1271 wallet that accepts its key's signatures until it is told to refuse
/// everything: a session signer that can change its mind after signing vouchers, to prove what
/// a host keeps when the client's wallet turns against it.
contract RevocableWallet is IERC1271 {
    /// @notice The key whose ECDSA signatures the wallet accepts.
    address public immutable key;
    /// @notice Whether the wallet refuses every signature.
    bool public revoked;

    constructor(address key_) {
        key = key_;
    }

    /// @notice Refuses (or accepts again) every signature from now on.
    function setRevoked(bool revoked_) external {
        revoked = revoked_;
    }

    /// @notice ERC-1271: valid when `key` signed `hash` and the wallet is not revoked.
    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(hash, signature);
        if (revoked || err != ECDSA.RecoverError.NoError || signer != key) return 0xffffffff;
        return IERC1271.isValidSignature.selector;
    }
}
