"""Clean-then-diff annotation: a teacher's cleaned text becomes the minimal deletion program.

RefineX (arXiv 2507.03253) lets the teacher write the cleaned text end to end and derives the
program from the difference. Here, for one chunk (the student's lines `first_line..`):

1. The teacher's text is aligned with the chunk's text character by character (`align`).
2. Only pure deletions are kept: original text removed with nothing written in its place.
   What the teacher inserted, and original text it replaced (deleted with something written
   there), cannot be expressed by a deletion program: counted, never applied (applying the
   deletion half of a replacement would glue words: "a&nbsp;b" -> "a b" is not "ab").
3. A line whose every character was deleted, together with a line break next to it, becomes
   `remove_lines` (ranges of consecutive lines). Each such line takes a deleted line break
   before it, else after it, leftmost first, which pairs as many as can be paired. A deleted
   line break left over would join two kept lines: inexpressible, counted. A line emptied but
   whose line breaks the teacher kept becomes a cut of its whole text (an empty line stays, as
   the teacher left it). A chunk deleted entirely loses all its lines.
4. Each other run of deleted characters inside a line becomes `remove_str(line=N,
   del_str=...)`, which needs its string to occur once in the line. A run that does not is
   slid to an equivalent place (deleting "ab" from "abab c" at 0 or at 2, or "ba" at 1, leaves
   the same text) where its string is unique; if there is none, extending it would delete
   what the teacher kept and splitting it cannot make its pieces rarer, so the run is
   counted as inexpressible (`not_unique`) and left in place.

`Derivation` records the program and its fidelity: of the characters the teacher deleted, how
many the program deletes (`fidelity`), and whether the program leaves exactly the teacher's
text (`exact`). The program never deletes a character the teacher kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from proxkit.chunking import Chunk, chunk_content
from proxkit.program.ops import (
    Operation,
    Program,
    RemoveLines,
    RemoveStr,
    removals,
    unique_position,
)
from proxkit.synth.align import Block, align
from proxkit.synth.teacher import Invalid

OPEN, CLOSE = "<<<CLEAN", "CLEAN>>>"
SOLID_PIECE = 8  # shorter kept pieces that are not whole lines look like chance matches


@dataclass(frozen=True)
class Derivation:
    """A derived program and how much of the teacher's cleaning it reproduces (characters)."""

    program: Program
    cleaned: str  # the teacher's text
    deleted: int  # original characters the teacher removed, in deletions and replacements
    reproduced: int  # of those, removed by the program
    inserted: int  # characters the teacher wrote that are not in the original
    replaced: int  # original characters the teacher replaced with other text
    not_unique: int  # deleted inside a line where no equivalent cut is unique
    newlines: int  # line breaks deleted between kept lines (lines joined)
    longest_insertion: int  # the longest run of characters the teacher wrote
    scattered: int  # kept characters found only in short pieces (`read_clean_answer`)
    text: str  # what the program leaves of the original

    @property
    def exact(self) -> bool:
        """Whether the program leaves exactly the teacher's text."""
        return self.text == self.cleaned

    @property
    def program_text(self) -> str:
        return self.program.to_text() or "keep_doc()"

    @property
    def fidelity(self) -> float:
        return self.reproduced / self.deleted if self.deleted else 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "fidelity": round(self.fidelity, 6),
            "exact": self.exact,
            "deleted_chars": self.deleted,
            "reproduced_chars": self.reproduced,
            "inexpressible_chars": {
                "inserted": self.inserted,
                "replaced": self.replaced,
                "not_unique": self.not_unique,
                "newlines": self.newlines,
            },
            "longest_insertion": self.longest_insertion,
        }


def derive(original: str, cleaned: str, first_line: int = 0) -> Derivation:
    """The minimal deletion program (lines numbered from `first_line`) that takes `original`
    towards `cleaned`, and its fidelity (module doc)."""
    blocks = align(original, cleaned)
    deleted = bytearray(len(original))  # 1: removed by a pure deletion
    inserted = replaced = longest = 0
    position_o = position_t = 0
    for start_o, start_t, size in [*blocks, (len(original), len(cleaned), 0)]:
        gap_o, gap_t = start_o - position_o, start_t - position_t
        if gap_o and not gap_t:
            deleted[position_o:start_o] = b"\x01" * gap_o
        replaced += gap_o if gap_t else 0
        inserted += gap_t
        longest = max(longest, gap_t)
        position_o, position_t = start_o + size, start_t + size
    matched = sum(size for _, _, size in blocks)

    lines = original.split("\n")
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    removed = _whole_lines(lines, starts, deleted)
    breaks_taken = sum(1 for taken in removed.values() if taken is not None)
    breaks_deleted = sum(deleted[starts[i + 1] - 1] for i in range(len(lines) - 1))

    operations: list[Operation] = []
    kept_lines: list[str] = []
    cut_chars = not_unique = 0
    for number, line in enumerate(lines):
        if number in removed:
            continue
        runs = _runs(deleted, starts[number], starts[number] + len(line))
        cuts, left = _unique_cuts(line, runs)
        not_unique += left
        pieces, position = [], 0
        for start, end in cuts:
            operations.append(RemoveStr(first_line + number, line[start:end]))
            cut_chars += end - start
            pieces.append(line[position:start])
            position = end
        pieces.append(line[position:])
        kept_lines.append("".join(pieces))
    ranges = [
        RemoveLines(first_line + r.start, first_line + r.end) for r in removals(sorted(removed))
    ]
    operations = sorted([*ranges, *operations], key=_first_line)
    text = "\n".join(kept_lines)
    return Derivation(
        program=Program(tuple(operations)),
        cleaned=cleaned,
        deleted=len(original) - matched,
        reproduced=sum(len(lines[i]) for i in removed) + breaks_taken + cut_chars,
        inserted=inserted,
        replaced=replaced,
        not_unique=not_unique,
        newlines=breaks_deleted - breaks_taken,
        longest_insertion=longest,
        scattered=_scattered(blocks, cleaned),
        text=text,
    )


