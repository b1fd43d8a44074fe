"""The node's keys on disk: created private (0700 directories, 0600 files, whatever the umask),
and refused on load when others may read them or they are not in their format."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fabstir_node.errors import EXIT_CONFIG, KeysError
from fabstir_node.keys import create_keys, load_keys

KEY = "0x" + "4c" * 32

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@posix_only
def test_created_private_whatever_the_umask(tmp_path: Path) -> None:
    data_dir = tmp_path / "deep" / "node"
    old = os.umask(0)  # the most permissive umask: the modes must not depend on it
    try:
        keys = create_keys(data_dir, KEY)
    finally:
        os.umask(old)
    assert keys.account.key.hex().removeprefix("0x") == KEY[2:]
    assert mode(data_dir) == 0o700 and mode(data_dir / "keys") == 0o700
    assert mode(data_dir / "keys" / "eth.key") == 0o600
    assert mode(data_dir / "keys" / "p2p.key") == 0o600
    assert load_keys(data_dir).peer_id == keys.peer_id


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    create_keys(tmp_path)
    with pytest.raises(KeysError, match="refusing to overwrite"):
        create_keys(tmp_path)


def test_an_imported_key_in_the_wrong_format_is_refused_without_echo(tmp_path: Path) -> None:
    with pytest.raises(KeysError) as info:
        create_keys(tmp_path, "0x1234-secret-ish")
    assert "secret" not in str(info.value)
    assert not (tmp_path / "keys" / "eth.key").exists()


@posix_only
@pytest.mark.parametrize("name", ["eth.key", "p2p.key"])
@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_others_may_read_is_refused(tmp_path: Path, name: str, loose: int) -> None:
    create_keys(tmp_path, KEY)
    path = tmp_path / "keys" / name
    path.chmod(loose)
    with pytest.raises(KeysError, match="chmod 600") as info:
        load_keys(tmp_path)
    assert info.value.exit_code == EXIT_CONFIG
    assert KEY[2:] not in str(info.value)
    path.chmod(0o400)  # read-only for the owner is fine
    load_keys(tmp_path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("eth.key", b"not hex at all\n", "64 hex digits"),
        ("eth.key", b"0x" + b"00" * 32, "not a valid private key"),
        ("eth.key", b"\xff\xfe", "cannot read"),
        ("p2p.key", b"short", "must hold 32 bytes"),
    ],
)
def test_a_key_file_in_the_wrong_format_is_refused(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    create_keys(tmp_path, KEY)
    path = tmp_path / "keys" / name
    path.write_bytes(content)
    with pytest.raises(KeysError, match=message):
        load_keys(tmp_path)


def test_missing_keys_say_how_to_make_them(tmp_path: Path) -> None:
    with pytest.raises(KeysError, match="fabstir-node init"):
        load_keys(tmp_path)
