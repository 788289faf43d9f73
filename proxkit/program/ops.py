"""The ProX program space as data: typed operations and their canonical text form.

A program is what a refining model writes for one document (doc level) or one chunk (chunk
level). It is parsed once, at the edge, into these frozen dataclasses; the executor only ever
sees operations, never model text.

Deletions (`is_deletion`): `remove_lines`, `remove_str` and a `normalize` whose target is a
subsequence of its source (an empty target, or "!!!" -> "!") can only take characters out of a
text. Every other operation may add or change characters; `--deletion-only` does not apply
them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class KeepDoc:
    """`keep_doc()`: keep the document (doc level) or leave the chunk as it is (chunk level)."""


@dataclass(frozen=True)
class DropDoc:
    """`drop_doc()`: drop the whole document (doc level only)."""


@dataclass(frozen=True)
class RemoveLines:
    """`remove_lines(line_start=S, line_end=E)`: remove document lines S..E, both inclusive."""

    start: int
    end: int


@dataclass(frozen=True)
class RemoveAllLines:
    """`remove_lines(all=True)`: remove every line of the document."""


@dataclass(frozen=True)
class RemoveStr:
    """`remove_str(line=N, del_str="...")`: cut one string out of one numbered line.

    The line-anchored cut of RefineX (arXiv 2507.03253). `line` is the 0-based document line,
    numbered as in the prompt (`[NNN]`) and as `remove_lines` numbers them. `text` is matched
    against that line as the model read it (before any `normalize`) and is cut only where it
    occurs exactly once in it (overlapping occurrences count): otherwise the operation is a
    program error, counted like a malformed one, and the line is left as it is. It never touches
    any other line. The text is not empty and holds no newline (the parser refuses both).
    """

    line: int
    text: str


@dataclass(frozen=True)
class Normalize:
    """`normalize(source_str=.., target_str=..)`: replace every occurrence of source by target."""

    source: str
    target: str = ""


Operation = KeepDoc | DropDoc | RemoveLines | RemoveAllLines | RemoveStr | Normalize


def is_subsequence(part: str, whole: str) -> bool:
    """Whether `part` is `whole` with some characters taken out (in order, none added).

    Refined texts are mostly whole lines of their original, so each line of `part` is first
    looked for as one piece; any embedding found that way proves the answer. Only when it
    fails (greedy pieces can overshoot) is the exact leftmost, character by character, run.
    """
    if len(part) > len(whole):
        return False
    if whole.startswith(part):
        return True
    position = 0
    for piece in part.splitlines(keepends=True):
        found = whole.find(piece, position)
        if found >= 0:
            position = found + len(piece)
            continue
        for char in piece:
            position = whole.find(char, position) + 1
            if position == 0:
                remaining = iter(whole)
                return all(char in remaining for char in part)
    return True


def unique_position(piece: str, line: str) -> int | None:
    """Where `piece` occurs in `line` when it occurs exactly once (overlapping occurrences
    count), else None: the condition under which `remove_str` cuts."""
    first = line.find(piece)
    if first < 0 or line.find(piece, first + 1) >= 0:
        return None
    return first


def is_deletion(op: Operation) -> bool:
    """Whether the operation can only take characters out of a document (see the module doc):
    what `--deletion-only` applies. `keep_doc()` and `drop_doc()` change no text."""
    if isinstance(op, Normalize):
        return is_subsequence(op.target, op.source)
    return True


@dataclass(frozen=True)
class ProgramError:
    """One program line that could not be read or executed.

    `line` is the 1-based line of the program text (0 for errors that belong to no single line,
    such as a range past the end of the document found while executing).
    """

    line: int
    text: str
    reason: str


@dataclass(frozen=True)
class Program:
    """A parsed program: the operations in order, and every line that could not be read."""

    operations: tuple[Operation, ...] = ()
    errors: tuple[ProgramError, ...] = ()

    def to_text(self) -> str:
        """The canonical text form; `parse(p.to_text()).operations == p.operations`."""
        return "\n".join(operation_to_text(op) for op in self.operations)


def quote(value: str) -> str:
    """A double-quoted Python string literal for `value`, on one line, readable by `ast`.

    Only what a literal cannot hold raw is escaped (backslash, quote, CR, LF, NUL, lone
    surrogates), so simple strings look exactly as a model writes them.
    """
    out = ['"']
    for char in value:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif "\ud800" <= char <= "\udfff":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\x00": "\\x00"}


def removals(lines: list[int]) -> list[RemoveLines]:
    """`remove_lines` operations for line numbers in increasing order, one per run."""
    ranges: list[RemoveLines] = []
    for line in lines:
        if ranges and ranges[-1].end == line - 1:
            ranges[-1] = RemoveLines(ranges[-1].start, line)
        else:
            ranges.append(RemoveLines(line, line))
    return ranges


def operation_to_text(op: Operation) -> str:
    """One operation as the refining models write it."""
    if isinstance(op, KeepDoc):
        return "keep_doc()"
    if isinstance(op, DropDoc):
        return "drop_doc()"
    if isinstance(op, RemoveLines):
        return f"remove_lines(line_start={op.start}, line_end={op.end})"
    if isinstance(op, RemoveAllLines):
        return "remove_lines(all=True)"
    if isinstance(op, RemoveStr):
        return f"remove_str(line={op.line}, del_str={quote(op.text)})"
    if isinstance(op, Normalize):
        return f"normalize(source_str={quote(op.source)}, target_str={quote(op.target)})"
    raise TypeError(f"not a ProX operation: {op!r}")


@dataclass(frozen=True)
class ChunkEdits:
    """A chunk-level program lowered to what the executor does, in either parsing mode.

    `cuts` are (line, text) line-anchored cuts (strict mode only: the reference parser skips
    `remove_str` as it skips every line it does not know); `normalizations` run in order;
    `ranges` are the requested line ranges as written (the reference mode may hold negative or
    reversed ones); `remove_all` removes every line. `not_applied` holds the operations
    `--deletion-only` left out (see `deletions_only`).
    """

    normalizations: tuple[tuple[str, str], ...] = ()
    ranges: tuple[tuple[int, int], ...] = ()
    remove_all: bool = False
    errors: tuple[ProgramError, ...] = ()
    cuts: tuple[tuple[int, str], ...] = ()
    not_applied: tuple[ProgramError, ...] = ()

    def deletions_only(self) -> ChunkEdits:
        """These edits without the normalizations that are not deletions, each recorded in
        `not_applied`; line removals and cuts are deletions and stay."""
        kept, refused = [], list(self.not_applied)
        for source, target in self.normalizations:
            if is_subsequence(target, source):
                kept.append((source, target))
            else:
                refused.append(
                    ProgramError(
                        0,
                        operation_to_text(Normalize(source, target)),
                        "not a deletion: its target is not its source with characters removed",
                    )
                )
        return dataclasses.replace(self, normalizations=tuple(kept), not_applied=tuple(refused))
