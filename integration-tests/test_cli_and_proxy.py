"""The real CLIs as subprocesses against a devnet, and the stock OpenAI client through the
paying proxy."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import openai

from fabstir_devtools.chain import anvil_account, free_port
from fabstir_devtools.wait import wait_until

from conftest import PRICE, Devnet, fabstir, node_status, run

MODEL = "local/tiny.gguf"


def test_fabstir_cli_hosts_chat_sessions_and_node_status(devnet: Devnet) -> None:
    async def main() -> None:
        node = await devnet.start_node(1)
        try:
            listed = await asyncio.to_thread(fabstir, devnet, "hosts", "--model", MODEL, "--json")
            assert listed.returncode == 0, listed.stderr
            [host] = json.loads(listed.stdout)
            assert host["address"] == node.keys.account.address and host["price"] == PRICE
            # Load and speed come from the host over the info protocol, not from gossip.
            assert host["reachable"] is True and host["last_seen"] is not None
            assert host["load"] == 0 and host["tokens_per_second"] is not None

            answer = await asyncio.to_thread(
                fabstir,
                devnet,
                "chat",
                "--model",
                MODEL,
                "-p",
                "hello",
                "--max-tokens",
                "12",
                "--temperature",
                "0",
            )
            assert answer.returncode == 0, answer.stderr
            assert answer.stdout.strip() and "[settled: paid" in answer.stderr

            sessions = await asyncio.to_thread(fabstir, devnet, "session", "list", "--json")
            assert [s["status"] for s in json.loads(sessions.stdout)] == ["settled"]

            # The same question twice with --cache own: the second answer is the host's cached
            # one (same wallet, new session), billed at its cache rate.
            ask = ("chat", "--model", MODEL, "-p", "hello", "--max-tokens", "12")
            ask += ("--temperature", "0", "--cache", "own")
            first = await asyncio.to_thread(fabstir, devnet, *ask)
            assert first.returncode == 0 and "from the host's cache" not in first.stderr
            assert node.cache is not None
            cache = node.cache
            await asyncio.to_thread(wait_until, lambda: cache.counters.inserts == 1, 60, "a cache")
            second = await asyncio.to_thread(fabstir, devnet, *ask)
            assert second.returncode == 0, second.stderr
            assert "from the host's cache: similarity 1.0" in second.stderr
            assert second.stdout == first.stdout

            none = await asyncio.to_thread(
                fabstir, devnet, "hosts", "--model", "org/none.gguf", "--json"
            )
            assert none.returncode == 0 and json.loads(none.stdout) == []
            nokey = subprocess.run(  # `hosts` only reads: `chat` is what needs a wallet
                [sys.executable, "-m", "fabstir_sdk", "chat", "-m", MODEL, "-p", "hi"],
                capture_output=True,
                text=True,
                env={k: v for k, v in os.environ.items() if not k.startswith("FABSTIR_")},
            )
            assert nokey.returncode == 4 and "FABSTIR_KEY" in nokey.stderr
        finally:
            await node.stop()

        report = await asyncio.to_thread(node_status, devnet, node.config.data_dir)
        assert report["registered"] and report["sessions_settled"] == 3
        assert report["pending_settlements"] == 0 and report["earnings_wei"] > 0

    run(main())


QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_openai_client_through_the_paying_proxy(devnet: Devnet) -> None:
    port = free_port()

    async def main() -> None:
        node = await devnet.start_node(2)
        env = {
            **os.environ,
            "FABSTIR_RPC_URL": devnet.anvil.url,
            "FABSTIR_DEPLOYMENT": str(devnet.deployment_path),
            "FABSTIR_KEY": anvil_account(6).key.hex(),
        }
        proxy = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fabstir_sdk",
            "proxy",
            "--port",
            str(port),
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            assert proxy.stderr is not None
            line = await asyncio.wait_for(proxy.stderr.readline(), 60)
            assert b"gateway on" in line
            client = openai.AsyncOpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0
            )
            reply = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=9,
                temperature=0,
            )
            assert reply.choices[0].message.content
            assert reply.usage is not None and reply.usage.completion_tokens == 9
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=9,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            text, usage = "", None
            async for chunk in stream:
                usage = chunk.usage or usage
                text += "".join(c.delta.content or "" for c in chunk.choices)
            assert text == reply.choices[0].message.content
            assert usage is not None and usage.total_tokens == reply.usage.total_tokens
            # usage equals what was billed: the session's billed tokens are the two answers
            sessions = node.journal.sessions() if node.journal else []
            billed = [s.billed_tokens for s in sessions]
            assert billed == [reply.usage.total_tokens + usage.total_tokens]

            # An HTTP client that hangs up mid-answer: the host is told to stop, what it sent
            # is vouched for, and the same session serves the next request.
            assert node.sessions is not None
            cancelled = node.sessions.engine.cancelled_jobs
            long = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "go on"}],
                max_tokens=400,
                temperature=0,
                stream=True,
            )
            async for _chunk in long:
                break
            await long.close()
            await asyncio.to_thread(
                wait_until,
                lambda: node.sessions is not None
                and node.sessions.engine.cancelled_jobs > cancelled,
                60,
                "the host to cancel the abandoned answer",
            )
            again = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=5,
                temperature=0,
            )
            assert again.usage is not None and again.usage.completion_tokens == 5

            # The cache extension passes through the proxy, both ways.
            own = {"fabstir": {"cache": "own"}}
            fresh = await client.chat.completions.create(
                model=MODEL, messages=QUESTION, max_tokens=6, temperature=0, extra_body=own
            )
            assert not (fresh.model_extra or {}).get("fabstir")
            cache = node.cache
            assert cache is not None
            await asyncio.to_thread(wait_until, lambda: cache.counters.inserts == 1, 60, "a cache")
            hit = await client.chat.completions.create(
                model=MODEL, messages=QUESTION, max_tokens=6, temperature=0, extra_body=own
            )
            assert (hit.model_extra or {})["fabstir"]["cached"] is True
            assert hit.choices[0].message.content == fresh.choices[0].message.content

            # The last voucher leaves the proxy before its HTTP response does, but may reach
            # the host's journal just after it: wait for it.
            def all_vouched() -> bool:
                [journaled] = node.journal.sessions() if node.journal else []
                best = journaled.best
                return best is not None and best.cumulative_tokens == journaled.billed_tokens

            await asyncio.to_thread(wait_until, all_vouched, 60, "the last voucher")
        finally:
            proxy.terminate()
            await proxy.wait()
            await node.stop()

    run(main())
