// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title IJobMarketplace
/// @notice What other contracts read from the session marketplace: who took part in a session,
/// how far it got, and the EIP-712 domain its vouchers and host-signed transcripts are bound to.
interface IJobMarketplace {
    /// @notice A session's lifecycle: None (unknown), Open, CloseRequested (the client asked to
    /// close; the host may still settle during the dispute window), Settled (exactly once).
    enum Status {
        None,
        Open,
        CloseRequested,
        Settled
    }

    /// @notice Who took part in session `sessionId`, its status, and the tokens it paid for (the
    /// best checkpoint while live, the settled count once Settled).
    /// @param sessionId the session
    /// @return client the account that opened and paid for the session (zero when unknown)
    /// @return host the host that served it
    /// @return status where the session stands (None when unknown)
    /// @return tokens the tokens vouched for so far, or paid for once Settled
    function parties(uint256 sessionId)
        external
        view
        returns (address client, address host, Status status, uint256 tokens);

    /// @notice The EIP-712 domain separator vouchers and host-signed transcripts are bound to
    /// (the chain and the marketplace contract).
    /// @return the domain separator
    function domainSeparator() external view returns (bytes32);
}
