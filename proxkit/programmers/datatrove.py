"""datatrove's own filters as a programmer (extra `[datatrove]`): `datatrove` / `datatrove:NAME,...`.

Doc level: the filters run in order on each document, exactly as in a datatrove pipeline (C4's
filter rewrites the text the next filter sees, as there); the first that drops the document
gives `drop_doc()`, with the filter and its reason in `doc_info`, else `keep_doc()`. The
default is FineWeb's sequence: Gopher repetition, Gopher quality, C4 without the terminal
punctuation rule, FineWeb. Chunk level: C4's line filter decides each line alone (its page
rules off), and the lines it removes become `remove_lines` programs over the document's lines.

Names: `gopher_repetition`, `gopher_quality`, `c4` (C4's defaults), `c4_fineweb` (C4 as FineWeb
ran it), `fineweb`. A filter that raises on a document makes that document a reject naming the
filter and the error; the other documents go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from proxkit.io.readers import Document
from proxkit.program.ops import operation_to_text, removals
from proxkit.programmers.base import Stage, Written

try:
    from datatrove.data import Document as DatatroveDocument
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
except ImportError as exc:  # pragma: no cover - exercised where datatrove is absent
    raise ImportError(
        "the datatrove programmer needs datatrove: pip install 'proxkit[datatrove]'"
    ) from exc

FILTERS: dict[str, Callable[[], Any]] = {
    "gopher_repetition": GopherRepetitionFilter,
    "gopher_quality": GopherQualityFilter,
    "c4": C4QualityFilter,
    "c4_fineweb": lambda: C4QualityFilter(filter_no_terminal_punct=False),
    "fineweb": FineWebQualityFilter,
}
LINE_FILTERS: dict[str, Callable[[], Any]] = {
    # C4's line rules alone: page rules off, so a line's fate is its own
    "c4": lambda: C4QualityFilter(
        min_num_sentences=-1, filter_lorem_ipsum=False, filter_curly_bracket=False
    ),
    "c4_fineweb": lambda: C4QualityFilter(
        filter_no_terminal_punct=False,
        min_num_sentences=-1,
        filter_lorem_ipsum=False,
        filter_curly_bracket=False,
    ),
}
FINEWEB_SEQUENCE = ("gopher_repetition", "gopher_quality", "c4_fineweb", "fineweb")


class FilterFailed(RuntimeError):
    """A datatrove filter raised on a document."""


@lru_cache(maxsize=8)
def _filters(names: tuple[str, ...], kinds: str) -> list[tuple[str, Any]]:
    """The filter objects, built once per process (programmers travel to workers by value)."""
    table = FILTERS if kinds == "doc" else LINE_FILTERS
    return [(name, table[name]()) for name in names]


def _verdict(result: bool | tuple[bool, str]) -> tuple[bool, str | None]:
    return result if isinstance(result, tuple) else (result, None)


@dataclass(frozen=True)
class DatatroveProgrammer:
    doc_filters: tuple[str, ...] = FINEWEB_SEQUENCE
    line_filter: str = "c4_fineweb"
    name: str = "datatrove"
    parallel: bool = True  # plain CPU work: safe in worker processes

    @classmethod
    def from_spec(cls, spec: str) -> DatatroveProgrammer:
        """`datatrove` or `datatrove:NAME,...`: the doc-level filters in order; the chunk level
        uses the C4 filter named among them (else C4 as FineWeb ran it)."""
        _, _, listed = spec.partition(":")
        names = tuple(n.strip() for n in listed.split(",") if n.strip()) or FINEWEB_SEQUENCE
        unknown = [n for n in names if n not in FILTERS]
        if unknown:
            raise ValueError(
                f"unknown datatrove filter {unknown[0]!r}; choose from: {', '.join(FILTERS)}"
            )
        line = next((n for n in names if n in LINE_FILTERS), "c4_fineweb")
        return cls(names, line, name=spec)

    def write(self, stage: Stage, documents: Sequence[Document]) -> list[Written]:
        if stage == "doc":
            return [self._doc(d) for d in documents]
        return [self._chunk(d) for d in documents]

    def _doc(self, document: Document) -> Written:
        candidate = DatatroveDocument(text=document.text, id=document.id)
        for name, step in _filters(self.doc_filters, "doc"):
            keep, reason = _verdict(_run(step, name, candidate, document))
            if not keep:
                return Written("drop_doc()", {"filter": name, "reason": reason})
        return Written("keep_doc()")

    def _chunk(self, document: Document) -> Written:
        ((name, step),) = _filters((self.line_filter,), "lines")
        removed = []
        for index, line in enumerate(document.text.split("\n")):
            candidate = DatatroveDocument(text=line, id=document.id)
            keep, _ = _verdict(_run(step, name, candidate, document))
            if not keep or not candidate.text:
                removed.append(index)
        program = [operation_to_text(op) for op in removals(removed)]
        if not program:
            return Written("keep_doc()")
        return Written("\n".join(program), {"filter": name, "lines_removed": len(removed)})


def _run(step: Any, name: str, candidate: Any, document: Document) -> bool | tuple[bool, str]:
    try:
        return step.filter(candidate)
    except Exception as exc:
        raise FilterFailed(
            f"datatrove filter {name} failed on document {document.id}: {type(exc).__name__}: {exc}"
        ) from exc
