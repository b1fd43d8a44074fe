"""Deterministic CBOR (RFC 8949 §4.2.1), so that one value has one encoding and one hash.

Core deterministic encoding: integers and lengths in their shortest form, definite lengths
only, map keys sorted by the bytewise order of their encodings. That is neither cbor2's
``canonical=True`` (RFC 7049's length-first order) nor s5.js (it sorts keys with JavaScript's
``localeCompare``, which depends on the locale). A float takes the shortest of half, single
and double precision that holds it exactly (sampling parameters are floats); NaN, infinities,
tags and indefinite lengths are refused both ways.

:func:`loads` accepts only what :func:`dumps` would write (it re-encodes and compares), so a
peer cannot hand us a second encoding of a value whose hash we checked.
"""

from __future__ import annotations

import contextlib
import math
import struct
from typing import Any

import cbor2

from fabstir_sdk.storage.errors import StorageError, TooLarge

#: The largest CBOR value :func:`loads` decodes unless told otherwise (a directory block).
MAX_CBOR = 1 << 20
_MAX_DEPTH = 32


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    if value < 1 << 8:
        return bytes([major << 5 | 24, value])
    if value < 1 << 16:
        return bytes([major << 5 | 25]) + struct.pack(">H", value)
    if value < 1 << 32:
        return bytes([major << 5 | 26]) + struct.pack(">I", value)
    if value < 1 << 64:
        return bytes([major << 5 | 27]) + struct.pack(">Q", value)
    raise StorageError("integer out of CBOR's 64-bit range")


def _float(value: float) -> bytes:
    if not math.isfinite(value):
        raise StorageError("NaN and infinities have no place in stored data")
    for head, fmt in ((0xF9, ">e"), (0xFA, ">f")):
        with contextlib.suppress(OverflowError):
            packed = struct.pack(fmt, value)
            if struct.unpack(fmt, packed)[0] == value:
                return bytes([head]) + packed
    return b"\xfb" + struct.pack(">d", value)


def _encode(value: Any, out: list[bytes], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise StorageError("CBOR value nested too deeply")
    if value is None:
        out.append(b"\xf6")
    elif value is True:
        out.append(b"\xf5")
    elif value is False:
        out.append(b"\xf4")
    elif isinstance(value, int):
        out.append(_head(0, value) if value >= 0 else _head(1, -1 - value))
    elif isinstance(value, float):
        out.append(_float(value))
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out.append(_head(2, len(raw)))
        out.append(raw)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(_head(3, len(raw)))
        out.append(raw)
    elif isinstance(value, list | tuple):
        out.append(_head(4, len(value)))
        for item in value:
            _encode(item, out, depth + 1)
    elif isinstance(value, dict):
        items = sorted((_dumps_at(k, depth + 1), v) for k, v in value.items())
        out.append(_head(5, len(items)))
        for key, item in items:
            out.append(key)
            _encode(item, out, depth + 1)
    else:
        raise StorageError(f"cannot encode {type(value).__name__} in deterministic CBOR")


def _dumps_at(value: Any, depth: int) -> bytes:
    out: list[bytes] = []
    _encode(value, out, depth)
    return b"".join(out)


def dumps(value: Any) -> bytes:
    """The deterministic encoding of ``value`` (int, float, bytes, str, list, dict, bool,
    None)."""
    return _dumps_at(value, 0)


def loads(data: bytes, max_size: int = MAX_CBOR) -> Any:
    """Decode ``data``; raises :class:`StorageError` unless it is exactly one value in our
    deterministic encoding (and :class:`TooLarge` over ``max_size`` bytes)."""
    if len(data) > max_size:
        raise TooLarge(f"CBOR value of {len(data)} bytes (the limit is {max_size})")
    try:
        value = cbor2.loads(data, tag_hook=_no_tags)
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"malformed CBOR: {exc}") from None
    try:
        again = dumps(value)
    except StorageError as exc:
        raise StorageError(f"CBOR outside the deterministic subset: {exc}") from None
    if again != data:
        raise StorageError("CBOR is not in deterministic encoding (or has trailing bytes)")
    return value


def _no_tags(_decoder: Any, tag: Any) -> Any:
    raise StorageError(f"CBOR tag {tag.tag} is not allowed")
