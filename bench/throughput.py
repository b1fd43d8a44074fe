"""Throughput under concurrent streams, against raw llama-cpp-python and llama.cpp's own server.

One run measures, for SmolLM2-135M-Instruct (greedy, same machine):

1. baseline: one raw llama-cpp-python stream, tokens/s with 1 and with 2 threads (the better
   of the two is the baseline);
2. node: ``fabstir-node serve --parallel 8 --threads 1 --threads-batch 2``, N concurrent
   streaming chat completions (a different prompt each): aggregate tokens/s (completion tokens
   / wall time from the first request to the last stream's end), its ratio to the baseline
   (goal at 8 streams: >= 2.0x) and the p95 time to first token over every stream;
3. anchor: llama.cpp's ``llama-server``, built from the source distribution of the installed
   llama-cpp-python (cached in .build/llama-server/), with the same streams; goal: node >= 0.9x
   it at every N;
4. the first request after the node starts: its time to first token (the node warms the
   model up before it says it is ready);
5. the second turn of a ~1,500-token conversation on the in-process ``Engine``, with and
   without its per-conversation KV cache: time to first token and speed-up (goal >= 5x);
6. greedy answers generated in batches of 8 and alone: how many are identical, and where
   the others part, how close the model's top two choices were there (in logits).

Runs alternate the order of what they compare, to spread this shared machine's noise; figures
are medians over --runs.

    .venv/bin/python bench/throughput.py [--runs 3] [--max-tokens 128] [--streams 1,2,4,8]
                                         [--no-anchor] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from fabstir_devtools.chain import free_port
from fabstir_devtools.divergence import divergence
from fabstir_devtools.network import ApiProcess
from fabstir_devtools.wait import wait_until
from fabstir_node.generation import Finished, SamplingParams, TokenChunk
from fabstir_node.inference import Engine
from fabstir_node.models import resolve
from fabstir_sdk.audit import GREEDY_TOLERANCE

# (Importing fabstir_node set OMP_WAIT_POLICY and GOMP_SPINCOUNT, before anything loaded
# llama.cpp; the servers get this environment too.)

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
PARALLEL = 8
THREADS, THREADS_BATCH = 1, 2
PROMPT = "Write a long story about lighthouse keeper number {}."
WARMUP_TOKENS = 16
BUILD_TIMEOUT_S = 600.0
CMAKE_FLAGS = (
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX=ON",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DCMAKE_BUILD_TYPE=Release",
)
#: Greedy answers compared between a batch and alone.
BATCHED_ANSWERS = 16
# Second-turn test: first-turn prompt size, turn lengths, engine shape.
LONG_PROMPT = (1400, 1600)
TURN1_TOKENS, TURN2_TOKENS = 32, 16
FOLLOW_UP = "Now summarise that in one sentence."


def log(message: str) -> None:
    """Progress, on stderr (stdout holds only the results)."""
    print(message, file=sys.stderr, flush=True)


def p95(values: Sequence[float]) -> float:
    """Nearest-rank 95th percentile."""
    ranked = sorted(values)
    return ranked[max(0, math.ceil(0.95 * len(ranked)) - 1)]


# --------------------------------------------------------------------------- measurements


@dataclass
class Burst:
    """N concurrent streams: completion tokens, wall time, each stream's first-token time."""

    tokens: int
    wall_s: float
    ttfts_s: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


@dataclass
class Target:
    """An OpenAI-compatible server under test and its bursts, by stream count."""

    name: str
    url: str
    bursts: dict[int, list[Burst]] = field(default_factory=dict)
    first_ttft_s: float = math.nan  # of the very first request it served

    def ttft_median_ms(self, n: int) -> float:
        return statistics.median(t for b in self.bursts[n] for t in b.ttfts_s) * 1000

    def tokens_per_s(self, n: int) -> float:
        return statistics.median(b.tokens_per_s for b in self.bursts[n])

    def ttft_p95_ms(self, n: int) -> float:
        return p95([t for b in self.bursts[n] for t in b.ttfts_s]) * 1000


