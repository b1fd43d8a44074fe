// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title FabToken
/// @notice The stake token hosts lock in the NodeRegistry. On local chains the owner mints it.
contract FabToken is ERC20, Ownable {
    constructor(address initialOwner) ERC20("Fabstir Token", "FAB") Ownable(initialOwner) {}

    /// @notice Mints `amount` tokens to `to`.
    /// @dev Owner only; production supply policy belongs to governance.
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
