// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {ERC20Votes} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Votes.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";

/// @title FabToken
/// @notice The stake token hosts lock in the NodeRegistry, and the votes that govern the
/// protocol (FabGovernor). Voting power follows delegation (ERC20Votes: a holder delegates,
/// to itself or another, before its tokens count), and approvals can be signed (ERC-2612
/// permit). The clock is the block timestamp (ERC-6372 `mode=timestamp`), so governance
/// periods are in seconds whatever the chain's block time.
/// @dev Only the owner mints: on a local chain the deployer, once deployed with governance the
/// timelock, so the supply policy is governance's.
contract FabToken is ERC20, ERC20Permit, ERC20Votes, Ownable {
    /// @param initialOwner the account that may mint (the deployer, then the timelock)
    constructor(address initialOwner) ERC20("Fabstir Token", "FAB") ERC20Permit("Fabstir Token") Ownable(initialOwner) {}

    /// @notice Mints `amount` tokens to `to`. Owner only.
    /// @param to the receiver
    /// @param amount the tokens to create
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }

    /// @notice The current timepoint of the votes' clock: the block timestamp.
    /// @return the block timestamp
    function clock() public view override returns (uint48) {
        return uint48(block.timestamp);
    }

    /// @notice The votes' clock, as ERC-6372 describes it.
    /// @return the clock mode: timestamps
    // The name ERC-6372 gives it.
    // slither-disable-next-line naming-convention
    function CLOCK_MODE() public pure override returns (string memory) {
        return "mode=timestamp";
    }

    /// @notice The next nonce `owner` signs a permit with.
    /// @param owner the signer of the permit
    /// @return the nonce
    function nonces(address owner) public view override(ERC20Permit, Nonces) returns (uint256) {
        return super.nonces(owner);
    }

    function _update(address from, address to, uint256 value) internal override(ERC20, ERC20Votes) {
        super._update(from, to, value);
    }
}
