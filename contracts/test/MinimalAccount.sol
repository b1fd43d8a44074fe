// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IAccount, PackedUserOperation} from "@openzeppelin/contracts/interfaces/draft-IERC4337.sol";
import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";

/// @title MinimalAccount
/// @notice A minimal ERC-4337 smart account for tests and local chains: one EOA owner, calls
/// made by the owner directly or by the EntryPoint after `validateUserOp`.
///
/// Signatures: a user operation is signed eth_sign-style (the owner signs
/// `toEthSignedMessageHash(userOpHash)`, as wallets' personal_sign does and as the reference
/// SimpleAccount checks); an ERC-1271 signature is the owner's plain ECDSA signature over the
/// hash itself (an EIP-712 digest signed with `eth_signTypedData`). The hash is not rebound to
/// this account (no ERC-7739), so two accounts of one owner accept each other's signatures:
/// fine here, as every digest the protocol asks about names its one client.
///
/// `refuseEth` makes `receive` revert, to exercise the escrows' deferred-refund path.
contract MinimalAccount is IAccount, IERC1271 {
    /// @notice One call of `executeBatch`.
    struct Call {
        address target;
        uint256 value;
        bytes data;
    }

    /// @notice The EntryPoint trusted to call `validateUserOp` and `execute`.
    address public immutable entryPoint;
    /// @notice The EOA that controls this account.
    address public immutable owner;
    /// @notice While true, plain ETH transfers to this account revert.
    bool public refuseEth;

    error NotOwnerOrEntryPoint(address caller);
    error NotEntryPoint(address caller);
    error NotOwner(address caller);
    error EthRefused();

    constructor(address entryPoint_, address owner_) {
        entryPoint = entryPoint_;
        owner = owner_;
    }

    modifier onlyOwnerOrEntryPoint() {
        if (msg.sender != owner && msg.sender != entryPoint) revert NotOwnerOrEntryPoint(msg.sender);
        _;
    }

    receive() external payable {
        if (refuseEth) revert EthRefused();
    }

    /// @notice Calls `target` with `value` wei (from this account's balance) and `data`; a
    /// revert bubbles up with the callee's revert data.
    function execute(address target, uint256 value, bytes calldata data)
        external
        onlyOwnerOrEntryPoint
        returns (bytes memory result)
    {
        return _call(target, value, data);
    }

    /// @notice Makes `calls` in order; the first revert undoes them all.
    function executeBatch(Call[] calldata calls) external onlyOwnerOrEntryPoint {
        for (uint256 i = 0; i < calls.length; ++i) {
            _call(calls[i].target, calls[i].value, calls[i].data);
        }
    }

    /// @notice Turns the refusal of plain ETH transfers on or off. Owner only.
    function setRefuseEth(bool refuse) external {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        refuseEth = refuse;
    }

    /// @inheritdoc IAccount
    function validateUserOp(PackedUserOperation calldata userOp, bytes32 userOpHash, uint256 missingAccountFunds)
        external
        returns (uint256 validationData)
    {
        if (msg.sender != entryPoint) revert NotEntryPoint(msg.sender);
        bytes32 signed = MessageHashUtils.toEthSignedMessageHash(userOpHash);
        validationData = _isOwnerSignature(signed, userOp.signature) ? 0 : 1; // 1: SIG_VALIDATION_FAILED
        if (missingAccountFunds != 0) {
            // The EntryPoint checks its deposit itself; a failed payment fails the operation there.
            (bool ok,) = payable(msg.sender).call{value: missingAccountFunds}("");
            ok;
        }
    }

    /// @inheritdoc IERC1271
    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        return _isOwnerSignature(hash, signature) ? IERC1271.isValidSignature.selector : bytes4(0xffffffff);
    }

    function _isOwnerSignature(bytes32 hash, bytes calldata signature) private view returns (bool) {
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(hash, signature);
        return err == ECDSA.RecoverError.NoError && signer == owner;
    }

    function _call(address target, uint256 value, bytes calldata data) private returns (bytes memory result) {
        bool ok;
        (ok, result) = target.call{value: value}(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(result, 0x20), mload(result))
            }
        }
    }
}
