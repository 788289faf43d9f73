"""`prox evaluate`: run a programmer on held-out annotated documents and compare its programs
with the teacher's (doc level where the teacher's label is valid; chunk level where every chunk
of the document has a valid teacher program). Any programmer works: the rules, a model folder,
a served model, with the same settings as `prox refine`; with `deletion_only`, both sides'
programs are compared as a deletion-only run would apply them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxkit.config import RefineConfig
from proxkit.evaluate.metrics import calibration, chunk_scores, drop_scores, edits_of
from proxkit.io.readers import Document
from proxkit.program.executor import execute_doc
from proxkit.programmers import Programmer, make_programmers
from proxkit.synth.sft import annotations_file, read_annotations


def load_heldout(path: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Annotation records, and a message per unreadable line."""
    source = annotations_file(path)
    records, problems = [], []
    for number, record in read_annotations(source):
        if isinstance(record, str):
            problems.append(f"{source}:{number}: {record}")
        else:
            records.append(record)
    return records, problems


def _documents(records: Sequence[dict[str, Any]]) -> list[Document]:
    return [
        Document(str(r["id"]), r["text"], {"text": r["text"]}, str(r.get("source", "")), i + 1)
        for i, r in enumerate(records)
    ]


def evaluate_doc(records: Sequence[dict[str, Any]], programmer: Programmer) -> dict[str, Any]:
    labelled = [r for r in records if (r.get("doc") or {}).get("ok")]
    if not labelled:
        return {"documents": 0}
    written = programmer.write("doc", _documents(labelled))
    results = [execute_doc(r["text"], w.program or "keep_doc()") for r, w in zip(labelled, written)]
    teacher_drop = [r["doc"]["program"] == "drop_doc()" for r in labelled]
    scores = [w.info.get("keep_score") for w in written]
    scored = [(s, not d) for s, d in zip(scores, teacher_drop) if isinstance(s, (int, float))]
    return {
        "programmer": programmer.name,
        "documents": len(labelled),
        "teacher_drop_rate": sum(teacher_drop) / len(labelled),
        "drop_rate": sum(r.dropped for r in results) / len(labelled),
        "drop": drop_scores([r.dropped for r in results], teacher_drop),
        "malformed_rate": sum(bool(r.errors) for r in results) / len(labelled),
        "keep_score_calibration": calibration([s for s, _ in scored], [k for _, k in scored])
        if scored
        else None,
    }


def evaluate_chunk(
    records: Sequence[dict[str, Any]], programmer: Programmer, deletion_only: bool = False
) -> dict[str, Any]:
    labelled = [r for r in records if r.get("chunks") and all(c["ok"] for c in r["chunks"])]
    if not labelled:
        return {"documents": 0}
    written = programmer.write("chunk", _documents(labelled))
    predicted = [edits_of(r["text"], w.program, deletion_only) for r, w in zip(labelled, written)]
    teacher = [
        edits_of(r["text"], "\n".join(c["program"] for c in r["chunks"]), deletion_only)
        for r in labelled
    ]
    return {"programmer": programmer.name, **chunk_scores(predicted, teacher)}


def evaluate(annotations: str, config: RefineConfig) -> dict[str, Any]:
    records, problems = load_heldout(annotations)
    report: dict[str, Any] = {
        "annotations": str(Path(annotations)),
        "records": len(records),
        "unreadable_lines": problems,
    }
    programmers = make_programmers(config)
    if "doc" in programmers:
        report["doc"] = evaluate_doc(records, programmers["doc"])
    if "chunk" in programmers:
        report["chunk"] = evaluate_chunk(records, programmers["chunk"], config.deletion_only)
    return report
