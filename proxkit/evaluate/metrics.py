"""Agreement metrics between a programmer's programs and a teacher's, as pure functions.

Doc level: accuracy and precision/recall/F1 of `drop`, and calibration of the keep score
(expected calibration error over equal-width bins, Brier score). Chunk level: the set of removed
line indices and the set of (source, target) normalizations per document, compared micro-
averaged; the fraction of words each program keeps; and the characters each program deletes
(`deleted_spans`), compared as over-deletion (text the student removed that the teacher kept)
and under-deletion (text the teacher removed that the student kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from proxkit.program.executor import Edited, apply_edits, edit, lower_strict
from proxkit.program.ops import is_subsequence
from proxkit.synth.align import MAX_BLOCK_EDITS, Block, myers


def precision_recall_f1(true_positive: int, predicted: int, actual: int) -> dict[str, float | None]:
    """None where a ratio has nothing to count (no prediction, no positive, neither)."""
    return {
        "precision": true_positive / predicted if predicted else None,
        "recall": true_positive / actual if actual else None,
        "f1": 2 * true_positive / (predicted + actual) if predicted + actual else None,
    }


def drop_scores(
    predicted_drop: Sequence[bool], teacher_drop: Sequence[bool]
) -> dict[str, float | None]:
    pairs = list(zip(predicted_drop, teacher_drop))
    both = sum(p and t for p, t in pairs)
    return {
        "accuracy": sum(p == t for p, t in pairs) / len(pairs) if pairs else None,
        **precision_recall_f1(both, sum(predicted_drop), sum(teacher_drop)),
    }


def calibration(keep_scores: Sequence[float], teacher_keep: Sequence[bool], bins: int = 10) -> dict:
    """How well the keep score predicts the teacher's keep: ECE, Brier score, and per bin the
    mean score against the teacher's keep rate."""
    pairs = list(zip(keep_scores, teacher_keep))
    if not pairs:
        return {"ece": None, "brier": None, "bins": []}
    table = []
    ece = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        members = [(s, k) for s, k in pairs if low <= s < high or (b == bins - 1 and s == 1.0)]
        if not members:
            continue
        mean_score = sum(s for s, _ in members) / len(members)
        keep_rate = sum(k for _, k in members) / len(members)
        ece += len(members) / len(pairs) * abs(mean_score - keep_rate)
        table.append(
            {
                "range": [low, high],
                "count": len(members),
                "mean_score": mean_score,
                "teacher_keep_rate": keep_rate,
            }
        )
    brier = sum((s - k) ** 2 for s, k in pairs) / len(pairs)
    return {"ece": ece, "brier": brier, "bins": table}


@dataclass(frozen=True)
class Edits:
    """What a chunk-level program does to one document, as comparable sets."""

    removed: frozenset[int]
    normalizations: frozenset[tuple[str, str]]
    malformed: bool
    words_kept: float  # fraction of the document's words the program keeps (after thresholds)
    deleted: tuple[tuple[int, int], ...] = ()  # character ranges of the document it deletes
    length: int = 0  # characters of the document
    not_applied: int = 0  # operations --deletion-only left out


def edits_of(text: str, program: str | None, deletion_only: bool = False) -> Edits:
    edits = lower_strict(program or "")
    if deletion_only:
        edits = edits.deletions_only()
    result = apply_edits(text, edits)
    removed = frozenset(n for start, end in result.removed_lines for n in range(start, end + 1))
    kept = result.words_after / result.words_before if result.words_before else 1.0
    return Edits(
        removed,
        frozenset(edits.normalizations),
        bool(edits.errors),
        kept,
        deleted_spans(text, edit(text, edits)),
        len(text),
        len(edits.not_applied),
    )


