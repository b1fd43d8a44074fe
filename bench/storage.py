"""The content-addressed store against its physical floor, and Bitswap against a plain stream.

1. put/get latency (p50/p95/p99) of ``Store.put``/``Store.get`` for 1 KiB, 1 MiB and 100 MiB,
   and of writing (temp file, fsync, rename) and reading the same bytes as plain files: the
   ratios say what the store costs (goal: get p95 < 10 ms up to 1 MiB).
2. A HAMT-sharded directory of N entries (default 1,000,000): insert rate in batches, lookup
   p99 of random names (goal < 5 ms), a full listing by cursor, peak memory, size on disk.
3. A 100 MiB file fetched between two nodes on 127.0.0.1 over Bitswap, as a ratio of one
   libp2p stream (Noise + Yamux) copying the same bytes between the same two hosts
   (goal >= 0.5).

    .venv/bin/python bench/storage.py [--quick] [--entries N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from fabstir_sdk.p2p import BridgedStream, P2PHost, PeerAddress
from fabstir_sdk.storage.bitswap import Bitswap
from fabstir_sdk.storage.blockstore import BlockStore
from fabstir_sdk.storage.exchange import Exchange
from fabstir_sdk.storage.tree import DirEntry, FileEntry, Store

COPY_PROTOCOL = "/fabstir-bench/copy/1.0.0"


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99)}


def plain_put(directory: Path, name: str, data: bytes) -> None:
    tmp = directory / f".{name}.tmp"
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / name)


def latency(root: Path, quick: bool) -> dict[str, Any]:
    sizes = [("1 KiB", 1 << 10, 200), ("1 MiB", 1 << 20, 50), ("100 MiB", 100 << 20, 3)]
    plain = root / "plain"
    plain.mkdir()
    with Store(root / "latency") as store:
        return {
            label: one_size(store, plain, label, size, max(2, runs // 4) if quick else runs)
            for label, size, runs in sizes
        }


def one_size(store: Store, plain: Path, label: str, size: int, runs: int) -> dict[str, Any]:
    payloads = [os.urandom(size) for _ in range(min(runs, 4 if size <= 1 << 20 else 1))]
    tag = label.replace(" ", "")
    store_puts, plain_puts = [], []
    for i in range(runs):
        data = payloads[i % len(payloads)]
        t = time.perf_counter()
        store.put(f"/bench/{tag}/{i}", data, compress=None)
        store_puts.append(time.perf_counter() - t)
        t = time.perf_counter()
        plain_put(plain, f"{tag}-{i}", data)
        plain_puts.append(time.perf_counter() - t)
    store_gets, plain_gets = [], []
    for _ in range(runs):
        i = random.randrange(runs)
        t = time.perf_counter()
        store.get(f"/bench/{tag}/{i}")
        store_gets.append(time.perf_counter() - t)
        t = time.perf_counter()
        (plain / f"{tag}-{i}").read_bytes()
        plain_gets.append(time.perf_counter() - t)
    for i in range(runs):
        (plain / f"{tag}-{i}").unlink()
    return {
        "put": percentiles(store_puts),
        "put_plain": percentiles(plain_puts),
        "get": percentiles(store_gets),
        "get_plain": percentiles(plain_gets),
    }


def hamt(root: Path, entries: int) -> dict[str, Any]:
    """The directory structure at scale: every entry names the same 4-byte content (one
    block), so what is measured is the HAMT, not a million tiny files. Bulk import in batches
    of 100k (a batch rewrites every HAMT node it touches once, and
    random names touch most of them), then single puts into the full directory (each its own
    root update: the path from the root to one leaf is rewritten)."""
    batch = 100_000
    with Store(root / "hamt") as store:
        start = time.perf_counter()
        for base in range(0, entries, batch):
            with store.batch():
                for i in range(base, min(base + batch, entries)):
                    store.put(f"/big/entry-{i}", b"same", compress=None)
        insert_s = time.perf_counter() - start
        singles = []
        for i in range(200):
            t = time.perf_counter()
            store.put(f"/big/single-{i}", b"one more", compress=None)
            singles.append(time.perf_counter() - t)
        revision = store.revision
    # A fresh reader: nothing decoded yet, so early lookups read and verify their blocks.
    with Store(root / "hamt", read_only=True) as reader:
        probes = [f"/big/entry-{random.randrange(entries)}" for _ in range(2000)]
        lookups = []
        for path in probes:
            t = time.perf_counter()
            reader.stat(path)
            lookups.append(time.perf_counter() - t)
        start = time.perf_counter()
        seen, cursor = 0, None
        while True:
            page = reader.list("/big", cursor, 1000)
            seen += len(page.entries)
            cursor = page.cursor
            if cursor is None:
                break
        listing_s = time.perf_counter() - start
        entry = reader.stat("/big")
        assert isinstance(entry, DirEntry)
    assert seen == entries + 200
    disk = sum(p.stat().st_size for p in (root / "hamt").rglob("*") if p.is_file())
    return {
        "entries": entries,
        "insert_per_s": entries / insert_s,
        "batches": revision - 200,
        "single_put_ms": percentiles(singles),
        "lookup_ms": percentiles(lookups),
        "listed": seen,
        "listing_per_s": seen / listing_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "disk_mib": disk / (1 << 20),
    }


async def transfer(root: Path, size: int) -> dict[str, Any]:
    data = os.urandom(size)
    source_store = Store(root / "source")
    entry = source_store.put("/models/big.gguf", data, compress=None)
    assert isinstance(entry, FileEntry)
    sink = BlockStore(root / "sink")
    source, dest = P2PHost(secrets.token_bytes(32)), P2PHost(secrets.token_bytes(32))
    Bitswap(source, source_store.blocks, served=lambda h: source_store.blocks.refs(h) > 0)
    dest_bitswap = Bitswap(dest, sink, served=lambda _h: False)

    async def copy(stream: BridgedStream) -> None:
        await stream.write(data)
        await stream.close()

    source.set_handler(COPY_PROTOCOL, copy)
    await source.start()
    await dest.start()
    try:
        peer = PeerAddress(source.peer_id, source.addrs)
        start = time.perf_counter()
        stream = await dest.open_stream(peer, COPY_PROTOCOL)
        received = 0
        while chunk := await stream.read(1 << 20):
            received += len(chunk)
        stream_s = time.perf_counter() - start
        assert received == size
        start = time.perf_counter()
        await Exchange(dest, sink, dest_bitswap).fetch(entry.ref.content, [peer])
        bitswap_s = time.perf_counter() - start
    finally:
        await dest.stop()
        await source.stop()
        source_store.close()
        sink.close()
    mib = size / (1 << 20)
    return {
        "mib": mib,
        "stream_mib_s": mib / stream_s,
        "bitswap_mib_s": mib / bitswap_s,
        "ratio": stream_s / bitswap_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (a minute or less)")
    parser.add_argument("--entries", type=int, help="HAMT entries [1,000,000; --quick 100,000]")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    entries = args.entries or (100_000 if args.quick else 1_000_000)
    with tempfile.TemporaryDirectory(prefix="fabstir-bench-") as tmp:
        root = Path(tmp)
        # The HAMT first: its peak memory is then not the other parts' 100 MiB buffers.
        report = {"hamt": hamt(root, entries)}
        report["latency"] = latency(root, args.quick)
        report["transfer"] = asyncio.run(transfer(root, (20 if args.quick else 100) << 20))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print("put/get latency, ms (store vs plain files: temp file + fsync + rename, read)")
    for label, row in report["latency"].items():
        for op in ("put", "get"):
            ours, floor = row[op], row[f"{op}_plain"]
            print(
                f"  {op} {label:<8} p50 {ours['p50']:8.2f}  p95 {ours['p95']:8.2f}  "
                f"p99 {ours['p99']:8.2f}   plain p95 {floor['p95']:8.2f}   "
                f"ratio {ours['p95'] / max(floor['p95'], 1e-6):5.2f}x"
            )
    small = max(report["latency"][k]["get"]["p95"] for k in ("1 KiB", "1 MiB"))
    print(f"  goal get p95 < 10 ms up to 1 MiB: {'met' if small < 10 else 'MISSED'}")
    t = report["transfer"]
    print(
        f"transfer of {t['mib']:.0f} MiB on 127.0.0.1: plain stream {t['stream_mib_s']:.1f} MiB/s,"
        f" Bitswap {t['bitswap_mib_s']:.1f} MiB/s, ratio {t['ratio']:.2f}"
        f" (goal >= 0.5: {'met' if t['ratio'] >= 0.5 else 'MISSED'})"
    )
    h = report["hamt"]
    print(
        f"HAMT of {h['entries']:,} entries: {h['insert_per_s']:,.0f} inserts/s in "
        f"{h['batches']} batches; one more put p50 {h['single_put_ms']['p50']:.1f} ms, p99 "
        f"{h['single_put_ms']['p99']:.1f} ms; lookup p50 {h['lookup_ms']['p50']:.2f} ms, p99 "
        f"{h['lookup_ms']['p99']:.2f} ms (goal < 5 ms: "
        f"{'met' if h['lookup_ms']['p99'] < 5 else 'MISSED'}); listing {h['listed']:,} by cursor "
        f"at {h['listing_per_s']:,.0f}/s; peak RSS {h['peak_rss_mib']:.0f} MiB; "
        f"{h['disk_mib']:.0f} MiB on disk"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
