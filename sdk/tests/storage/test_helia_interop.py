"""Bitswap against another implementation, both ways: helia (js-libp2p, from npm) on
127.0.0.1, driven through `devtools/js/helia_peer.mjs`. Our engine fetches raw blocks helia
holds (BLAKE3 and sha2-256, each checked by its hash), and helia fetches the blocks our node
published, whoever dialed, and gets nothing it did not publish."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabstir_sdk.p2p import P2PHost
from fabstir_sdk.storage.bitswap import Bitswap
from fabstir_sdk.storage.blobs import blake3_256, cid_of, multibase_decode
from fabstir_sdk.storage.tree import Store

ROOT = Path(__file__).resolve().parents[3]
PEER_SCRIPT = ROOT / "devtools" / "js" / "helia_peer.mjs"

pytestmark = pytest.mark.skipif(
    not (ROOT / "node_modules" / "helia").is_dir() or shutil.which("node") is None,
    reason="helia is not installed (make setup installs it from npm)",
)


class Helia:
    """The helia peer process: one JSON command a line in, one JSON answer a line out."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            ["node", str(PEER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        hello = self._line()
        self.peer_id: str = hello["peer_id"]
        self.addrs: list[str] = hello["addrs"]

    def _line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "the helia peer exited"
        return dict(json.loads(line))

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        answer = self._line()
        assert "error" not in answer, answer["error"]
        return answer

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def helia() -> Iterator[Helia]:
    peer = Helia()
    yield peer
    peer.close()


def test_we_fetch_blake3_and_sha256_blocks_from_helia(helia: Helia, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    blake3_cid = helia.ask(put=data.hex(), hash="blake3")["cid"]
    sha_cid = helia.ask(put=b"a sha2-256 block".hex(), hash="sha2-256")["cid"]
    assert blake3_cid.startswith("bafkr4i")  # raw, blake3: the CID IPFS tools print

    async def main() -> None:
        store = Store(tmp_path / "s")
        host = P2PHost(secrets.token_bytes(32))
        bitswap = Bitswap(host, store.blocks, served=lambda _h: False)
        await host.start()
        try:
            await host.connect(helia.peer_id, helia.addrs)
            got = await bitswap.get(helia.peer_id, multibase_decode(blake3_cid), timeout=30)
            assert got == data and store.blocks.get(blake3_256(data)) == data
            assert await bitswap.get(helia.peer_id, multibase_decode(sha_cid)) == (
                b"a sha2-256 block"
            )
        finally:
            await host.stop()
            store.close()

    asyncio.run(main())


@pytest.mark.parametrize("who_dials", ["we", "helia"])
def test_helia_fetches_blocks_we_publish(helia: Helia, tmp_path: Path, who_dials: str) -> None:
    async def main() -> None:
        store = Store(tmp_path / "s")
        host = P2PHost(secrets.token_bytes(32))
        Bitswap(host, store.blocks, served=lambda h: store.blocks.refs(h) > 0)
        await host.start()
        try:
            published = store.put("/x", os.urandom(200_000), compress=None)
            secret = store.blocks.put(b"stored, never published")
            if who_dials == "we":
                await host.connect(helia.peer_id, helia.addrs)
            else:
                addr = host.addrs[0]
                if "/p2p/" not in addr:
                    addr += f"/p2p/{host.peer_id}"
                await asyncio.to_thread(helia.ask, dial=addr)
            # helia's answers block: ask from a thread, so our host keeps serving meanwhile.
            got = await asyncio.to_thread(
                helia.ask, get=cid_of(published.ref.content.root), timeout_ms=30_000
            )
            assert bytes.fromhex(got["hex"]) == store.get("/x")
            with pytest.raises(AssertionError, match=r"(?i)fail|abort|timeout"):
                await asyncio.to_thread(helia.ask, get=cid_of(secret), timeout_ms=3_000)
        finally:
            await host.stop()
            store.close()

    asyncio.run(main())