def raw_tokens_per_s(llm: Any, prompt: int, max_tokens: int) -> float:
    """One greedy stream of raw llama-cpp-python; tokens counted one per content chunk."""
    messages = [{"role": "user", "content": PROMPT.format(prompt)}]
    start, tokens = time.perf_counter(), 0
    for chunk in llm.create_chat_completion(
        messages=messages, temperature=0, max_tokens=max_tokens, stream=True
    ):
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            tokens += 1
    return tokens / (time.perf_counter() - start)


async def stream(
    client: httpx.AsyncClient, url: str, prompt: int, max_tokens: int
) -> tuple[int, float]:
    """One streaming chat completion: (completion tokens, seconds to the first content)."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT.format(prompt)}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first: float | None = None
    chunks, usage = 0, None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"{url}: HTTP {response.status_code}: {response.text[:500]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                usage = data["usage"]["completion_tokens"]
            choices = data.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                chunks += 1
                first = first if first is not None else time.perf_counter() - start
    return (chunks if usage is None else usage), (first if first is not None else math.nan)


async def burst(url: str, n: int, first_prompt: int, max_tokens: int) -> Burst:
    """N concurrent streams on fresh connections (a kept-alive one may have been closed by the
    server while the raw streams ran)."""
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=n)) as client:
        start = time.perf_counter()
        results = await asyncio.gather(
            *(stream(client, url, first_prompt + i, max_tokens) for i in range(n))
        )
        wall = time.perf_counter() - start
    return Burst(sum(r[0] for r in results), wall, [r[1] for r in results])


async def compare(
    raws: dict[int, Any], targets: list[Target], streams: list[int], runs: int, max_tokens: int
) -> dict[int, list[float]]:
    """Each run: the raw streams, then every stream count on every target, orders alternating.
    Fills the targets' bursts; returns the raw tokens/s by thread count."""
    raw: dict[int, list[float]] = {threads: [] for threads in raws}
    for target in targets:  # the first request after start: does a client pay a cold start?
        target.first_ttft_s = (await burst(target.url, 1, -200, WARMUP_TOKENS)).ttfts_s[0]
    for llm in raws.values():
        raw_tokens_per_s(llm, -1, WARMUP_TOKENS)
    for target in targets:
        await burst(target.url, max(streams), -100, WARMUP_TOKENS)
    for run in range(runs):
        log(f"run {run + 1}/{runs}")
        prompt = run * sum(streams)  # every request of a run has its own prompt
        for threads in sorted(raws, reverse=bool(run % 2)):  # the run's 1-stream prompt
            raw[threads].append(raw_tokens_per_s(raws[threads], prompt, max_tokens))
        for i, n in enumerate(streams):
            for target in targets if (run + i) % 2 == 0 else targets[::-1]:
                result = await burst(target.url, n, prompt, max_tokens)
                target.bursts.setdefault(n, []).append(result)
            prompt += n
    return raw


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def node_server(n_ctx: int) -> Iterator[str]:
    node = ApiProcess(
        *("--model", MODEL, "--port", "0", "--parallel", str(PARALLEL)),
        *("--threads", str(THREADS), "--threads-batch", str(THREADS_BATCH)),
        *("--n-ctx", str(n_ctx)),
        env=dict(os.environ),
    )
    node.start()
    try:
        yield node.url
    finally:
        node.stop()


class AnchorError(Exception):
    """Why llama-server could not be built or started."""


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    """End a process started in its own session, and its children (make, compilers)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _step(what: str, command: list[str], deadline: float) -> None:
    """Run one build step within what is left of the build's time budget."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise AnchorError(f"{what}: the {BUILD_TIMEOUT_S / 60:.0f}-minute build budget ran out")
    try:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    except OSError as exc:
        raise AnchorError(f"{what}: cannot run {command[0]}: {exc}") from None
    try:
        output, _ = proc.communicate(timeout=left)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise AnchorError(
            f"{what}: still running when the {BUILD_TIMEOUT_S / 60:.0f}-minute build budget ran out"
        ) from None
    except BaseException:
        _kill_group(proc)
        raise
    if proc.returncode != 0:
        raise AnchorError(f"{what} failed (exit status {proc.returncode}):\n{_tail(output)}")


