"""One exception root for everything the SDK raises, so callers catch :class:`FabstirError`
and never see a raw web3, trio or ``ValueError`` from inside. ``exit_code`` is what the
``fabstir`` CLI exits with for that kind of failure (the README's table).

Exceptions of the layers below (web3/requests for the chain, trio/libp2p/cbor2 for the
network, eth-account for keys) are translated where they enter our public calls by
:func:`map_errors`, as httpx maps httpcore's; the original stays in ``__cause__``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

F = TypeVar("F", bound=Callable[..., Any])


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


# --------------------------------------------------------------------------- translation


def _classes(module: str, *names: str) -> tuple[type[BaseException], ...]:
    """Exception classes of ``module`` if it is already imported (we never import a layer
    just to recognise its errors: if it is not loaded, it cannot have raised)."""
    loaded = sys.modules.get(module)
    found = (getattr(loaded, name, None) for name in names) if loaded else ()
    return tuple(c for c in found if isinstance(c, type) and issubclass(c, BaseException))


def translate(exc: BaseException) -> FabstirError | None:
    """The :class:`FabstirError` for an exception of a layer below, or None if it is not one
    we know (a bug of ours, which should surface as it is)."""
    if isinstance(exc, FabstirError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (mapped := translate(inner)) is not None:
                return mapped
        return None
    text = str(exc) or type(exc).__name__
    # The chain: invalid arguments first (a malformed address is the caller's mistake).
    if isinstance(exc, _classes("web3.exceptions", "Web3ValidationError", "Web3TypeError")):
        return UsageError(f"invalid argument for the chain: {text}")
    if isinstance(exc, _classes("web3.exceptions", "ContractLogicError")):
        data = getattr(exc, "data", None)
        if isinstance(data, str):
            from fabstir_sdk.contracts.artifacts import custom_error_name

            text = custom_error_name(data) or text
        return ChainError(f"the contract refused: {text}")
    if isinstance(exc, _classes("web3.exceptions", "TimeExhausted")):
        return ChainError(f"the transaction was not mined in time: {text}")
    if isinstance(exc, _classes("web3.exceptions", "Web3Exception")):
        return ChainError(f"chain error: {text}")
    if isinstance(exc, _classes("requests.exceptions", "RequestException")):
        return ChainError(f"the chain RPC is unreachable: {text}")
    if isinstance(exc, _classes("eth_abi.exceptions", "EncodingError")):
        return UsageError(f"invalid argument for the chain: {text}")
    # The network and the wire: the host failed or went away.
    if isinstance(exc, _classes("trio", "TooSlowError")):
        return HostError("timeout", "the host did not answer in time", True)
    if isinstance(
        exc, _classes("trio", "BrokenResourceError", "ClosedResourceError", "EndOfChannel")
    ):
        return HostError("stream_closed", f"the connection to the host broke: {text}", True)
    if isinstance(exc, _classes("cbor2", "CBORError")):
        return HostError("malformed_frame", f"undecodable frame from the host: {text}")
    if isinstance(exc, _classes("libp2p.exceptions", "BaseLibp2pError")):
        return HostError("p2p_error", f"libp2p: {text}", True)
    if isinstance(exc, TimeoutError):
        return HostError("timeout", f"timed out: {text}", True)
    if isinstance(exc, ConnectionError):
        return HostError("connection_lost", f"connection failed: {text}", True)
    return None


@contextlib.contextmanager
def map_errors() -> Iterator[None]:
    """Re-raise a lower layer's exception as its :class:`FabstirError` (see
    :func:`translate`); works around ``await`` too::

        with map_errors():
            await client.open_session(...)
    """
    try:
        yield
    except FabstirError:
        raise
    except Exception as exc:
        mapped = translate(exc)
        if mapped is None:
            raise
        raise mapped from exc


def mapped(fn: F) -> F:
    """Decorate a public function or coroutine function so that it raises only
    :class:`FabstirError` (through :func:`map_errors`). Not for async generators: map inside
    them, so that ``aclose()`` still reaches the generator."""
    if inspect.isasyncgenfunction(fn):
        raise TypeError("map errors inside an async generator, not around it")
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def call_async(*args: Any, **kwargs: Any) -> Any:
            with map_errors():
                return await fn(*args, **kwargs)

        return cast(F, call_async)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with map_errors():
            return fn(*args, **kwargs)

    return cast(F, call)
