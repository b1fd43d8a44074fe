"""One exception root for everything the SDK raises, so callers catch :class:`FabstirError`
and never see a raw web3, trio or ``ValueError`` from inside. ``exit_code`` is what the
``fabstir`` CLI exits with for that kind of failure (the README's table)."""

from __future__ import annotations


class FabstirError(Exception):
    """Root of every SDK error."""

    exit_code = 1


class UsageError(FabstirError, ValueError):
    """The caller asked for something malformed (an unknown model name, a bad argument)."""

    exit_code = 2


class NoHostAvailable(FabstirError):
    """No registered host serves the model within the caller's limits, or none is reachable."""

    exit_code = 3


class ConfigurationError(FabstirError):
    """A deployment file, key or profile is missing or wrong."""

    exit_code = 4


class ChainError(FabstirError):
    """The RPC is unreachable, or a transaction or call failed."""

    exit_code = 5


class HostError(FabstirError):
    """The host answered with an ``error`` frame, broke off the stream, or broke the rules
    (``code`` says which: ``bad_accounting`` for an over-claim)."""

    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.retryable = retryable
