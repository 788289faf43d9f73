"""One output record as a diff against its original: which lines the program removed, which
strings it cut from a line and which it normalized, rebuilt from what the record stores
(`raw_content` and `metadata.prox`), the same way the executor applies edits (cuts on their
lines, normalizations in order on the whole text, then removal of lines).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxkit.io.readers import id_text
from proxkit.program.executor import normalize_text

CATEGORIES = ("dropped", "refined", "unchanged")
MAX_LINES = 400  # lines shown per document in a report


@dataclass(frozen=True)
class Segment:
    text: str
    normalized_from: str | None = None  # the source string this text replaced


@dataclass(frozen=True)
class LineView:
    number: int  # 0-based, as the program numbers lines
    segments: tuple[Segment, ...]
    removed: bool

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)


@dataclass(frozen=True)
class DocumentView:
    id: str
    category: str  # dropped, refined or unchanged
    outcome: str  # e.g. "doc: dropped", "chunk: refined"
    lines: tuple[LineView, ...]
    doc_program: str | None
    chunk_program: str | None
    errors: tuple[str, ...]
    keep_score: float | None
    dropped_at: str | None  # "doc" or "chunk"
    highlighted: bool  # False when normalizations could not be located exactly

    @property
    def has_errors(self) -> bool:
        return bool(self.errors)

    def kept_text(self) -> str:
        """The text the edits leave (before the thresholds judge it)."""
        return "\n".join(line.text for line in self.lines if not line.removed)


def _cut(text: str, cuts: list[list[Any]]) -> list[Segment]:
    """The text with each applied cut shown as an empty segment in place of its string."""
    lines = text.split("\n")
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    places = sorted(
        (starts[line] + lines[line].find(piece), piece)
        for line, piece in cuts
        if 0 <= line < len(lines) and piece in lines[line]
    )
    segments: list[Segment] = []
    position = 0
    for start, piece in places:
        segments += [Segment(text[position : max(start, position)]), Segment("", piece)]
        position = max(position, start + len(piece))
    return [*segments, Segment(text[position:])]


def _normalize(
    text: str, normalizations: list[list[Any]], cuts: list[list[Any]]
) -> tuple[list[Segment], bool]:
    """Apply cuts, then normalizations in order, marking what changed; and whether the marking
    is exact."""
    pairs = [(source, target) for source, target, *_ in normalizations if source]
    segments = _cut(text, cuts)
    expected, _ = normalize_text("".join(s.text for s in segments), pairs)
    for source, target in pairs:
        updated: list[Segment] = []
        for segment in segments:
            if segment.normalized_from is not None or source not in segment.text:
                updated.append(segment)
                continue
            pieces = segment.text.split(source)
            for i, piece in enumerate(pieces):
                if i:
                    updated.append(Segment(target, source))
                if piece:
                    updated.append(Segment(piece))
        segments = updated
    if "".join(s.text for s in segments) != expected:  # a source spanning earlier replacements
        return [Segment(expected)], False
    return segments, True


def _split_lines(segments: list[Segment]) -> list[list[Segment]]:
    lines: list[list[Segment]] = [[]]
    for segment in segments:
        parts = segment.text.split("\n")
        for i, part in enumerate(parts):
            if i:
                lines.append([])
            if part or segment.normalized_from is not None:
                lines[-1].append(Segment(part, segment.normalized_from))
    return lines


def category(prox: dict[str, Any]) -> tuple[str, str | None]:
    """(dropped | refined | unchanged, the stage that dropped it)."""
    for stage in ("doc", "chunk"):
        if str((prox.get(stage) or {}).get("outcome", "")).startswith("dropped"):
            return "dropped", stage
    if (prox.get("chunk") or {}).get("outcome") == "refined":
        return "refined", None
    return "unchanged", None


def document_view(
    record: dict[str, Any], text_field: str = "text", id_field: str = "id"
) -> DocumentView:
    metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    prox = metadata.get("prox") or {}
    original = record.get("raw_content")
    if not isinstance(original, str):
        original = record.get(text_field) or ""
    chunk = prox.get("chunk") or {}
    segments, exact = _normalize(
        original, chunk.get("normalizations") or [], chunk.get("cuts") or []
    )
    removed = {n for start, end in chunk.get("removed_lines") or [] for n in range(start, end + 1)}
    lines = tuple(
        LineView(number, tuple(line), number in removed)
        for number, line in enumerate(_split_lines(segments))
    )
    kind, dropped_at = category(prox)
    outcome = ", ".join(
        f"{stage}: {prox[stage]['outcome']}" for stage in ("doc", "chunk") if prox.get(stage)
    )
    errors = tuple(
        f"{stage}: {error.get('text', '')} ({error.get('reason', '')})"
        for stage in ("doc", "chunk")
        for error in (prox.get(stage) or {}).get("errors") or []
    )
    score = (prox.get("doc_info") or {}).get("keep_score")
    return DocumentView(
        id=id_text(record.get(id_field)),  # as the reader reads ids, so --id finds it
        category=kind,
        outcome=outcome or "not refined",
        lines=lines,
        doc_program=metadata.get("doc_program"),
        chunk_program=metadata.get("chunk_program"),
        errors=errors,
        keep_score=float(score) if isinstance(score, (int, float)) else None,
        dropped_at=dropped_at,
        highlighted=exact,
    )
