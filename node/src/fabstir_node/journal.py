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

from fabstir_node.config import make_private_dir
from fabstir_sdk.contracts import Voucher

# Rows are keyed by chain id + marketplace address + session id: a redeployed marketplace or
# another chain reuses session ids, and must never meet the rows of an old one.
SCHEMA = """
CREATE TABLE IF NOT EXISTS session_journal (
    chain_id          INTEGER NOT NULL,
    marketplace       TEXT NOT NULL,
    session_id        TEXT NOT NULL,   -- uint256 as decimal text
    client            TEXT NOT NULL,
    signer            TEXT NOT NULL,
    model             TEXT NOT NULL,
    deposit           TEXT NOT NULL,   -- wei as text: SQLite integers stop at 2^63
    price             TEXT NOT NULL,
    max_tokens        TEXT NOT NULL,
    billed_tokens     INTEGER NOT NULL DEFAULT 0,
    best_tokens       INTEGER NOT NULL DEFAULT 0,
    best_transcript   BLOB,
    best_signature    BLOB,
    checkpoint_tokens INTEGER NOT NULL DEFAULT 0,
    state             TEXT NOT NULL DEFAULT 'open',  -- open | settling | settled | abandoned
    settle_tx         TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,    -- failed settlement attempts
    last_error        TEXT,
    opened_at         REAL NOT NULL,
    updated_at        REAL NOT NULL,
    PRIMARY KEY (chain_id, marketplace, session_id)
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
    attempts: int
    last_error: str | None


class Journal:
    """The sessions of one marketplace on one chain. Thread-safe: the event loop and the
    settlement worker share it."""

    def __init__(self, path: Path, chain_id: int, marketplace: str) -> None:
        make_private_dir(path.parent)  # the data dir: 0700 when we create it
        self._scope = (chain_id, marketplace.lower())
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._adopt_unscoped_rows()

    def _adopt_unscoped_rows(self) -> None:
        """Journals written before rows were keyed by chain and marketplace kept them in
        ``sessions``; they belong to the deployment the node runs on, so they move here and
        are settled like any other."""
        with self._tx() as db:
            old = db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'sessions'"
            ).fetchone()
            if old is None:
                return
            db.execute(
                "INSERT OR IGNORE INTO session_journal (chain_id, marketplace, session_id, "
                "client, signer, model, deposit, price, max_tokens, billed_tokens, best_tokens, "
                "best_transcript, best_signature, checkpoint_tokens, state, settle_tx, "
                "opened_at, updated_at) SELECT ?, ?, CAST(session_id AS TEXT), client, signer, "
                "model, deposit, price, CAST(max_tokens AS TEXT), billed_tokens, best_tokens, "
                "best_transcript, best_signature, checkpoint_tokens, state, settle_tx, "
                "opened_at, updated_at FROM sessions",
                self._scope,
            )
            db.execute("ALTER TABLE sessions RENAME TO sessions_adopted")

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

    def _update(self, session_id: int, assignments: str, *values: object) -> int:
        with self._tx() as db:
            cursor = db.execute(
                f"UPDATE session_journal SET {assignments}, updated_at = ? "
                "WHERE chain_id = ? AND marketplace = ? AND session_id = ?",
                (*values, time.time(), *self._scope, str(session_id)),
            )
            return cursor.rowcount

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
                "INSERT OR IGNORE INTO session_journal (chain_id, marketplace, session_id, "
                "client, signer, model, deposit, price, max_tokens, opened_at, updated_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    *self._scope,
                    str(session_id),
                    client,
                    signer,
                    model,
                    str(deposit),
                    str(price),
                    str(max_tokens),
                    now,
                    now,
                ),
            )
        session = self.get(session_id)
        assert session is not None
        return session

    def add_billed(self, session_id: int, tokens: int) -> None:
        self._update(session_id, "billed_tokens = billed_tokens + ?", tokens)

    def record_voucher(self, voucher: Voucher) -> bool:
        """Keep ``voucher`` if it covers more than the best one; True when it did."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE session_journal SET best_tokens = ?, best_transcript = ?, "
                "best_signature = ?, updated_at = ? WHERE chain_id = ? AND marketplace = ? "
                "AND session_id = ? AND best_tokens < ? AND state = ?",
                (
                    voucher.cumulative_tokens,
                    voucher.transcript_hash,
                    voucher.signature,
                    time.time(),
                    *self._scope,
                    str(voucher.session_id),
                    voucher.cumulative_tokens,
                    OPEN,
                ),
            )
            return cursor.rowcount == 1

    def record_checkpoint(self, session_id: int, tokens: int) -> None:
        self._update(session_id, "checkpoint_tokens = MAX(checkpoint_tokens, ?)", tokens)

    def set_state(self, session_id: int, state: str, settle_tx: str | None = None) -> None:
        self._update(
            session_id,
            "state = ?, settle_tx = COALESCE(?, settle_tx), "
            "last_error = CASE WHEN ? IN ('settled', 'abandoned') THEN NULL ELSE last_error END",
            state,
            settle_tx,
            state,
        )

    def record_failure(self, session_id: int, error: str) -> int:
        """Note a failed settlement attempt; returns how many have failed so far."""
        self._update(session_id, "attempts = attempts + 1, last_error = ?", error[:500])
        journaled = self.get(session_id)
        return journaled.attempts if journaled else 0

    def get(self, session_id: int) -> JournalSession | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM session_journal WHERE chain_id = ? AND marketplace = ? "
                "AND session_id = ?",
                (*self._scope, str(session_id)),
            ).fetchone()
        return _row(row) if row else None

    def sessions(self, *states: str) -> list[JournalSession]:
        query = "SELECT * FROM session_journal WHERE chain_id = ? AND marketplace = ?"
        if states:
            query += f" AND state IN ({','.join('?' * len(states))})"
        with self._lock:
            rows = self._db.execute(query + " ORDER BY opened_at", (*self._scope, *states))
            found = rows.fetchall()
        return [_row(r) for r in found]


def _row(r: sqlite3.Row) -> JournalSession:
    best = None
    if r["best_tokens"] and r["best_signature"] is not None:
        best = Voucher(
            int(r["session_id"]),
            r["best_tokens"],
            bytes(r["best_transcript"]),
            bytes(r["best_signature"]),
        )
    return JournalSession(
        session_id=int(r["session_id"]),
        client=r["client"],
        signer=r["signer"],
        model=r["model"],
        deposit=int(r["deposit"]),
        price=int(r["price"]),
        max_tokens=int(r["max_tokens"]),
        billed_tokens=r["billed_tokens"],
        best=best,
        checkpoint_tokens=r["checkpoint_tokens"],
        state=r["state"],
        settle_tx=r["settle_tx"],
        attempts=r["attempts"],
        last_error=r["last_error"],
    )
