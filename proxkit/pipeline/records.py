"""One document and its programs -> its output record (the ProX output layout).

The output keeps every input field, sets `text` to the refined text ("" when dropped), keeps
the original in `raw_content`, and records the programs and what executing them did under
`metadata` (`doc_program`, `chunk_program`, `prox`). Because the original is kept, executing
the stored programs again on an output record reproduces it exactly (`prox execute`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxkit.io.readers import Document, Fields
from proxkit.program.executor import (
    ExecutionResult,
    Mode,
)


@dataclass(frozen=True)
class Refined:
    """A document after both stages: its output record and the per-stage results."""

    record: dict[str, Any]
    original: str
    text: str
    doc: ExecutionResult | None
    chunk: ExecutionResult | None

    unencodable: bool = False  # values were replaced on reading (proxkit.io.encodable)

    @property
    def dropped(self) -> bool:
        return any(r is not None and r.dropped for r in (self.doc, self.chunk))


def original_text(document: Document) -> str:
    """The text programs run on: `raw_content` when the record was refined before, else `text`."""
    raw = document.record.get("raw_content")
    return raw if isinstance(raw, str) else document.text


def _metadata(document: Document) -> dict[str, Any]:
    metadata = document.record.get("metadata")
    if isinstance(metadata, dict):
        return dict(metadata)
    return {} if metadata is None else {"source_metadata": metadata}


def assemble(
    document: Document,
    original: str,
    doc_program: str | None,
    doc_result: ExecutionResult | None,
    chunk_program: str | None,
    chunk_result: ExecutionResult | None,
    mode: Mode,
    fields: Fields = Fields(),
    info: dict[str, Any] | None = None,
) -> Refined:
    """Build the output record from the programs and their results.

    `info` adds fields under `metadata.prox` (e.g. which rules fired, a model's keep score).
    """
    if doc_result is not None and doc_result.dropped:
        text = ""
    elif chunk_result is not None:
        text = chunk_result.text
    else:
        text = original

    metadata = _metadata(document)
    if doc_program is not None:
        metadata["doc_program"] = doc_program
    if chunk_program is not None:
        metadata["chunk_program"] = chunk_program
    prox: dict[str, Any] = {"mode": mode}
    if doc_result is not None:
        prox["doc"] = doc_result.to_metadata()
    if chunk_result is not None:
        prox["chunk"] = chunk_result.to_metadata()
    prox.update(info or {})
    if document.unencodable:
        prox["unencodable"] = list(document.unencodable)
    metadata["prox"] = prox

    record = dict(document.record)
    if record.get(fields.id) is None:  # no id, or null: the content hash it was read with
        record[fields.id] = document.id
    record[fields.text] = text
    record["raw_content"] = original
    record["metadata"] = metadata
    return Refined(record, original, text, doc_result, chunk_result, bool(document.unencodable))
