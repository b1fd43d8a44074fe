"""What the content-addressed store raises. Everything read from disk or the wire is checked;
each way a check can fail has its own class, so a caller can tell a missing block (fetch it)
from a lying peer (drop it) from a stale root (keep the newer one)."""

from __future__ import annotations

from fabstir_sdk.errors import FabstirError


class StorageError(FabstirError):
    """Root of the storage errors: malformed data, a refused operation."""

    exit_code = 6


class NotFound(StorageError, KeyError):
    """No block with that hash, or no entry at that path."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class CorruptBlock(StorageError):
    """Bytes whose hash is not the one they were asked for (a damaged file, a lying peer)."""


class TooLarge(StorageError):
    """Data over a bound (a block over 1 MiB, a CBOR value over its limit)."""


class StaleRoot(StorageError):
    """A registry entry older than one already seen for the same key."""


class ForgedRoot(StorageError):
    """A registry entry whose signature does not verify for its key."""
