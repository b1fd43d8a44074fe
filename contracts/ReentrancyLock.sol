// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title ReentrancyLock
/// @notice `nonReentrant` in transient storage (EIP-1153): the lock costs about 200 gas where a
/// storage lock costs thousands, on every open and settlement.
/// @dev What OpenZeppelin's ReentrancyGuardTransient does, written out because Slither 0.11.6
/// cannot build the IR of a contract that inherits it next to EIP712 (its `using TransientSlot
/// for *`), which would leave the marketplace unanalysed.
abstract contract ReentrancyLock {
    /// @dev keccak256("fabstir.ReentrancyLock") - 1, out of the way of any compiler-laid slot.
    bytes32 private constant _LOCK = 0x85161924a56658c291caea37e33cb4927f04286d5852966e5870b4697372abc1;

    error ReentrancyGuardReentrantCall();

    modifier nonReentrant() {
        _lock();
        _;
        _unlock();
    }

    function _lock() private {
        bool locked;
        // Transient storage has no Solidity syntax for a fixed slot.
        // slither-disable-next-line assembly
        assembly ("memory-safe") {
            locked := tload(_LOCK)
        }
        if (locked) revert ReentrancyGuardReentrantCall();
        // slither-disable-next-line assembly
        assembly ("memory-safe") {
            tstore(_LOCK, 1)
        }
    }

    function _unlock() private {
        // slither-disable-next-line assembly
        assembly ("memory-safe") {
            tstore(_LOCK, 0)
        }
    }
}
