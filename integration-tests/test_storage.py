"""Storage on the real stack: a session's answers fetched by id after the client went away,
a model installed by a third node from the two hosts sharing it with nothing but the
registry's pin, and the store's figures on /metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from fabstir_devtools.network import ModelSpec
from fabstir_devtools.tiny_gguf import write_tiny_gguf
from fabstir_sdk.storage.content import BLOCK_SIZE

from conftest import Devnet, fabstir, fabstir_node, run

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    """A network whose test model spans several 1 MiB blocks (so two hosts can share it)."""
    root = tmp_path_factory.mktemp("deep")
    model = ModelSpec.gguf(write_tiny_gguf(root / "tiny-deep.gguf", n_layers=20))
    assert Path(model.name).stat().st_size > 3 * BLOCK_SIZE
    with Devnet(root, model) as net:
        yield net


def test_answers_are_fetched_by_session_id_after_the_client_went_away(deep: Devnet) -> None:
    async def main() -> None:
        node = await deep.start_node(1)
        try:
            client = deep.client(4)
            session = await client.open_session(_model(deep))
            first = await session.chat(MESSAGES, max_tokens=12, temperature=0).collect()
            follow_up = [
                *MESSAGES,
                {"role": "assistant", "content": first},
                {"role": "user", "content": "and?"},
            ]
            # 9 tokens: the voucher for the last one comes before `done` (8 per voucher).
            second = await session.chat(follow_up, max_tokens=9, seed=7).collect()
            third = await session.chat(MESSAGES, max_tokens=5, temperature=0).collect()
            await client.close()  # gone: no close, no goodbye; the host stored the answers

            again = deep.client(4)  # the same wallet, a fresh process' worth of state
            try:
                results = await again.results(session.id)
            finally:
                await again.close()
            assert [r.text for r in results] == [first, second, third]
            assert all(r.paid for r in results), [r.reason for r in results]
            assert [len(r.record.completion_ids) for r in results] == [12, 9, 5]
            assert results[1].record.prev == results[0].voucher.transcript_hash  # chained
            assert results[1].record.sampling["seed"] == 7

            # The CLI gives the same, as JSON; another wallet cannot open them.
            shown = await asyncio.to_thread(
                fabstir, deep, "session", "result", str(session.id), "--json", key_index=4
            )
            assert shown.returncode == 0, shown.stderr
            rows = json.loads(shown.stdout)
            assert [r["text"] for r in rows] == [first, second, third]
            assert all(r["paid"] for r in rows)
            stranger = await asyncio.to_thread(
                fabstir, deep, "session", "result", str(session.id), key_index=5
            )
            assert stranger.returncode == 2 and "not opened by" in stranger.stderr
        finally:
            await node.stop()

    run(main())


def _model(devnet: Devnet) -> bytes:
    from fabstir_sdk.models import model_id

    return model_id("local", Path(devnet.model.name).name)


def test_a_third_node_installs_the_model_from_the_two_hosts_sharing_it(
    deep: Devnet, tmp_path: Path
) -> None:
    async def main() -> None:
        hosts = [await deep.start_node(2), await deep.start_node(3)]
        try:
            fetched = await asyncio.to_thread(
                fabstir_node,
                deep,
                "models",
                "fetch",
                "0x" + _model(deep).hex(),
                "--json",
                data_dir=tmp_path,
                timeout=300,
            )
            assert fetched.returncode == 0, fetched.stderr
            report = json.loads(fetched.stdout)
            installed = Path(report["path"])
            assert installed.read_bytes() == Path(deep.model.name).read_bytes()
            assert report["sha256"] == deep.model.sha256 and installed.parent == tmp_path / "models"
            peers = {h.network.host.peer_id for h in hosts if h.network}
            assert set(report["from"].split(", ")) == peers
            # Both hosts served blocks of it.
            assert all(h.storage and h.storage.bitswap.counters.blocks_sent > 0 for h in hosts)

            async with aiohttp.ClientSession() as http:
                assert hosts[0].http is not None
                async with http.get(f"{hosts[0].http.url}/metrics") as response:
                    metrics = await response.text()
            assert "fabstir_storage_blocks " in metrics
            assert "fabstir_bitswap_blocks_sent " in metrics
        finally:
            for host in hosts:
                await host.stop()

    run(main())
