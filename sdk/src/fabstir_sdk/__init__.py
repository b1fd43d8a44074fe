"""Fabstir SDK: discover LLM hosts, open paid sessions, stream tokens.

The wire protocol (``fabstir_sdk.protocol``) and the contract bindings
(``fabstir_sdk.contracts``) live here so that the node imports them and the two
sides cannot drift.
"""

__version__ = "0.1.0"
