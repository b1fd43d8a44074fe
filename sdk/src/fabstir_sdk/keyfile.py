"""Private keys from files, the environment or standard input, never from a command line
(every user of the machine sees a process's arguments in ``ps``).

A key file holds one secp256k1 private key as 64 hex digits (``0x`` optional, surrounding
whitespace ignored) and must be readable by its owner only (mode 0600 or 0400), as ssh insists
for its keys: a file others can read is refused before it is read. Errors are
:class:`~fabstir_sdk.errors.ConfigurationError` (exit 4) and never repeat the key.
"""

from __future__ import annotations

import os
import stat
import string
from pathlib import Path

from fabstir_sdk.errors import ConfigurationError

__all__ = ["check_private_file", "parse_private_key", "read_key_file"]

#: Permission bits a secret file must not have: any access for group or others.
LOOSE_BITS = 0o077


def parse_private_key(text: str, source: str) -> str:
    """``text`` as a 0x-prefixed lowercase hex private key; ``source`` names where it came
    from in the error (the key itself is never shown)."""
    key = text.strip()
    body = key[2:] if key[:2].lower() == "0x" else key
    if len(body) != 64 or any(c not in string.hexdigits for c in body):
        raise ConfigurationError(
            f"{source} does not hold a private key: expected 64 hex digits (0x optional)"
        )
    value = int(body, 16)
    # secp256k1: a key is 1 .. n-1 (eth_account would say so with the key in the message).
    if not 0 < value < 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141:
        raise ConfigurationError(f"{source} holds a number that is not a valid private key")
    return "0x" + body.lower()


def check_private_file(path: Path) -> None:
    """Refuse a secret file that is missing, not a regular file, or open to group/others."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigurationError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read key file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigurationError(f"key file {path} is not a regular file")
    if os.name == "posix" and st.st_mode & LOOSE_BITS:
        raise ConfigurationError(
            f"key file {path} is accessible by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"refusing to use it: run `chmod 600 {path}`"
        )


def read_key_file(path: str | Path) -> str:
    """The private key in ``path`` (checked as above)."""
    path = Path(path).expanduser()
    check_private_file(path)
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        raise ConfigurationError(f"cannot read key file {path}: {reason}") from None
    return parse_private_key(text, f"key file {path}")
