// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {TimelockController} from "@openzeppelin/contracts/governance/TimelockController.sol";

/// @title FabTimelock
/// @notice Owns the protocol's contracts and executes what FabGovernor's votes pass, after a
/// delay that lets everyone see a decision coming (and hosts and clients leave) before it takes
/// effect. OpenZeppelin's TimelockController, named for the deployment.
contract FabTimelock is TimelockController {
    /// @param minDelay seconds between queueing a passed proposal and executing it
    /// @param proposers who may queue (the governor)
    /// @param executors who may execute once the delay passed (address(0): anyone)
    /// @param admin an optional account that may grant roles during setup (address(0): none;
    /// the deploy script renounces it once the governor holds its roles)
    constructor(uint256 minDelay, address[] memory proposers, address[] memory executors, address admin)
        TimelockController(minDelay, proposers, executors, admin)
    {}
}
