"""The node's durable memory (SQLite in its data dir): sessions, the best voucher of each, and
what has been settled. Every voucher is written before more tokens are generated on its
credit, so a node killed at any moment restarts knowing everything it is owed."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fabstir_sdk.contracts import Voucher

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id        INTEGER PRIMARY KEY,
    client            TEXT NOT NULL,
    signer            TEXT NOT NULL,
    model             TEXT NOT NULL,
    deposit           TEXT NOT NULL,   -- wei as text: SQLite integers stop at 2^63
    price             TEXT NOT NULL,
    max_tokens        INTEGER NOT NULL,
    billed_tokens     INTEGER NOT NULL DEFAULT 0,
    best_tokens       INTEGER NOT NULL DEFAULT 0,
    best_transcript   BLOB,
    best_signature    BLOB,
    checkpoint_tokens INTEGER NOT NULL DEFAULT 0,
    state             TEXT NOT NULL DEFAULT 'open',  -- open | settling | settled | abandoned
    settle_tx         TEXT,
    opened_at         REAL NOT NULL,
    updated_at        REAL NOT NULL
);
"""

OPEN, SETTLING, SETTLED, ABANDONED = "open", "settling", "settled", "abandoned"


@dataclass(frozen=True)
class JournalSession:
    session_id: int
    client: str
    signer: str
    model: str
    deposit: int
    price: int
    max_tokens: int
    billed_tokens: int
    best: Voucher | None
    checkpoint_tokens: int
    state: str
    settle_tx: str | None


class Journal:
    """Thread-safe: the event loop and the settlement worker share it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def open_session(
        self,
        session_id: int,
        client: str,
        signer: str,
        model: str,
        deposit: int,
        price: int,
        max_tokens: int,
    ) -> JournalSession:
        """Record a session (or return the one we already know, for a reconnecting client)."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO sessions (session_id, client, signer, model, deposit, "
                "price, max_tokens, opened_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (session_id, client, signer, model, str(deposit), str(price), max_tokens, now, now),
            )
        session = self.get(session_id)
        assert session is not None
        return session

    def add_billed(self, session_id: int, tokens: int) -> int:
        with self._tx() as db:
            db.execute(
                "UPDATE sessions SET billed_tokens = billed_tokens + ?, updated_at = ? "
                "WHERE session_id = ?",
                (tokens, time.time(), session_id),
            )
            row = db.execute(
                "SELECT billed_tokens FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
        return int(row[0])

    def record_voucher(self, voucher: Voucher) -> bool:
        """Keep ``voucher`` if it covers more than the best one; True when it did."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE sessions SET best_tokens = ?, best_transcript = ?, best_signature = ?, "
                "updated_at = ? WHERE session_id = ? AND best_tokens < ? AND state = ?",
                (
                    voucher.cumulative_tokens,
                    voucher.transcript_hash,
                    voucher.signature,
                    time.time(),
                    voucher.session_id,
                    voucher.cumulative_tokens,
                    OPEN,
                ),
            )
            return cursor.rowcount == 1

    def record_checkpoint(self, session_id: int, tokens: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE sessions SET checkpoint_tokens = MAX(checkpoint_tokens, ?) "
                "WHERE session_id = ?",
                (tokens, session_id),
            )

    def set_state(self, session_id: int, state: str, settle_tx: str | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE sessions SET state = ?, settle_tx = COALESCE(?, settle_tx), "
                "updated_at = ? WHERE session_id = ?",
                (state, settle_tx, time.time(), session_id),
            )

    def get(self, session_id: int) -> JournalSession | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
        return _row(row) if row else None

    def sessions(self, *states: str) -> list[JournalSession]:
        query = "SELECT * FROM sessions"
        if states:
            query += f" WHERE state IN ({','.join('?' * len(states))})"
        with self._lock:
            rows = self._db.execute(query + " ORDER BY session_id", states).fetchall()
        return [_row(r) for r in rows]


def _row(r: sqlite3.Row) -> JournalSession:
    best = None
    if r["best_tokens"] and r["best_signature"] is not None:
        best = Voucher(
            r["session_id"],
            r["best_tokens"],
            bytes(r["best_transcript"]),
            bytes(r["best_signature"]),
        )
    return JournalSession(
        session_id=r["session_id"],
        client=r["client"],
        signer=r["signer"],
        model=r["model"],
        deposit=int(r["deposit"]),
        price=int(r["price"]),
        max_tokens=r["max_tokens"],
        billed_tokens=r["billed_tokens"],
        best=best,
        checkpoint_tokens=r["checkpoint_tokens"],
        state=r["state"],
        settle_tx=r["settle_tx"],
    )
