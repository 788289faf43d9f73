"""The ProX program space as data: typed operations and their canonical text form.

A program is what a refining model writes for one document (doc level) or one chunk (chunk
level). It is parsed once, at the edge, into these frozen dataclasses; the executor only ever
sees operations, never model text.
"""

from __future__ import annotations

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
class Normalize:
    """`normalize(source_str=.., target_str=..)`: replace every occurrence of source by target."""

    source: str
    target: str = ""


Operation = KeepDoc | DropDoc | RemoveLines | RemoveAllLines | Normalize


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
    if isinstance(op, Normalize):
        return f"normalize(source_str={quote(op.source)}, target_str={quote(op.target)})"
    raise TypeError(f"not a ProX operation: {op!r}")


@dataclass(frozen=True)
class ChunkEdits:
    """A chunk-level program lowered to what the executor does, in either parsing mode.

    `normalizations` run in order; `ranges` are the requested line ranges as written (the
    reference mode may hold negative or reversed ones); `remove_all` removes every line.
    """

    normalizations: tuple[tuple[str, str], ...] = ()
    ranges: tuple[tuple[int, int], ...] = ()
    remove_all: bool = False
    errors: tuple[ProgramError, ...] = ()
