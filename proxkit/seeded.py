"""Seeded choices that do not depend on input order: a priority hashed from (seed, key), and a
bounded keeper of the lowest-priority items. Sampling, train/validation splits and the report's
document sample all choose this way, so a choice is the same however the corpus is split."""

from __future__ import annotations

import hashlib
import heapq
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")


def priority(seed: int, key: str, salt: str = "") -> int:
    """A uniform 64-bit integer for `key` under `seed` (`salt` separates unrelated uses)."""
    digest = hashlib.blake2b(f"{salt}\0{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Lowest(Generic[Item]):
    """Keeps the `size` items of lowest rank offered (ranks: any comparable, unique values)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.heap: list[tuple[Any, Item]] = []  # a max-heap through negated ranks

    def offer(self, rank: tuple[int, ...], item: Item) -> None:
        entry = (tuple(-r for r in rank), item)
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, entry)  # type: ignore[misc]
        elif entry[0] > self.heap[0][0]:
            heapq.heapreplace(self.heap, entry)  # type: ignore[misc]

    def items(self) -> list[tuple[tuple[int, ...], Item]]:
        """(rank, item), lowest rank first."""
        return sorted(
            ((tuple(-r for r in key), item) for key, item in self.heap), key=lambda e: e[0]
        )
