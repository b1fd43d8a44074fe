"""Fabstir development and test helpers, never shipped (see devtools/README.md):

- ``fabstir_devtools.chain``: Anvil, the funded test accounts, deploying the protocol;
- ``fabstir_devtools.network``: the launcher of a local network with staked host processes;
- ``fabstir_devtools.tiny_gguf``: a tiny random-weight GGUF for tests;
- ``fabstir_devtools.wait``: waiting on a condition instead of sleeping.

Import from the submodules: this package imports nothing on its own, so a test that needs
only the tiny GGUF doesn't load web3 and libp2p.
"""
