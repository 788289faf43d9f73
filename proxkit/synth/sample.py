"""Seeded, length-stratified sampling of documents in one streaming pass.

Documents fall into strata by word count (edges `LENGTH_EDGES`). Each document gets a priority
from a hash of the seed and its id, so the sample does not depend on file order or on how the
corpus is split; each stratum keeps its lowest-priority documents (at most `size` of them,
which bounds memory), and the sample takes from each stratum in proportion to its size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from proxkit.io.readers import Document
from proxkit.seeded import Lowest, priority

LENGTH_EDGES = (50, 100, 200, 400, 800, 1600, 3200)  # words


def stratum(text: str) -> int:
    words = len(text.split())
    return sum(words >= edge for edge in LENGTH_EDGES)


def rank(seed: int, document: Document) -> tuple[int, int, int]:
    """Sampling order: the id's seeded priority; source and position break ties."""
    return priority(seed, document.id), priority(seed, document.source), document.position


def allocate(populations: dict[int, int], size: int) -> dict[int, int]:
    """Per-stratum sample sizes proportional to populations (largest remainder), summing to
    min(size, total)."""
    total = sum(populations.values())
    size = min(size, total)
    if not total:
        return {}
    exact = {s: size * n / total for s, n in populations.items()}
    counts = {s: int(e) for s, e in exact.items()}
    by_remainder = sorted(exact, key=lambda s: (-(exact[s] - counts[s]), s))
    for s in by_remainder[: size - sum(counts.values())]:
        counts[s] += 1
    return counts


@dataclass(frozen=True)
class Sample:
    documents: list[Document]  # ordered by priority: a deterministic, shuffled order
    strata: list[int]  # each document's stratum
    populations: dict[int, int]  # documents seen per stratum
    allocation: dict[int, int]  # documents taken per stratum


def sample_documents(documents: Iterable[Document], size: int, seed: int = 0) -> Sample:
    kept: dict[int, Lowest[Document]] = {}
    populations: dict[int, int] = {}
    for document in documents:
        s = stratum(document.text)
        populations[s] = populations.get(s, 0) + 1
        kept.setdefault(s, Lowest(size)).offer(rank(seed, document), document)
    allocation = allocate(populations, size)
    chosen = [
        (order, s, document)
        for s, count in allocation.items()
        for order, document in kept[s].items()[:count]
    ]
    chosen.sort(key=lambda c: c[0])
    return Sample(
        [d for _, _, d in chosen],
        [s for _, s, _ in chosen],
        dict(sorted(populations.items())),
        dict(sorted(allocation.items())),
    )
