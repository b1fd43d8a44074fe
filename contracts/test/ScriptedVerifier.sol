// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title ScriptedVerifier (fault injection for tests)
/// @notice A verifier whose answer the test sets; never deployed outside tests. It stands in
/// for the Halo2 verifier EZKL generates (`verifyProof(bytes, uint256[])`), so the contract tests
/// can drive every ProofSystem verdict without proving anything: it answers `answer`, or reverts
/// when `reverts` is set (EZKL's verifiers revert on a bad proof), after using `gasToUse` gas
/// (a real verifier costs about half a million). Real EZKL verifiers are exercised by the
/// integration tests on Anvil.
contract ScriptedVerifier {
    /// @notice What `verifyProof` returns (when it does not revert).
    bool public answer = true;
    /// @notice Whether `verifyProof` reverts.
    bool public reverts;
    /// @notice About how much gas `verifyProof` uses before it answers.
    uint256 public gasToUse;
    /// @notice How many times `verifyProof` has answered.
    uint256 public calls;

    error ScriptedRevert();

    /// @notice Sets what `verifyProof` does from now on.
    function setAnswer(bool answer_, bool reverts_) external {
        answer = answer_;
        reverts = reverts_;
    }

    /// @notice Sets how much gas `verifyProof` uses before it answers.
    function setGasToUse(uint256 gasToUse_) external {
        gasToUse = gasToUse_;
    }

    /// @notice Answers as scripted, whatever the proof and instances.
    function verifyProof(bytes calldata, uint256[] calldata) external returns (bool) {
        uint256 start = gasleft();
        uint256 target = gasToUse;
        while (start - gasleft() < target) {}
        if (reverts) revert ScriptedRevert();
        ++calls;
        return answer;
    }
}