def _first_line(op: Operation) -> int:
    return op.line if isinstance(op, RemoveStr) else op.start  # type: ignore[union-attr]


def _whole_lines(lines: list[str], starts: list[int], deleted: bytearray) -> dict[int, int | None]:
    """Lines removed whole -> the line break each takes (the index of the line before it;
    None: the chunk's edge, taken only when the teacher deleted the whole chunk)."""
    if deleted and deleted.find(0) < 0:
        return {number: number if number < len(lines) - 1 else None for number in range(len(lines))}

    def gone(number: int) -> bool:
        return deleted.find(0, starts[number], starts[number] + len(lines[number])) < 0

    def free_break(index: int) -> bool:  # the line break after line `index`
        return 0 <= index < len(lines) - 1 and deleted[starts[index + 1] - 1] == 1

    removed: dict[int, int | None] = {}
    taken: set[int] = set()
    for number in range(len(lines)):
        if not gone(number):
            continue
        for index in (number - 1, number):  # the break before, else the one after
            if index not in taken and free_break(index):
                taken.add(index)
                removed[number] = index
                break
    return removed


def _runs(deleted: bytearray, start: int, end: int) -> list[tuple[int, int]]:
    """Runs of deleted characters in [start, end), relative to `start`."""
    runs: list[tuple[int, int]] = []
    position = deleted.find(1, start, end)
    while position >= 0:
        stop = deleted.find(0, position, end)
        stop = end if stop < 0 else stop
        runs.append((position - start, stop - start))
        position = deleted.find(1, stop, end)
    return runs


def _unique_cuts(line: str, runs: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], int]:
    """Each run placed where its string is unique in `line` (sliding it over equal
    characters, never onto a neighbouring run); the characters of runs with no such place."""
    cuts: list[tuple[int, int]] = []
    left = 0
    for index, (start, end) in enumerate(runs):
        floor = runs[index - 1][1] + 1 if index else 0
        ceiling = runs[index + 1][0] - 1 if index + 1 < len(runs) else len(line)
        for candidate_start, candidate_end in _placements(line, start, end, floor, ceiling):
            if unique_position(line[candidate_start:candidate_end], line) is not None:
                cuts.append((candidate_start, candidate_end))
                break
        else:
            left += end - start
    return cuts, left


def _placements(line: str, start: int, end: int, floor: int, ceiling: int):
    """The run itself, then the places it slides to leaving the same text (left, then right)."""
    yield start, end
    a, b = start, end
    while a - 1 >= floor and line[a - 1] == line[b - 1]:
        a, b = a - 1, b - 1
        yield a, b
    a, b = start, end
    while b + 1 <= ceiling and line[a] == line[b]:
        a, b = a + 1, b + 1
        yield a, b


def _scattered(blocks: list[Block], cleaned: str) -> int:
    """Characters of `cleaned` (line breaks aside) matched only in pieces shorter than
    SOLID_PIECE that are not whole lines: what an unrelated answer aligns as."""
    count = 0
    for _, start, size in blocks:
        if size >= SOLID_PIECE:
            continue
        piece = cleaned[start : start + size]
        line_start = start == 0 or cleaned[start - 1] == "\n"
        line_end = (
            start + size == len(cleaned) or cleaned[start + size] in "\n" or piece[-1] == "\n"
        )
        if not (line_start and line_end):
            count += len(piece.replace("\n", ""))
    return count


def read_clean_answer(text: str, chunk: Chunk, max_insertion: int) -> Derivation | Invalid:
    """The teacher's cleaned text between the markers, and its derived program; or `Invalid`
    when the answer is empty, lacks the markers or its end, rewrites (an insertion of
    `max_insertion` characters or more, RefineX's filter), or is unrelated to the chunk (more
    than half of what it keeps matches only in scattered short pieces)."""
    if not text.strip():
        return Invalid("empty", "the answer is empty")
    opened = text.find(OPEN)
    if opened < 0:
        return Invalid("no_markers", f"the cleaned text must follow a line {OPEN}")
    body = text[opened + len(OPEN) :]
    closed = body.rfind(CLOSE)
    if closed < 0:
        return Invalid("no_end_marker", f"the cleaned text must end with a line {CLOSE}")
    cleaned = re.sub(r"^[ \t]*\n", "", body[:closed], count=1)
    cleaned = cleaned[:-1] if cleaned.endswith("\n") else cleaned
    original = chunk_content(chunk.text)
    derivation = derive(original, cleaned, chunk.first_line)
    if derivation.longest_insertion >= max_insertion:
        return Invalid(
            "rewritten",
            f"{derivation.longest_insertion} characters in a row are not in the text; "
            "only delete, never rewrite or add",
        )
    kept = len(cleaned.replace("\n", ""))
    if kept and derivation.scattered * 2 > kept:
        return Invalid(
            "unrelated", "the answer is not the text with parts deleted; return the text itself"
        )
    return derivation