def deleted_spans(text: str, edited: Edited) -> tuple[tuple[int, int], ...]:
    """The characters of `text` the edits delete, before the thresholds judge: each run of
    removed lines with the line break after it (before it, at the end of the text), and inside
    the other lines what is missing from the edited line (a replaced character counts as
    deleted). The same edited line always gives the same ranges, so programs compare fairly."""
    lines = text.split("\n")
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    spans: list[tuple[int, int]] = []
    removed: set[int] = set()
    for first, last in edited.removed:
        removed.update(range(first, last + 1))
        if last < len(lines) - 1:
            spans.append((starts[first], starts[last + 1]))
        else:
            spans.append((max(starts[first] - 1, 0), len(text)))
    for number, (line, after) in enumerate(zip(lines, edited.lines)):
        if number not in removed and line != after:
            spans += [(starts[number] + a, starts[number] + b) for a, b in _missing(line, after)]
    return tuple(_union(spans))


def _missing(line: str, after: str) -> list[tuple[int, int]]:
    """Ranges of `line` with no counterpart in `after`."""
    if is_subsequence(after, line):
        blocks: list[Block] = []
        position = 0
        for j, char in enumerate(after):  # the leftmost embedding: linear, and shortest
            position = line.index(char, position)
            blocks.append((position, j, 1))
            position += 1
    else:
        blocks = myers(line, after, MAX_BLOCK_EDITS) or []
    gaps, position = [], 0
    for i, _, size in [*blocks, (len(line), 0, 0)]:
        if i > position:
            gaps.append((position, i))
        position = i + size
    return gaps


def _union(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        elif end > start:
            merged.append((start, end))
    return merged


def _overlap(a: tuple[tuple[int, int], ...], b: tuple[tuple[int, int], ...]) -> int:
    """Characters in both sets of disjoint sorted ranges."""
    total = i = j = 0
    while i < len(a) and j < len(b):
        total += max(0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def character_scores(predicted: Sequence[Edits], teacher: Sequence[Edits]) -> dict:
    """Deleted characters compared, micro-averaged: precision/recall/F1 of deletion, and
    over-deletion (share of the text the teacher kept that the student deleted) and
    under-deletion (share of the teacher's deletions the student kept)."""
    both = deleted = teacher_deleted = teacher_kept = 0
    for p, t in zip(predicted, teacher):
        both += _overlap(p.deleted, t.deleted)
        deleted += sum(end - start for start, end in p.deleted)
        removed_by_teacher = sum(end - start for start, end in t.deleted)
        teacher_deleted += removed_by_teacher
        teacher_kept += t.length - removed_by_teacher
    return {
        **precision_recall_f1(both, deleted, teacher_deleted),
        "deleted": deleted,
        "teacher_deleted": teacher_deleted,
        "over_deleted": deleted - both,
        "under_deleted": teacher_deleted - both,
        "over_deletion_rate": (deleted - both) / teacher_kept if teacher_kept else None,
        "under_deletion_rate": (teacher_deleted - both) / teacher_deleted
        if teacher_deleted
        else None,
    }


def chunk_scores(predicted: Sequence[Edits], teacher: Sequence[Edits]) -> dict:
    pairs = list(zip(predicted, teacher))
    lines = precision_recall_f1(
        sum(len(p.removed & t.removed) for p, t in pairs),
        sum(len(p.removed) for p, _ in pairs),
        sum(len(t.removed) for _, t in pairs),
    )
    normalizations = precision_recall_f1(
        sum(len(p.normalizations & t.normalizations) for p, t in pairs),
        sum(len(p.normalizations) for p, _ in pairs),
        sum(len(t.normalizations) for _, t in pairs),
    )
    with_normalize = [(p, t) for p, t in pairs if p.normalizations or t.normalizations]
    exact = (
        sum(p.normalizations == t.normalizations for p, t in with_normalize) / len(with_normalize)
        if with_normalize
        else None
    )
    n = len(pairs)
    return {
        "documents": n,
        "line_removal": lines,
        "characters": character_scores(predicted, teacher),
        "normalize": {**normalizations, "exact_match": exact, "documents": len(with_normalize)},
        "malformed_rate": sum(p.malformed for p, _ in pairs) / n if n else None,
        "edits_not_applied": sum(p.not_applied for p, _ in pairs),
        "words_kept": sum(p.words_kept for p, _ in pairs) / n if n else None,
        "teacher_words_kept": sum(t.words_kept for _, t in pairs) / n if n else None,
        "words_kept_mean_abs_diff": sum(abs(p.words_kept - t.words_kept) for p, t in pairs) / n
        if n
        else None,
    }
