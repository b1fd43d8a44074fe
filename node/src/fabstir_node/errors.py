"""One exception root for the node, :class:`NodeError`, whose ``exit_code`` is what
``fabstir-node`` exits with (the README's table):

    0 ok, 1 hash mismatch, 2 usage, 3 model missing or not loadable, 4 configuration, 5 chain.

The SDK's errors (the node uses its contract bindings and wire protocol) are
:class:`fabstir_sdk.errors.FabstirError`; :func:`exit_code` gives the node's code for those too,
so the CLI maps every failure in one place.
"""

from __future__ import annotations

from fabstir_sdk.errors import FabstirError

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_MODEL, EXIT_CONFIG, EXIT_CHAIN = 0, 1, 2, 3, 4, 5
EXIT_STORAGE = 6


class NodeError(Exception):
    """Root of every error the node raises on purpose."""

    exit_code = EXIT_MISMATCH


class UsageError(NodeError):
    """The command line asks for something contradictory (two key sources at once...)."""

    exit_code = EXIT_USAGE


class ConfigError(NodeError, ValueError):
    """A configuration file or variable has a bad value; the message names it."""

    exit_code = EXIT_CONFIG


class KeysError(ConfigError):
    """Keys are missing, unreadable, malformed or readable by others; the message says what
    to do."""


class ModelError(NodeError):
    """The model cannot be served; the message says why and what to do."""

    exit_code = EXIT_MODEL


class ChainError(NodeError):
    """The chain says no: not registered, nothing to withdraw, stake still unbonding..."""

    exit_code = EXIT_CHAIN


def exit_code(exc: BaseException) -> int | None:
    """The ``fabstir-node`` exit status for ``exc``, or None for an exception that is not
    one of ours (a bug: it should surface with its traceback)."""
    if isinstance(exc, NodeError):
        return exc.exit_code
    if not isinstance(exc, FabstirError):
        return None
    from fabstir_sdk import errors as sdk
    from fabstir_sdk.p2p import P2PError
    from fabstir_sdk.storage.errors import StorageError
    from fabstir_sdk.tokenizer import TokenizerError

    if isinstance(exc, sdk.UsageError):
        return EXIT_USAGE
    if isinstance(exc, (sdk.ConfigurationError, P2PError)):  # P2P: cannot listen where told
        return EXIT_CONFIG
    if isinstance(exc, TokenizerError):  # the model's tokenizer or template is unusable
        return EXIT_MODEL
    if isinstance(exc, StorageError):
        return EXIT_STORAGE
    # Chain failures, and the registry refusing our model (SessionRefused from check_model).
    return EXIT_CHAIN
