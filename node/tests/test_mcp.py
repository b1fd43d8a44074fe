"""The MCP server through the SDK's own client over streamable HTTP, on a real store with the
real embedding model: the tools, the privacy rule (a client's private cached answers never
come out), tool errors for bad input, and the bearer token off loopback's defaults."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.client import ClientSession
from mcp.client.streamable_http import streamable_http_client

from fabstir_devtools.chain import free_port
from fabstir_node.cache.keys import Sampling, request_key
from fabstir_node.cache.semantic import CachePolicy, SemanticCache
from fabstir_node.documents import DocumentIndex
from fabstir_node.embeddings import Embedder
from fabstir_node.errors import ConfigError
from fabstir_node.mcp_server import build_mcp_server, serve_mcp
from fabstir_node.storage import StoreFiles
from fabstir_sdk.storage.blobs import blake3_256, cid_of
from fabstir_sdk.storage.tree import Store

MODEL = bytes(32)
TOKEN = "s3cret-token-for-tests"


async def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {port}") from None
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return


class Node:
    def __init__(self, store: Store, embedder: Embedder, token: str | None) -> None:
        files = StoreFiles(store)
        self.store = store
        self.cache = SemanticCache(files, embedder)
        self.documents = DocumentIndex(files, embedder)
        self.server = build_mcp_server(
            cache=self.cache, documents=self.documents, storage=files, token=token
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    async def remember(self, question: str, answer: str, client: str, share: bool) -> None:
        key = request_key(MODEL, [{"role": "user", "content": question}], Sampling(0.0))
        assert key is not None
        policy = CachePolicy("own", share=share)
        assert await self.cache.insert(key, MODEL, client, policy, [1, 2, 3], answer)


@asynccontextmanager
async def running(
    store: Store, embedder: Embedder, token: str | None = None
) -> AsyncIterator[Node]:
    node = Node(store, embedder, token)
    await node.cache.start()
    await node.documents.start()
    serving = asyncio.ensure_future(serve_mcp(node.server, "127.0.0.1", node.port, token))
    try:
        await wait_for_port(node.port)
        yield node
    finally:
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        await node.cache.close()


@asynccontextmanager
async def session(url: str, token: str | None = None) -> AsyncIterator[ClientSession]:
    import httpx2

    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        yield client


async def call(client: ClientSession, tool: str, **arguments: Any) -> Any:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    return result.structured_content


async def error_of(client: ClientSession, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error
    text: str = result.content[0].text  # type: ignore[union-attr]
    return text


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "store") as opened:
        yield opened


def test_the_tools_are_listed(store: Store, embedder: Embedder) -> None:
    async def scenario() -> None:
        async with running(store, embedder) as node, session(node.url) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == {"search_cache", "search_documents", "add_document", "read_result"}
            k = tools["search_cache"].input_schema["properties"]["k"]
            assert (k["minimum"], k["maximum"], k["default"]) == (1, 50, 5)
            assert "shared" in (tools["search_cache"].description or "")

    asyncio.run(scenario())


def test_a_document_is_found_by_a_paraphrase(store: Store, embedder: Embedder) -> None:
    async def scenario() -> None:
        async with running(store, embedder) as node, session(node.url) as client:
            texts = {
                "oven": "Preheat the oven to 200 degrees before baking the bread.",
                "rent": "The rent is due on the first day of every month.",
                "cat": "Our cat sleeps most of the afternoon on the sofa.",
            }
            ids = {}
            for title, text in texts.items():
                added = await call(client, "add_document", text=text, title=title)
                assert added["path"] == f"/documents/entries/{added['id']}"
                ids[title] = added["id"]
            found = await call(
                client, "search_documents", query="When do I have to pay the landlord?", k=3
            )
            results = found["results"]
            assert results[0]["title"] == "rent"
            assert results[0]["id"] == ids["rent"] and results[0]["text"] == texts["rent"]
            assert results[0]["similarity"] > results[1]["similarity"] >= results[2]["similarity"]
            assert store.exists(f"/documents/entries/{ids['rent']}")
            await node.documents.save()

        again = DocumentIndex(StoreFiles(store), embedder)  # a restart: nothing re-embedded
        before = embedder.embedded
        await again.start()
        assert embedder.embedded == before and len(again) == 3 and len(again.index) == 3

    asyncio.run(scenario())


def test_search_cache_returns_shared_answers_only(store: Store, embedder: Embedder) -> None:
    async def scenario() -> None:
        async with running(store, embedder) as node, session(node.url) as client:
            await node.remember("How do I boil an egg?", "Boil it 8 minutes.", "0xa", True)
            await node.remember("How long should I boil an egg?", "PRIVATE", "0xb", False)
            await node.remember("What is the capital of Peru?", "Lima.", "0xa", True)
            found = await call(client, "search_cache", query="egg boiling time", k=5)
            results = found["results"]
            assert [r["answer"] for r in results] == ["Boil it 8 minutes.", "Lima."]
            assert results[0]["question"] == "How do I boil an egg?"
            assert results[0]["model"] == MODEL.hex()
            shared = [e for e in node.cache.entries.values() if e.shared]
            assert {r["id"] for r in results} == {e.id for e in shared}
            assert 0 < results[1]["similarity"] < results[0]["similarity"] <= 1
            # /cache/ (private answers included) is not readable either.
            private = next(e for e in node.cache.entries.values() if not e.shared)
            assert "not readable" in await error_of(client, "read_result", path=private.path)

    asyncio.run(scenario())


def test_read_result_returns_a_stored_file(store: Store, embedder: Embedder) -> None:
    async def scenario() -> None:
        sealed = bytes(range(256)) * 3
        store.put("/results/7/000000000000", sealed, compress=None)
        store.put("/results/7/note.txt", "héllo".encode())
        async with running(store, embedder) as node, session(node.url) as client:
            got = await call(client, "read_result", path="/results/7/000000000000")
            assert got["encoding"] == "base64" and got["size"] == len(sealed)
            assert got["cid"] == cid_of(blake3_256(sealed))
            assert got["content"] == base64.b64encode(sealed).decode()
            text = await call(client, "read_result", path="results/7/note.txt")
            assert (text["encoding"], text["content"]) == ("utf-8", "héllo")
            assert "no file" in await error_of(client, "read_result", path="/results/8/x")
            assert "directory" in await error_of(client, "read_result", path="/results/7")

    asyncio.run(scenario())


def test_bad_input_is_a_tool_error(store: Store, embedder: Embedder) -> None:
    async def scenario() -> None:
        async with running(store, embedder) as node, session(node.url) as client:
            too_few = await error_of(client, "search_documents", query="x", k=0)
            assert "greater than or equal to 1" in too_few
            too_many = await error_of(client, "search_cache", query="x", k=51)
            assert "less than or equal to 50" in too_many
            assert "empty" in await error_of(client, "search_cache", query="  ")
            assert "empty" in await error_of(client, "add_document", text="")
            assert "bad path" in await error_of(client, "read_result", path="/a/../b")
            # ...and the server still answers.
            assert (await call(client, "search_documents", query="anything"))["results"] == []

    asyncio.run(scenario())


def test_a_token_is_required_when_set(store: Store, embedder: Embedder) -> None:
    async def scenario() -> None:
        async with running(store, embedder, TOKEN) as node:
            hello = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "0"},
                },
            }
            headers = {"Accept": "application/json, text/event-stream"}
            async with httpx.AsyncClient(timeout=30) as http:
                for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                    refused = await http.post(node.url, json=hello, headers=headers | auth)
                    assert refused.status_code == 401, auth
                    assert refused.headers["www-authenticate"].startswith("Bearer")
                right = {"Authorization": f"Bearer {TOKEN}"}
                answer = await http.post(node.url, json=hello, headers=headers | right)
                assert answer.status_code == 200
                rebound = headers | right | {"Host": f"evil.example:{node.port}"}
                assert (await http.post(node.url, json=hello, headers=rebound)).status_code == 421
            async with session(node.url, TOKEN) as client:
                added = await call(client, "add_document", text="Tokens keep strangers out.")
                assert len(added["id"]) == 16

    asyncio.run(scenario())


def test_off_loopback_a_token_is_required(store: Store, embedder: Embedder) -> None:
    async def scenario() -> None:
        node = Node(store, embedder, None)
        with pytest.raises(ConfigError, match="needs a token"):
            await serve_mcp(node.server, "0.0.0.0", node.port)
        with pytest.raises(ConfigError):  # a token the server was not built with
            await serve_mcp(node.server, "0.0.0.0", node.port, TOKEN)

    asyncio.run(scenario())
    files = StoreFiles(store)
    with pytest.raises(ConfigError, match="token"):
        build_mcp_server(
            cache=None, documents=DocumentIndex(files, embedder), storage=files, token=""
        )


def mcp_command(data_dir: Path, *args: str, token: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "FABSTIR_MCP_TOKEN"}
    if token is not None:
        env["FABSTIR_MCP_TOKEN"] = token
    command = [sys.executable, "-m", "fabstir_node", "mcp", "--data-dir", str(data_dir), *args]
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)


def test_the_mcp_command(tmp_path: Path, embedder: Embedder) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / embedder.path.name).symlink_to(embedder.path)  # no second conversion
    refused = mcp_command(tmp_path, "--host", "0.0.0.0")
    _, complaint = refused.communicate(timeout=60)
    assert refused.returncode == 4 and "needs a token" in complaint
    port = free_port()
    served = mcp_command(tmp_path, "--host", "0.0.0.0", "--port", str(port), token=TOKEN)

    async def scenario() -> None:
        await wait_for_port(port, 60)
        async with session(f"http://127.0.0.1:{port}/mcp", TOKEN) as client:
            await call(client, "add_document", text="The MCP command serves the store.")
            found = await call(client, "search_documents", query="what does the command serve?")
            assert found["results"][0]["text"] == "The MCP command serves the store."

    try:
        asyncio.run(scenario())
    finally:
        served.send_signal(signal.SIGINT)
        try:
            _, log = served.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            served.kill()
            raise
    assert served.returncode == 0 and "stopped" in log, log
    with Store(tmp_path / "store") as store:  # the index was saved at exit
        assert store.exists("/documents/index/model")
