// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title ReentrantToken (fault injection for tests)
/// @notice An ERC20 that, when armed, calls `target` with `payload` from inside its transfers,
/// to prove the marketplace resists reentrancy. It can also skim a fee on transfer.
contract ReentrantToken is ERC20 {
    address public target;
    bytes public payload;
    bool public armed;
    bool public lastCallSucceeded;
    uint256 public transferFeeBps;

    /// @notice Emitted after the reentrant call, with its outcome and what it returned (the
    /// revert data when it failed).
    event ReentryAttempted(bool success, bytes returnData);

    constructor() ERC20("Reentrant", "EVIL") {}

    /// @notice Mints `amount` to `to`.
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Arms a reentrant call of `target` with `payload` on the next transfer.
    function arm(address target_, bytes calldata payload_) external {
        target = target_;
        payload = payload_;
        armed = true;
    }

    /// @notice Makes transfers burn `bps` of the amount (a fee-on-transfer token).
    function setTransferFee(uint256 bps) external {
        transferFeeBps = bps;
    }

    function _update(address from, address to, uint256 value) internal override {
        if (armed) {
            armed = false;
            (bool ok, bytes memory ret) = target.call(payload);
            lastCallSucceeded = ok;
            emit ReentryAttempted(ok, ret);
        }
        uint256 fee = from == address(0) ? 0 : value * transferFeeBps / 10_000;
        if (fee != 0) super._update(from, address(0), fee);
        super._update(from, to, value - fee);
    }
}
