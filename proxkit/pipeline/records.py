"""One document and its programs -> its output record (the ProX output layout).

The output keeps every input field, sets the text field to the refined text ("" when dropped),
keeps the original in `raw_content`, and records the programs and what executing them did under
`metadata` (`doc_program`, `chunk_program`, `prox`). Because the original is kept, executing
the stored programs again on an output record reproduces it exactly (`prox execute`,
`prox verify`).

Where these fields are already in the input, one rule decides:
- A record *refined before* (the ProX layout: a string `raw_content` beside stored programs or
  proxkit's `metadata.prox`, from proxkit or the ProX reference) is refined again from its
  original: programs run on `raw_content`, and the previous refinement (its refined text, the
  programs of the stages run again, `metadata.prox`) is replaced. What that refinement kept of
  its own input (`metadata.prox.unencodable`, `metadata.prox.displaced`) is carried over.
- Any other record is refined from its text field, and an input value in a place the layout
  needs (`raw_content`, `metadata.prox`, and `text` when the text field is `raw_content`) is
  moved, whole, to `metadata.prox.displaced` (`[{"field": "raw_content", "value": ...}]`).
- With `--text-field raw_content` (RedPajama-V2's layout) the original stays in `raw_content`
  and the refined text is written to `text`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxkit.io.readers import Document, Fields
from proxkit.program.executor import MODES, ExecutionResult, Mode

RAW = "raw_content"
PROGRAMS = ("doc_program", "chunk_program")
# What metadata.prox records of the input itself (kept when a record is refined again).
CARRIED = ("unencodable", "displaced")


@dataclass(frozen=True)
class Refined:
    """A document after both stages: its output record and the per-stage results."""

    record: dict[str, Any]
    original: str
    text: str
    doc: ExecutionResult | None
    chunk: ExecutionResult | None

    unencodable: bool = False  # values were replaced on reading (proxkit.io.encodable)
    displaced: bool = False  # input values were moved to metadata.prox.displaced

    @property
    def dropped(self) -> bool:
        return any(r is not None and r.dropped for r in (self.doc, self.chunk))


def _ours(prox: Any) -> bool:
    """Whether a `metadata.prox` value is what proxkit writes there."""
    return isinstance(prox, dict) and prox.get("mode") in MODES


def refined_before(record: dict[str, Any]) -> bool:
    """Whether a record is the output of an earlier ProX refinement, which kept its original."""
    metadata = record.get("metadata")
    if not isinstance(record.get(RAW), str) or not isinstance(metadata, dict):
        return False
    return _ours(metadata.get("prox")) or any(name in metadata for name in PROGRAMS)


def original_text(document: Document) -> str:
    """The text programs run on: `raw_content` when the record was refined before, else the
    text field."""
    return document.record[RAW] if refined_before(document.record) else document.text


def refined_field(fields: Fields) -> str:
    """The field the refined text goes to: the text field, or `text` when the text field is
    `raw_content` (which keeps the original)."""
    return "text" if fields.text == RAW else fields.text


def _metadata(document: Document) -> dict[str, Any]:
    metadata = document.record.get("metadata")
    if isinstance(metadata, dict):
        return dict(metadata)
    return {} if metadata is None else {"source_metadata": metadata}


def _carried(document: Document) -> dict[str, list[Any]]:
    """What an earlier refinement kept aside of its input, when the record is one."""
    metadata = document.record.get("metadata")
    previous = metadata.get("prox") if isinstance(metadata, dict) else None
    if not (refined_before(document.record) and _ours(previous)):
        return {}
    return {name: previous[name] for name in CARRIED if isinstance(previous.get(name), list)}


def _displaced(document: Document, metadata: dict[str, Any], fields: Fields) -> list[dict]:
    """Input values standing where the layout writes, moved aside (see the module's docstring)."""
    record, target = document.record, refined_field(fields)
    again = refined_before(record)
    previous = metadata.get("prox")
    moved = [
        ("metadata.prox", "prox" in metadata and not (again and _ours(previous)), previous),
        (RAW, not again and RAW in record and fields.text != RAW, record.get(RAW)),
        (target, not again and target != fields.text and target in record, record.get(target)),
    ]
    return [{"field": name, "value": value} for name, present, value in moved if present]


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
    carried = _carried(document)
    displaced = _displaced(document, metadata, fields)
    kept = {
        "unencodable": [*carried.get("unencodable", []), *document.unencodable],
        "displaced": [*carried.get("displaced", []), *displaced],
    }
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
    prox.update({name: entries for name, entries in kept.items() if entries})
    metadata["prox"] = prox

    record = dict(document.record)
    if record.get(fields.id) is None:  # no id, or null: the content hash it was read with
        record[fields.id] = document.id
    record[refined_field(fields)] = text
    record[RAW] = original
    record["metadata"] = metadata
    return Refined(
        record,
        original,
        text,
        doc_result,
        chunk_result,
        bool(document.unencodable),
        bool(displaced),
    )