def build_llama_server(cache: Path, version: str) -> float:
    """Download llama-cpp-python ``version``'s sources, build the llama-server of its vendored
    llama.cpp, keep its bin/ in ``cache/version``; returns the seconds it took."""
    started = time.monotonic()
    deadline = started + BUILD_TIMEOUT_S
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix="build-") as tmp:
        work = Path(tmp)
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        _step("pip download", [*pip, f"llama-cpp-python=={version}", "-d", str(work)], deadline)
        tarball = next(work.glob("llama_cpp_python-*.tar.gz"), None)
        if tarball is None:
            raise AnchorError(f"pip download left no llama_cpp_python-*.tar.gz in {work}")
        with tarfile.open(tarball) as tar:
            tar.extractall(work, filter="data")
        source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"), None)
        if source is None or not (source / "CMakeLists.txt").is_file():
            raise AnchorError(f"{tarball.name} has no vendor/llama.cpp source tree")
        build = source / "build"
        _step(
            "cmake configure",
            ["cmake", "-S", str(source), "-B", str(build), *CMAKE_FLAGS],
            deadline,
        )
        _step(
            "cmake build",
            ["cmake", "--build", str(build), "--target", "llama-server", "-j2"],
            deadline,
        )
        if not (build / "bin" / "llama-server").is_file():
            raise AnchorError("the build succeeded but left no bin/llama-server")
        staged = work / "bin"
        shutil.copytree(build / "bin", staged, symlinks=True)
        home = cache / version
        home.mkdir(exist_ok=True)
        staged.rename(home / "bin")  # complete or absent, never half there
    seconds = time.monotonic() - started
    (cache / version / "build.json").write_text(
        json.dumps({"llama_cpp_python": version, "build_s": round(seconds, 1)}) + "\n"
    )
    return seconds


def llama_server_binary(cache: Path, version: str) -> tuple[Path, float | None, bool]:
    """The cached llama-server for ``version`` or a fresh build: (binary, build seconds when
    known, whether it was built now)."""
    binary = cache / version / "bin" / "llama-server"
    if binary.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError):
            info = json.loads((cache / version / "build.json").read_text())
            return binary, float(info["build_s"]), False
        return binary, None, False
    return binary, build_llama_server(cache, version), True


def _wait_healthy(proc: subprocess.Popen[Any], url: str, output: Path, timeout: float) -> None:
    def healthy() -> bool:
        if proc.poll() is not None:
            raise AnchorError(
                f"llama-server exited with {proc.returncode}:\n{_tail(output.read_text())}"
            )
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        return False

    try:
        wait_until(healthy, timeout, "llama-server to be healthy", interval=0.2)
    except TimeoutError:
        raise AnchorError(
            f"llama-server not healthy after {timeout:.0f} s:\n{_tail(output.read_text())}"
        ) from None


