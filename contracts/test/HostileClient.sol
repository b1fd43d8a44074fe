// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title HostileClient (fault injection for tests)
/// @notice A client contract whose receive() either reverts or re-enters a target, to prove a
/// hostile client can neither block a host's settlement nor take a refund twice.
contract HostileClient {
    enum Mode {
        Accept,
        Revert,
        Reenter
    }

    Mode public mode;
    address public target;
    bytes public payload;
    bool public lastCallSucceeded;

    /// @notice Emitted after the reentrant call, with its outcome and what it returned (the
    /// revert data when it failed).
    event ReentryAttempted(bool success, bytes returnData);

    /// @notice Chooses what receive() does.
    function setMode(Mode mode_, address target_, bytes calldata payload_) external {
        mode = mode_;
        target = target_;
        payload = payload_;
    }

    /// @notice Forwards a call (with value) as this contract, e.g. to open a session.
    function execute(address to, bytes calldata data) external payable returns (bytes memory) {
        (bool ok, bytes memory ret) = to.call{value: msg.value}(data);
        if (!ok) {
            assembly {
                revert(add(ret, 32), mload(ret))
            }
        }
        return ret;
    }

    receive() external payable {
        if (mode == Mode.Revert) revert("no refunds please");
        if (mode == Mode.Reenter) {
            (bool ok, bytes memory ret) = target.call(payload);
            lastCallSucceeded = ok;
            emit ReentryAttempted(ok, ret);
        }
    }
}
