"""Execute ProX programs on documents: doc level (keep/drop) and chunk level (edit, then judge).

Chunk level (`edit`): line-anchored cuts (`remove_str`) first, each matched against its line
as the model read it; then normalizations in order, on the whole text; then removal of lines.
No operation adds or removes a newline, so all three number lines alike, as the prompt did. A
cut on a line that is also removed is checked and counted like any other, and then goes with
its line. The reference thresholds (`Thresholds`) then decide whether the refined text is kept,
the document dropped, or the program ignored. Both parsing modes (`strict`, `reference`) lower
a program to `ChunkEdits` and share everything after that, so they can only differ in parsing.

Deletion only (`deletion_only=True`): operations that are not deletions (`ops.is_deletion`)
are not applied, each recorded in `not_applied` (not counted as errors: the program is not
malformed, it asks for what this run does not allow). Every output is then checked to be a
subsequence of the document; one that is not (which would be a bug) leaves the document
unrefined with the outcome `not_a_subsequence`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from proxkit.program import reference
from proxkit.program.ops import (
    ChunkEdits,
    DropDoc,
    KeepDoc,
    Normalize,
    ProgramError,
    RemoveAllLines,
    RemoveLines,
    RemoveStr,
    is_subsequence,
    operation_to_text,
    unique_position,
)
from proxkit.program.parser import parse

Mode = Literal["strict", "reference"]
MODES: tuple[Mode, ...] = ("strict", "reference")


@dataclass(frozen=True)
class Thresholds:
    """When a chunk-level result is kept, dropped or ignored (defaults: the reference's).

    - `min_kept_ratio` (reference `threshold_1`): the refined text is used only when
      words(refined) / words(original) is at least this.
    - `max_removed_ratio` (reference `threshold_2`): the document is dropped when
      words(refined) / words(original) <= 1 - this, unless the program has too many errors.
    - `error_limit` (reference `error_op`): a program with this many errors or more is ignored
      and the original text kept.
    - `short_doc_words`: a refined text of at most this many words is dropped (the reference's
      rule taken from FineWeb).
    """

    min_kept_ratio: float = 0.0
    max_removed_ratio: float = 0.95
    error_limit: int = 2
    short_doc_words: int = 10


class Outcome(str, Enum):
    KEPT = "kept"  # doc level: keep_doc()
    DROPPED = "dropped"  # doc level: drop_doc()
    REFINED = "refined"  # chunk level: program applied, text changed
    UNCHANGED = "unchanged"  # chunk level: program applied, nothing to change
    PROGRAM_IGNORED = "program_ignored"  # chunk level: too many errors, original text kept
    DROPPED_MOSTLY_REMOVED = "dropped_mostly_removed"  # chunk level: program removed ~everything
    DROPPED_TOO_SHORT = "dropped_too_short"  # chunk level: refined text too short
    DROPPED_EMPTY = "dropped_empty"  # the document has no words at all
    NOT_A_SUBSEQUENCE = (
        "not_a_subsequence"  # deletion only: the output gained characters; kept unrefined
    )
    ABOVE_SCORE_BAND = "above_score_band"  # chunk stage not run: keep score above the band
    BELOW_SCORE_BAND = "below_score_band"  # chunk stage not run: keep score below the band

    @property
    def is_drop(self) -> bool:
        return self.value.startswith("dropped")


@dataclass(frozen=True)
class ExecutionResult:
    """What executing one program on one document did."""

    text: str  # the output text: refined, original, or "" when dropped
    outcome: Outcome
    removed_lines: tuple[tuple[int, int], ...] = ()  # merged inclusive ranges actually removed
    normalizations: tuple[tuple[str, str, int], ...] = ()  # (source, target, occurrences)
    errors: tuple[ProgramError, ...] = ()
    words_before: int = 0
    words_after: int = 0
    cuts: tuple[tuple[int, str], ...] = ()  # (line, text) line-anchored cuts applied
    not_applied: tuple[ProgramError, ...] = ()  # deletion only: operations left out, and why

    @property
    def dropped(self) -> bool:
        return self.outcome.is_drop

    def to_metadata(self) -> dict[str, Any]:
        """A JSON-ready summary for the output record's metadata (`cuts` and `not_applied`
        only where there are some, so records of programs without them are as they were)."""
        metadata: dict[str, Any] = {
            "outcome": self.outcome.value,
            "removed_lines": [list(r) for r in self.removed_lines],
            "normalizations": [list(n) for n in self.normalizations],
            "errors": _json_errors(self.errors),
            "words_before": self.words_before,
            "words_after": self.words_after,
        }
        if self.cuts:
            metadata["cuts"] = [list(c) for c in self.cuts]
        if self.not_applied:
            metadata["not_applied"] = _json_errors(self.not_applied)
        return metadata


def _json_errors(errors: Sequence[ProgramError]) -> list[dict[str, Any]]:
    return [{"line": e.line, "text": e.text, "reason": e.reason} for e in errors]


def execute_doc(text: str, program_text: str, mode: Mode = "strict") -> ExecutionResult:
    """Doc level: keep or drop the whole document."""
    words = len(text.split())
    if mode == "reference":
        drop = reference.doc_program_drops(program_text)
        errors: tuple[ProgramError, ...] = ()
    else:
        program = parse(program_text)
        wrong_stage = tuple(
            ProgramError(0, type(op).__name__, "not a doc-level operation")
            for op in program.operations
            if not isinstance(op, (KeepDoc, DropDoc))
        )
        errors = program.errors + wrong_stage
        drop = any(isinstance(op, DropDoc) for op in program.operations)
    if drop:
        return ExecutionResult("", Outcome.DROPPED, errors=errors, words_before=words)
    return ExecutionResult(text, Outcome.KEPT, errors=errors, words_before=words, words_after=words)


def lower_strict(program_text: str) -> ChunkEdits:
    """Parse a chunk-level program with the strict parser and lower it to edits."""
    program = parse(program_text)
    normalizations: list[tuple[str, str]] = []
    ranges: list[tuple[int, int]] = []
    cuts: list[tuple[int, str]] = []
    remove_all = False
    errors = list(program.errors)
    for op in program.operations:
        if isinstance(op, RemoveStr):
            cuts.append((op.line, op.text))
        elif isinstance(op, Normalize):
            # An empty or single-space source is a no-op in ProX (it would shred the text).
            if op.source not in ("", " "):
                normalizations.append((op.source, op.target))
        elif isinstance(op, RemoveLines):
            ranges.append((op.start, op.end))
        elif isinstance(op, RemoveAllLines):
            remove_all = True
        elif isinstance(op, DropDoc):
            errors.append(ProgramError(0, "drop_doc()", "drop_doc() is a doc-level operation"))
    return ChunkEdits(
        tuple(normalizations), tuple(ranges), remove_all, tuple(errors), cuts=tuple(cuts)
    )


def lower(program_text: str, mode: Mode) -> ChunkEdits:
    if mode == "reference":
        return reference.read_chunk_program(program_text)
    if mode == "strict":
        return lower_strict(program_text)
    raise ValueError(f"unknown parsing mode {mode!r}; expected one of {MODES}")


def execute_chunk(
    text: str,
    program_text: str,
    mode: Mode = "strict",
    thresholds: Thresholds = Thresholds(),
    deletion_only: bool = False,
) -> ExecutionResult:
    """Chunk level: run the (joined) chunk programs of one document on its whole text."""
    return apply_edits(text, lower(program_text, mode), thresholds, deletion_only)


def _merge_as_reference(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort by start and merge overlapping or adjacent ranges (the reference's merge)."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges, key=lambda r: r[0]):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def normalize_text(
    text: str, normalizations: Sequence[tuple[str, str]]
) -> tuple[str, list[tuple[str, str, int]]]:
    """Replace every occurrence of each source, in order; and (source, target, occurrences)."""
    applied: list[tuple[str, str, int]] = []
    for source, target in normalizations:
        if not source:
            continue
        occurrences = text.count(source)
        if occurrences:
            text = text.replace(source, target)
        applied.append((source, target, occurrences))
    return text, applied


@dataclass(frozen=True)
class Edited:
    """What edits leave of a document, before the thresholds judge it."""

    lines: tuple[str, ...]  # every line after cuts and normalizations, numbered as the original
    removed: tuple[tuple[int, int], ...]  # merged inclusive ranges removed
    cuts: tuple[tuple[int, str], ...]  # (line, text) cuts applied
    normalizations: tuple[tuple[str, str, int], ...]  # (source, target, occurrences)
    errors: tuple[ProgramError, ...]

    @property
    def text(self) -> str:
        if not self.removed:
            return "\n".join(self.lines)
        kept: list[str] = []
        position = 0
        for start, end in self.removed:
            kept.extend(self.lines[position:start])
            position = end + 1
        kept.extend(self.lines[position:])
        return "\n".join(kept)


def edit(text: str, edits: ChunkEdits) -> Edited:
    """Apply lowered edits to a document: cuts, normalizations, line removal (module doc)."""
    errors = list(edits.errors)
    cut_text, cuts = _cut(text, edits.cuts, errors)
    normalized, applied = normalize_text(cut_text, edits.normalizations)

    lines = normalized.split("\n")
    count = len(lines)
    for start, end in _merge_as_reference(list(edits.ranges)):
        if start >= count:
            errors.append(
                ProgramError(0, f"{start}..{end}", f"range starts past the last line {count - 1}")
            )
        elif end >= count:
            errors.append(
                ProgramError(
                    0, f"{start}..{end}", f"range ends past the last line {count - 1} (clipped)"
                )
            )

    if edits.remove_all:
        valid = [(0, count - 1)]
    else:
        valid = [(max(s, 0), min(e, count - 1)) for s, e in edits.ranges]
        valid = [(s, e) for s, e in valid if s <= e]
    removed = _merge_as_reference(valid)
    return Edited(tuple(lines), tuple(removed), cuts, tuple(applied), tuple(errors))


def _cut(
    text: str, cuts: Sequence[tuple[int, str]], errors: list[ProgramError]
) -> tuple[str, tuple[tuple[int, str], ...]]:
    """The text with each cut applied where its string occurs exactly once in its original
    line; the cuts applied. Cuts of one line that overlap remove their union."""
    if not cuts:
        return text, ()
    lines = text.split("\n")
    spans: dict[int, list[tuple[int, int]]] = {}
    applied: list[tuple[int, str]] = []
    for line, piece in cuts:
        written = operation_to_text(RemoveStr(line, piece))
        if line >= len(lines):
            errors.append(
                ProgramError(0, written, f"line {line} is past the last line {len(lines) - 1}")
            )
            continue
        found = unique_position(piece, lines[line])
        if found is None:
            where = "is not in" if piece not in lines[line] else "occurs more than once in"
            errors.append(ProgramError(0, written, f"the string {where} line {line}"))
        else:
            spans.setdefault(line, []).append((found, found + len(piece)))
            applied.append((line, piece))
    for line, places in spans.items():
        original, pieces, position = lines[line], [], 0
        for start, end in sorted(places):
            pieces.append(original[position : max(start, position)])
            position = max(position, end)
        pieces.append(original[position:])
        lines[line] = "".join(pieces)
    return "\n".join(lines), tuple(applied)


def apply_edits(
    text: str,
    edits: ChunkEdits,
    thresholds: Thresholds = Thresholds(),
    deletion_only: bool = False,
) -> ExecutionResult:
    """Apply lowered edits to a document and judge the result with the thresholds; with
    `deletion_only`, only deletions, and an output that is a subsequence of `text`."""
    if deletion_only:
        edits = edits.deletions_only()
    edited = edit(text, edits)
    refined = edited.text
    words_before = len(text.split())
    words_after = len(refined.split())
    outcome = judge(words_before, words_after, len(edited.errors), thresholds)
    if outcome is Outcome.REFINED and refined == text:
        outcome = Outcome.UNCHANGED
    output = "" if outcome.is_drop else text if outcome is Outcome.PROGRAM_IGNORED else refined
    if deletion_only and not is_subsequence(output, text):
        refused = ProgramError(
            0, "the whole program", "its output is not a subsequence of the document"
        )
        return ExecutionResult(
            text,
            Outcome.NOT_A_SUBSEQUENCE,
            errors=edited.errors,
            words_before=words_before,
            words_after=words_before,
            not_applied=(*edits.not_applied, refused),
        )
    return ExecutionResult(
        output,
        outcome,
        edited.removed,
        edited.normalizations,
        edited.errors,
        words_before,
        words_after,
        cuts=edited.cuts,
        not_applied=edits.not_applied,
    )


def judge(words_before: int, words_after: int, num_errors: int, thresholds: Thresholds) -> Outcome:
    """The reference's decision, in its order; `REFINED` means 'use the refined text'."""
    if words_before == 0:
        return Outcome.DROPPED_EMPTY
    ratio = words_after / words_before * 1.0
    few_errors = num_errors < thresholds.error_limit
    if ratio <= (1 - thresholds.max_removed_ratio) and few_errors:
        return Outcome.DROPPED_MOSTLY_REMOVED
    if words_after <= thresholds.short_doc_words:
        return Outcome.DROPPED_TOO_SHORT
    if ratio >= thresholds.min_kept_ratio and few_errors:
        return Outcome.REFINED
    return Outcome.PROGRAM_IGNORED
