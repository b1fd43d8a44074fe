// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title FabToken
/// @notice The stake token hosts lock in the NodeRegistry. On local chains the owner mints it.
contract FabToken is ERC20, Ownable {
    /// @param initialOwner the owner, who may mint
    constructor(address initialOwner) ERC20("Fabstir Token", "FAB") Ownable(initialOwner) {}

    /// @notice Mints `amount` tokens to `to`.
    /// @dev Owner only; production supply policy belongs to governance.
    /// @param to the recipient
    /// @param amount the amount to mint (18 decimals)
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
