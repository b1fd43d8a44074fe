"""Whole-system fixtures: a fresh Anvil per test module with the protocol deployed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fabstir_sdk.devnet import Anvil


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    with Anvil() as chain:
        yield chain
