"""The journal keeps each deployment's sessions apart and adopts rows from before it did."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fabstir_node.journal import OPEN, SETTLED, Journal
from fabstir_sdk.contracts import Voucher

MARKET = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
OTHER = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"


def open_one(journal: Journal, session_id: int = 1) -> None:
    journal.open_session(session_id, "0xclient", "0xsigner", "tiny", 10**15, 2 * 10**12, 500)


def test_sessions_of_another_chain_or_marketplace_never_meet(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    here, redeployed, other_chain = (
        Journal(path, 31337, MARKET),
        Journal(path, 31337, OTHER),
        Journal(path, 8453, MARKET),
    )
    open_one(here)
    here.record_voucher(Voucher(1, 40, bytes(32), bytes(65)))
    assert redeployed.get(1) is None and other_chain.get(1) is None
    open_one(redeployed)  # the same session id on a redeployed marketplace is a new session
    journaled = redeployed.get(1)
    assert journaled is not None and journaled.best is None
    best = here.get(1)
    assert best is not None and best.best is not None and best.best.cumulative_tokens == 40


def test_failed_settlements_are_counted_and_cleared_once_settled(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite", 31337, MARKET)
    open_one(journal)
    assert journal.record_failure(1, "ChainUnavailable: down") == 1
    assert journal.record_failure(1, "ChainUnavailable: still down") == 2
    journaled = journal.get(1)
    assert journaled is not None and journaled.last_error == "ChainUnavailable: still down"
    journal.set_state(1, SETTLED, "0xtx")
    journaled = journal.get(1)
    assert journaled is not None and journaled.last_error is None and journaled.attempts == 2


def test_rows_from_an_unscoped_journal_are_adopted(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        """CREATE TABLE sessions (session_id INTEGER PRIMARY KEY, client TEXT, signer TEXT,
        model TEXT, deposit TEXT, price TEXT, max_tokens INTEGER, billed_tokens INTEGER,
        best_tokens INTEGER, best_transcript BLOB, best_signature BLOB,
        checkpoint_tokens INTEGER, state TEXT, settle_tx TEXT, opened_at REAL,
        updated_at REAL);
        INSERT INTO sessions VALUES (7, '0xc', '0xs', 'tiny', '1000', '2', 500, 30, 30,
        zeroblob(32), zeroblob(65), 0, 'open', NULL, 1.0, 1.0);"""
    )
    db.commit()
    db.close()
    journal = Journal(path, 31337, MARKET)
    [adopted] = journal.sessions(OPEN)
    assert adopted.session_id == 7 and adopted.best is not None
    assert adopted.best.cumulative_tokens == 30 and adopted.max_tokens == 500
    assert Journal(path, 31337, MARKET).sessions(OPEN) == [adopted]  # adopted once
