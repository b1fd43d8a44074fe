// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title TestUSD
/// @notice A 6-decimals stablecoin for local chains only: anyone may mint.
contract TestUSD is ERC20 {
    constructor() ERC20("Test USD", "tUSD") {}

    /// @notice 6 decimals, like USDC.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @notice Mints `amount` to `to` (test faucet).
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
