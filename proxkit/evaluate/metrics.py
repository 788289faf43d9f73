"""Agreement metrics between a programmer's programs and a teacher's, as pure functions.

Doc level: accuracy and precision/recall/F1 of `drop`, and calibration of the keep score
(expected calibration error over equal-width bins, Brier score). Chunk level: the set of removed
line indices and the set of (source, target) normalizations per document, compared micro-
averaged; and the fraction of words each program keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from proxkit.program.executor import apply_edits, lower_strict


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


def edits_of(text: str, program: str | None) -> Edits:
    edits = lower_strict(program or "")
    result = apply_edits(text, edits)
    removed = frozenset(n for start, end in result.removed_lines for n in range(start, end + 1))
    kept = result.words_after / result.words_before if result.words_before else 1.0
    return Edits(removed, frozenset(edits.normalizations), bool(edits.errors), kept)


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
        "normalize": {**normalizations, "exact_match": exact, "documents": len(with_normalize)},
        "malformed_rate": sum(p.malformed for p, _ in pairs) / n if n else None,
        "words_kept": sum(p.words_kept for p, _ in pairs) / n if n else None,
        "teacher_words_kept": sum(t.words_kept for _, t in pairs) / n if n else None,
        "words_kept_mean_abs_diff": sum(abs(p.words_kept - t.words_kept) for p, t in pairs) / n
        if n
        else None,
    }
