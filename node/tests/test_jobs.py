"""The JobBoard follower's state file: what a restart resumes from."""

from __future__ import annotations

from pathlib import Path

from fabstir_node.jobs import BoardState


def test_the_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    BoardState(41, "0xabc", {3: 0, 7: 1_700_000_000}).save(path)
    state = BoardState.load(path)
    assert (state.block, state.block_hash, state.later) == (41, "0xabc", {3: 0, 7: 1_700_000_000})
    assert not path.with_suffix(".tmp").exists()  # written aside, then renamed into place


def test_a_missing_or_damaged_state_reads_the_board_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    assert BoardState.load(path) == BoardState()
    path.write_text('{"block": "not a number"')
    assert BoardState.load(path) == BoardState()
