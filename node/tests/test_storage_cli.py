"""`fabstir-node storage` on a real store: inspect it, read from it, find a damaged block,
collect what no tree reaches."""

from __future__ import annotations

import json
from pathlib import Path

from test_cli import cli

from fabstir_sdk.storage.tree import Store


def make_store(data_dir: Path) -> Store:
    store = Store(data_dir / "store")
    store.put("/results/7/000000000000", b"sealed answer")
    store.put("/models/abc/tokenizer.gguf", b"t" * 5000)
    return store


def test_stats_ls_and_cat_read_the_tree(tmp_path: Path) -> None:
    make_store(tmp_path).close()
    stats = json.loads(cli("storage", "stats", "--json", data_dir=tmp_path).stdout)
    assert stats["blocks"] > 0 and stats["revision"] == 2
    listing = cli("storage", "ls", "/", "--json", data_dir=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert {e["name"] for e in json.loads(listing.stdout)["entries"]} == {"results", "models"}
    page = cli("storage", "ls", "/results/7", "--limit", "1", "--json", data_dir=tmp_path)
    [entry] = json.loads(page.stdout)["entries"]
    assert entry["kind"] == "file" and entry["size"] == len(b"sealed answer")
    shown = cli("storage", "cat", "/results/7/000000000000", data_dir=tmp_path)
    assert shown.returncode == 0 and shown.stdout == "sealed answer"
    missing = cli("storage", "cat", "/results/8/x", data_dir=tmp_path)
    assert missing.returncode != 0 and "no such file" in missing.stderr


def test_verify_finds_a_damaged_block_and_gc_frees_old_versions(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.put("/results/7/000000000000", b"a newer answer")  # the old blocks are garbage now
    entry = store.stat("/models/abc/tokenizer.gguf")
    damaged = store.blocks.file_of(entry.ref.content.root)  # type: ignore[union-attr]
    store.close()
    assert cli("storage", "verify", "--json", data_dir=tmp_path).returncode == 0
    damaged.write_bytes(b"u" + damaged.read_bytes()[1:])
    bad = cli("storage", "verify", "--json", data_dir=tmp_path)
    assert bad.returncode == 1 and json.loads(bad.stdout)["ok"] is False

    collected = cli("storage", "gc", "--grace", "0", "--json", data_dir=tmp_path)
    assert collected.returncode == 0, collected.stderr
    assert json.loads(collected.stdout)["deleted_blocks"] > 0
    reopened = Store(tmp_path / "store", read_only=True)
    assert reopened.get("/results/7/000000000000") == b"a newer answer"
    reopened.close()


def test_a_data_dir_without_a_store_is_a_configuration_error(tmp_path: Path) -> None:
    result = cli("storage", "stats", data_dir=tmp_path)
    assert result.returncode == 4 and "no store" in result.stderr
