"""The HAMT that holds a directory's entries once it has more than 1000 (as s5.js shards).

A node covers 5 bits of a name's xxhash64 per level (32 slots, a 32-bit bitmap of the used
ones); a slot holds up to :data:`MAX_INLINE` entries inline, or links a child node when it
would hold more. Deleting folds a child of :data:`MAX_INLINE` or fewer entries back into its
slot, so the same set of names always makes the same tree (and the same root hash), whatever
the order of the changes. The hash is xxhash64 of the name's UTF-8 with seed 0 (s5.js's
``hashFunction: 0``); there is no silent fallback to another function.

A node block is deterministic CBOR: ``{"bitmap": int, "count": n, "children": [child...]}``
in slot order, a child being ``[0, [[name, "f"|"d", ref], ...]]`` (a leaf, entries in list
order) or ``[1, link, count]`` (a node). Nodes are loaded lazily, changed in memory and written
bottom-up by :meth:`HamtNode.flush`, so a batch of changes writes each touched node once.

Listing order is by the hash's 5-bit digits from the lowest, then by name: a total order that
does not depend on the tree's shape, so a cursor (the last hash and name) stays valid while
entries are added, slots split or fold, or the directory crosses the sharding threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import xxhash

from fabstir_sdk.storage import cbor
from fabstir_sdk.storage.dirv1 import DirRef, Entry, FileRef, entry_target, link, unlink
from fabstir_sdk.storage.errors import StorageError

BITS = 5
WIDTH = 1 << BITS
MAX_INLINE = 8
MAX_DEPTH = 64 // BITS  # 12: below it every hash bit is used; slots there grow unbounded


def name_hash(name: str) -> int:
    return xxhash.xxh64_intdigest(name.encode("utf-8"), seed=0)


OrderKey = tuple[tuple[int, ...], bytes]


def order_key(name: str, h: int | None = None) -> OrderKey:
    """Where ``name`` sits in a listing (HAMT or flat): hash digits, then name bytes."""
    h = name_hash(name) if h is None else h
    return tuple((h >> (BITS * i)) & (WIDTH - 1) for i in range(MAX_DEPTH + 1)), name.encode()


def slot_of(h: int, depth: int) -> int:
    return (h >> (BITS * depth)) & (WIDTH - 1)


def _entry_cbor(name: str, entry: Entry) -> list[Any]:
    return [name, "d" if isinstance(entry, DirRef) else "f", entry.to_cbor()]


def _entry_from(raw: Any) -> tuple[str, Entry]:
    if not isinstance(raw, list) or len(raw) != 3 or not isinstance(raw[0], str):
        raise StorageError("malformed HAMT entry")
    entry: Entry
    if raw[1] == "d":
        entry = DirRef.from_cbor(raw[2])
    elif raw[1] == "f":
        entry = FileRef.from_cbor(raw[2])
    else:
        raise StorageError("malformed HAMT entry")
    return raw[0], entry


Loader = Callable[[bytes], bytes]
Writer = Callable[[bytes, list[bytes]], bytes]


class HamtNode:
    """One node, in memory. Slots hold a leaf (``dict`` name -> entry), a loaded child
    (``HamtNode``) or an unloaded one (its hash and entry count)."""

    def __init__(self, depth: int, load: Loader) -> None:
        self.depth = depth
        self.load = load
        self.slots: dict[int, dict[str, Entry] | HamtNode | tuple[bytes, int]] = {}
        self.count = 0
        self.hash: bytes | None = None  # set while unchanged since loaded or flushed

    @classmethod
    def from_block(cls, hash: bytes, depth: int, load: Loader) -> HamtNode:
        node = cls(depth, load)
        raw = cbor.loads(load(hash))
        try:
            bitmap, count, children = raw["bitmap"], raw["count"], raw["children"]
            slots = [i for i in range(WIDTH) if bitmap >> i & 1]
            if len(slots) != len(children) or set(raw) != {"bitmap", "count", "children"}:
                raise StorageError("HAMT bitmap and children disagree")
            for slot, child in zip(slots, children, strict=True):
                if child[0] == 0:
                    leaf = dict(_entry_from(e) for e in child[1])
                    if not 0 < len(leaf) <= MAX_INLINE and depth < MAX_DEPTH:
                        raise StorageError("HAMT leaf of the wrong size")
                    node.slots[slot] = leaf
                elif child[0] == 1 and depth < MAX_DEPTH:
                    node.slots[slot] = (unlink(child[1]), int(child[2]))
                else:
                    raise StorageError("malformed HAMT child")
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise StorageError(f"malformed HAMT node: {exc!r}") from None
        node.count = count
        node.hash = hash
        return node

    def _child(self, slot: int) -> dict[str, Entry] | HamtNode | None:
        held = self.slots.get(slot)
        if isinstance(held, tuple):
            held = HamtNode.from_block(held[0], self.depth + 1, self.load)
            self.slots[slot] = held
        return held

    def get(self, name: str, h: int) -> Entry | None:
        held = self._child(slot_of(h, self.depth))
        if held is None:
            return None
        if isinstance(held, HamtNode):
            return held.get(name, h)
        return held.get(name)

    def set(self, name: str, h: int, entry: Entry) -> bool:
        """Insert or replace; returns whether the entry is new."""
        slot = slot_of(h, self.depth)
        held = self._child(slot)
        self.hash = None
        if isinstance(held, HamtNode):
            added = held.set(name, h, entry)
        else:
            leaf = held if held is not None else {}
            added = name not in leaf
            leaf[name] = entry
            if len(leaf) > MAX_INLINE and self.depth < MAX_DEPTH:
                child = HamtNode(self.depth + 1, self.load)
                for n, e in leaf.items():
                    child.set(n, name_hash(n), e)
                self.slots[slot] = child
            else:
                self.slots[slot] = leaf
        self.count += added
        return added

    def delete(self, name: str, h: int) -> bool:
        slot = slot_of(h, self.depth)
        held = self._child(slot)
        if held is None:
            return False
        if isinstance(held, HamtNode):
            removed = held.delete(name, h)
            if removed and held.count <= MAX_INLINE:
                self.slots[slot] = dict(held.items())  # fold the child back into the slot
        else:
            removed = held.pop(name, None) is not None
            if not held:
                del self.slots[slot]
        if removed:
            self.count -= 1
            self.hash = None
        return removed

    def items(self, after: OrderKey | None = None) -> Iterator[tuple[str, Entry]]:
        """Entries in listing order, those after ``after`` (an :func:`order_key`) only."""
        first = after[0][self.depth] if after is not None else 0
        for slot in sorted(self.slots):
            if slot < first:
                continue
            bound = after if after is not None and slot == first else None
            held = self._child(slot)
            if isinstance(held, HamtNode):
                yield from held.items(bound)
            elif held is not None:
                keyed = sorted((order_key(n), n) for n in held)
                for key, name in keyed:
                    if bound is None or key > bound:
                        yield name, held[name]

    def flush(self, write: Writer) -> bytes:
        """Write changed nodes, children first; returns this node's hash."""
        if self.hash is not None:
            return self.hash
        bitmap, children, links = 0, [], []
        for slot in sorted(self.slots):
            held = self.slots[slot]
            bitmap |= 1 << slot
            if isinstance(held, tuple):
                children.append([1, link(held[0]), held[1]])
                links.append(held[0])
            elif isinstance(held, HamtNode):
                child_hash = held.flush(write)
                children.append([1, link(child_hash), held.count])
                links.append(child_hash)
            else:
                names = sorted(held, key=order_key)  # not insertion order: one tree per set
                children.append([0, [_entry_cbor(n, held[n]) for n in names]])
                links += [entry_target(e) for e in held.values()]
        data = cbor.dumps({"bitmap": bitmap, "count": self.count, "children": children})
        self.hash = write(data, links)
        return self.hash