@contextlib.contextmanager
def llama_server(binary: Path, model: Path) -> Iterator[str]:
    """llama-server on a free port, killed on the way out."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    libraries = os.pathsep.join(
        p for p in (str(binary.parent), os.environ.get("LD_LIBRARY_PATH")) if p
    )
    env = {**os.environ, "LD_LIBRARY_PATH": libraries}  # its libllama etc. sit next to it
    command = [str(binary), "-m", str(model), "--parallel", str(PARALLEL), "-c", "16384"]
    command += ["-t", str(THREADS), "-tb", str(THREADS_BATCH)]
    command += ["--port", str(port), "--host", "127.0.0.1"]
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "llama-server.log"
        with output.open("w") as sink:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            _wait_healthy(proc, url, output, timeout=120)
            yield url
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# --------------------------------------------------------------------------- second turn


SUBJECTS = ("The keeper", "A fisherman", "The old pilot", "Her brother", "The harbour master")
ACTIONS = ("repaired", "counted", "painted", "described", "carried", "forgot", "studied")
OBJECTS = ("the brass lamp", "seven gulls", "a torn map", "the winter log", "the signal flags")
PLACES = ("on the north pier", "below the cliffs", "in the village", "beside the reef")
TIMES = ("at dawn", "before the storm", "in 1893", "after supper", "every Tuesday")


def filler(variant: int, sentences: int) -> str:
    """Varied, deterministic notes; ``variant`` comes first so variants share no prefix."""
    rng = random.Random(variant)
    lines = [
        f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(OBJECTS)} "
        f"{rng.choice(PLACES)} {rng.choice(TIMES)}, note {i} of conversation {variant}."
        for i in range(sentences)
    ]
    return f"Conversation {variant}. Read these notes about the lighthouse:\n" + " ".join(lines)


def long_messages(engine: Engine, variant: int) -> list[dict[str, str]]:
    """A one-message conversation whose prompt is about 1,500 tokens (checked)."""

    def messages(n: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": filler(variant, n)}]

    low, high = 1, 400
    while low < high:  # fewest sentences reaching the middle of the range
        mid = (low + high) // 2
        if len(engine.chat_prompt(messages(mid))) < sum(LONG_PROMPT) // 2:
            low = mid + 1
        else:
            high = mid
    size = len(engine.chat_prompt(messages(low)))
    if not LONG_PROMPT[0] <= size <= LONG_PROMPT[1]:
        raise RuntimeError(f"the first turn's prompt has {size} tokens, not {LONG_PROMPT}")
    return messages(low)


@dataclass
class Turn:
    text: str
    ttft_s: float
    cached_tokens: int
    prompt_tokens: int


async def turn(engine: Engine, messages: list[dict[str, str]], max_tokens: int) -> Turn:
    prompt = engine.chat_prompt(messages)
    start = time.perf_counter()
    text, seen, finished = "", None, None
    async for event in engine.generate(
        prompt, SamplingParams(max_tokens=max_tokens, temperature=0)
    ):
        if isinstance(event, TokenChunk):
            text += event.text
            seen = seen if seen is not None else time.perf_counter() - start
        elif isinstance(event, Finished):
            finished = event
    assert finished is not None
    ttft = finished.time_to_first_token_s
    ttft = ttft if ttft is not None else (seen if seen is not None else math.nan)
    return Turn(text, ttft, finished.cached_tokens, len(prompt))


async def second_turn(engine: Engine, variant: int) -> Turn:
    messages = long_messages(engine, variant)
    first = await turn(engine, messages, TURN1_TOKENS)
    messages += [
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": FOLLOW_UP},
    ]
    return await turn(engine, messages, TURN2_TOKENS)


@dataclass
class SecondTurns:
    first_turn_tokens: int
    turns: dict[bool, list[Turn]]  # by prompt_cache

    def ttft_ms(self, cache: bool) -> float:
        return statistics.median(t.ttft_s for t in self.turns[cache]) * 1000

    def cached_tokens(self, cache: bool) -> int:
        return int(statistics.median(t.cached_tokens for t in self.turns[cache]))


async def second_turns(model: Path, runs: int) -> SecondTurns:
    """The second turn with and without the KV cache, both engines loaded, orders alternating;
    each run is a fresh conversation, so its first turn is not cached from an earlier run."""
    engines = {
        cache: Engine(
            model,
            n_ctx=4096,
            n_threads=THREADS,
            n_threads_batch=THREADS_BATCH,
            parallel=4,
            prompt_cache=cache,
        )
        for cache in (True, False)
    }
    turns: dict[bool, list[Turn]] = {True: [], False: []}
    try:
        for engine in engines.values():
            engine.load()
        first = len(engines[True].chat_prompt(long_messages(engines[True], 0)))
        for run in range(runs):
            for cache in (True, False) if run % 2 == 0 else (False, True):
                turns[cache].append(await second_turn(engines[cache], run))
    finally:
        for engine in engines.values():
            engine.close()
    return SecondTurns(first, turns)


async def greedy_ids(engine: Engine, prompt: list[int], max_tokens: int) -> list[int]:
    ids: list[int] = []
    async for event in engine.generate(prompt, SamplingParams(max_tokens, temperature=0)):
        if isinstance(event, TokenChunk):
            ids.extend(event.token_ids)
    return ids


async def batched_vs_alone(model: Path, prompts: int, max_tokens: int) -> list[float]:
    """Greedy answers generated alone, then PARALLEL at a time, on an engine without the
    prompt cache (so only the batch differs). Returns, per answer that differs, the distance
    in logits between the two choices where they part (0 answers differing: an empty list)."""
    engine = Engine(
        model,
        n_threads=THREADS,
        n_threads_batch=THREADS_BATCH,
        parallel=PARALLEL,
        prompt_cache=False,
    )
    engine.load()
    try:
        asks = [
            engine.chat_prompt([{"role": "user", "content": PROMPT.format(1000 + i)}])
            for i in range(prompts)
        ]
        alone = [await greedy_ids(engine, p, max_tokens) for p in asks]
        together: list[list[int]] = []
        for start in range(0, prompts, PARALLEL):
            batch = asks[start : start + PARALLEL]
            together += await asyncio.gather(*(greedy_ids(engine, p, max_tokens) for p in batch))
    finally:
        engine.close()
    gaps = []
    for prompt, got, want in zip(asks, together, alone, strict=True):
        if (parted := divergence(model, prompt, got, want)) is not None:
            gaps.append(parted[1])
    return gaps


# --------------------------------------------------------------------------- report


@dataclass
class Anchor:
    status: str  # "built", "cached", "failed", "skipped"
    build_s: float | None = None
    error: str | None = None
    target: Target | None = None


def figures(
    args: argparse.Namespace,
    raw: dict[int, list[float]],
    node: Target,
    anchor: Anchor,
    turns: SecondTurns,
    gaps: list[float],
) -> dict[str, Any]:
    raw_median = {t: statistics.median(v) for t, v in raw.items()}
    best = max(raw_median, key=lambda t: raw_median[t])
    baseline = raw_median[best]
    server = anchor.target if anchor.target and anchor.target.bursts else None
    streams: dict[str, Any] = {}
    for n in args.streams:
        row: dict[str, Any] = {
            "node_tokens_per_s": node.tokens_per_s(n),
            "node_x_baseline": node.tokens_per_s(n) / baseline,
            "node_ttft_p95_ms": node.ttft_p95_ms(n),
        }
        if server is not None:
            row["llama_server_tokens_per_s"] = server.tokens_per_s(n)
            row["llama_server_ttft_p95_ms"] = server.ttft_p95_ms(n)
            row["node_x_llama_server"] = node.tokens_per_s(n) / server.tokens_per_s(n)
        streams[str(n)] = row
    cached, uncached = turns.ttft_ms(True), turns.ttft_ms(False)
    return {
        "model": MODEL,
        "runs": args.runs,
        "max_tokens": args.max_tokens,
        "baseline": {
            **{f"threads_{t}_tokens_per_s": v for t, v in sorted(raw_median.items())},
            "threads": best,
            "tokens_per_s": baseline,
        },
        "streams": streams,
        "batched_vs_alone": {
            "answers": BATCHED_ANSWERS,
            "identical": BATCHED_ANSWERS - len(gaps),
            "gaps_where_they_part": gaps,
            "audit_tolerance": GREEDY_TOLERANCE,
        },
        "first_request": {
            "node_ttft_ms": node.first_ttft_s * 1000,
            "node_steady_ttft_ms": node.ttft_median_ms(min(args.streams)),
            **({"llama_server_ttft_ms": server.first_ttft_s * 1000} if server is not None else {}),
        },
        "llama_server": {"status": anchor.status, "build_s": anchor.build_s, "error": anchor.error},
        "second_turn": {
            "first_turn_prompt_tokens": turns.first_turn_tokens,
            "second_turn_prompt_tokens": turns.turns[True][0].prompt_tokens,
            "ttft_ms_prompt_cache": cached,
            "ttft_ms_no_prompt_cache": uncached,
            "cached_tokens": turns.cached_tokens(True),
            "speedup": uncached / cached,
        },
        "goals": goals(args.streams, streams, uncached / cached),
    }


def goals(ns: list[int], streams: dict[str, Any], speedup: float) -> dict[str, bool | None]:
    top = streams.get(str(PARALLEL))
    vs_server = [r["node_x_llama_server"] for r in streams.values() if "node_x_llama_server" in r]
    return {
        "node_8_streams_x_baseline_ge_2": None if top is None else top["node_x_baseline"] >= 2.0,
        "node_x_llama_server_ge_0.9": min(vs_server) >= 0.9 if vs_server else None,
        "second_turn_speedup_ge_5": speedup >= 5.0,
    }


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "met" if ok else "MISSED"


def print_baseline(base: dict[str, Any], server: dict[str, Any]) -> None:
    print(f"\n{'raw llama-cpp-python, one stream':<34}{'tok/s':>8}")
    for key, value in base.items():
        if key.startswith("threads_"):
            threads = int(key.split("_")[1])
            label = f"{threads} thread{'s' * (threads > 1)}"
            print(f"  {label:<32}{value:>8.1f}")
    best = f"baseline: the better ({base['threads']})"
    print(f"  {best:<32}{base['tokens_per_s']:>8.1f}")
    if server["status"] in ("built", "cached"):
        took = "?" if server["build_s"] is None else f"{server['build_s']:.0f}"
        how = "built now" if server["status"] == "built" else "cached"
        print(f"\nllama-server (anchor): {how}, build took {took} s")
    elif server["status"] == "failed":
        print(f"\nllama-server (anchor): not measured: {server['error']}")


def print_streams(streams: dict[str, Any], goal: dict[str, bool | None]) -> None:
    has_server = any("node_x_llama_server" in r for r in streams.values())
    print(
        f"\nN concurrent streams: fabstir-node serve --parallel {PARALLEL} "
        f"--threads {THREADS} --threads-batch {THREADS_BATCH}"
        + (" vs llama-server" if has_server else "")
    )
    header = f"{'N':>3} {'node tok/s':>11} {'x raw':>7} {'TTFT p95 ms':>12}"
    if has_server:
        header += f" {'server tok/s':>13} {'TTFT p95 ms':>12} {'node/server':>12}"
    print(header)
    for n, r in streams.items():
        line = (
            f"{n:>3} {r['node_tokens_per_s']:>11.1f} {r['node_x_baseline']:>6.2f}x "
            f"{r['node_ttft_p95_ms']:>12.0f}"
        )
        if "node_x_llama_server" in r:
            line += (
                f" {r['llama_server_tokens_per_s']:>13.1f} {r['llama_server_ttft_p95_ms']:>12.0f}"
                f" {r['node_x_llama_server']:>11.2f}x"
            )
        if n == str(PARALLEL):
            line += f"  goal x raw >= 2.0: {verdict(goal['node_8_streams_x_baseline_ge_2'])}"
        print(line)
    if has_server:
        ok = verdict(goal["node_x_llama_server_ge_0.9"])
        print(f"goal node/server >= 0.9 at every N: {ok}")


def print_first_request(first: dict[str, Any], streams: list[int]) -> None:
    print(
        f"\nfirst request after start (warm-up before ready): TTFT {first['node_ttft_ms']:.0f} ms"
        f" vs {first['node_steady_ttft_ms']:.0f} ms median at {min(streams)} stream(s)"
        + (
            f"; llama-server {first['llama_server_ttft_ms']:.0f} ms"
            if "llama_server_ttft_ms" in first
            else ""
        )
    )


def print_batched(batched: dict[str, Any]) -> None:
    gaps = ", ".join(f"{g:.3f}" for g in batched["gaps_where_they_part"])
    print(
        f"\ngreedy answers in batches of {PARALLEL} vs alone: {batched['identical']} of "
        f"{batched['answers']} identical"
        + (
            f"; the others part where the top two choices are {gaps} logits apart "
            f"(audit tolerance {batched['audit_tolerance']})"
            if gaps
            else ""
        )
    )


def print_second_turn(turn2: dict[str, Any], goal: dict[str, bool | None]) -> None:
    print(
        f"\nsecond turn of a {turn2['first_turn_prompt_tokens']}-token conversation "
        f"({turn2['second_turn_prompt_tokens']}-token prompt), Engine parallel 4"
    )
    print(f"  {'TTFT, no prompt cache':<24}{turn2['ttft_ms_no_prompt_cache']:>9.1f} ms")
    print(
        f"  {'TTFT, prompt cache':<24}{turn2['ttft_ms_prompt_cache']:>9.1f} ms"
        f"   ({turn2['cached_tokens']} prompt tokens cached)"
    )
    print(
        f"  {'speed-up':<24}{turn2['speedup']:>9.1f}x"
        f"   goal >= 5x: {verdict(goal['second_turn_speedup_ge_5'])}"
    )


def print_table(f: dict[str, Any]) -> None:
    runs = f"{f['runs']} run{'s' * (f['runs'] > 1)}"
    print(f"SmolLM2-135M-Instruct, greedy, {f['max_tokens']} tokens per answer, {runs}, median")
    print_baseline(f["baseline"], f["llama_server"])
    print_streams(f["streams"], f["goals"])
    print_batched(f["batched_vs_alone"])
    print_first_request(f["first_request"], [int(n) for n in f["streams"]])
    print_second_turn(f["second_turn"], f["goals"])


# --------------------------------------------------------------------------- main


def prepare_anchor(args: argparse.Namespace) -> tuple[Anchor, Path | None]:
    if args.no_anchor:
        return Anchor("skipped"), None
    version = metadata.version("llama-cpp-python")
    try:
        log(f"llama-server for llama-cpp-python {version}: cached or building (<= 10 min)")
        binary, build_s, built = llama_server_binary(args.anchor_cache, version)
    except (AnchorError, OSError, tarfile.TarError) as exc:
        log(f"llama-server unavailable: {exc}")
        return Anchor("failed", error=str(exc)), None
    log(f"llama-server: {'built in' if built else 'cached, built in'} {build_s or 0:.0f} s")
    return Anchor("built" if built else "cached", build_s), binary


def run_servers(
    args: argparse.Namespace, model: Path, anchor: Anchor, binary: Path | None
) -> tuple[dict[int, list[float]], Target]:
    from llama_cpp import Llama

    raws = {
        t: Llama(str(model), n_ctx=2048, n_threads=t, n_threads_batch=t, verbose=False)
        for t in (1, 2)
    }
    with contextlib.ExitStack() as stack:
        log("starting fabstir-node serve")
        node = Target("node", stack.enter_context(node_server(2048)))
        targets = [node]
        if binary is not None:
            try:
                log("starting llama-server")
                anchor.target = Target(
                    "llama-server", stack.enter_context(llama_server(binary, model))
                )
                targets.append(anchor.target)
            except (AnchorError, OSError) as exc:
                log(f"llama-server did not start: {exc}")
                anchor.status, anchor.error = "failed", f"did not start: {exc}"
        raw = asyncio.run(compare(raws, targets, args.streams, args.runs, args.max_tokens))
    for llm in raws.values():
        llm.close()
    return raw, node


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--streams",
        type=lambda s: [int(n) for n in s.split(",")],
        default=[1, 2, 4, 8],
        help="concurrent stream counts, comma-separated [1,2,4,8]",
    )
    parser.add_argument("--no-anchor", action="store_true", help="skip llama-server")
    parser.add_argument(
        "--anchor-cache",
        type=Path,
        default=ROOT / ".build" / "llama-server",
        help="where llama-server builds are kept [.build/llama-server]",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object, no table")
    args = parser.parse_args()

    model = resolve(MODEL).path
    anchor, binary = prepare_anchor(args)  # before measuring: a build loads the machine
    raw, node = run_servers(args, model, anchor, binary)
    log("second turn of a long conversation, with and without the prompt cache")
    turns = asyncio.run(second_turns(model, args.runs))
    log("greedy answers in a batch and alone")
    gaps = asyncio.run(batched_vs_alone(model, BATCHED_ANSWERS, args.max_tokens))
    result = figures(args, raw, node, anchor, turns, gaps)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
