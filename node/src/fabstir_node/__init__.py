"""Fabstir host node: serve GGUF models over libp2p and get paid per delivered token."""

__version__ = "0.1.0"
