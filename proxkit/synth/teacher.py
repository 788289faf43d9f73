"""Read and validate a teacher's answers. Nothing a teacher writes is trusted: doc-level answers
must be one JSON object with both scores in range; chunk-level answers must parse with the
strict parser and refer only to the chunk's lines and strings (a cut's string once in its
line), and with `deletion_only` hold deletions only. A bad answer becomes an `Invalid` value
naming what is wrong, never an exception. Clean-mode answers are read in `clean.py`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from proxkit.chunking import Chunk, chunk_content
from proxkit.program.ops import (
    DropDoc,
    KeepDoc,
    Normalize,
    Program,
    RemoveLines,
    RemoveStr,
    is_deletion,
    operation_to_text,
    unique_position,
)
from proxkit.program.parser import parse

SCORES = ("educational_value", "format_readability")
FENCE = re.compile(r"```[a-zA-Z0-9_-]*\n(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class Invalid:
    """Why a teacher answer cannot be used. `kind` is a short label for counting."""

    kind: str
    message: str


@dataclass(frozen=True)
class DocLabel:
    educational_value: int
    format_readability: int
    reason: str

    def program(self, min_educational_value: int, min_format_readability: int) -> str:
        keep = (
            self.educational_value >= min_educational_value
            and self.format_readability >= min_format_readability
        )
        return "keep_doc()" if keep else "drop_doc()"


def _unfenced(text: str) -> str:
    match = FENCE.search(text)
    return match.group(1) if match else text


def read_doc_answer(text: str) -> DocLabel | Invalid:
    body = _unfenced(text).strip()
    if not body:
        return Invalid("empty", "the answer is empty")
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        return Invalid("not_json", f"no JSON object in the answer: {body[:120]!r}")
    try:
        data = json.loads(body[start : end + 1])
    except json.JSONDecodeError as exc:
        return Invalid("not_json", f"the JSON object does not parse: {exc}")
    if not isinstance(data, dict):
        return Invalid("not_json", "the answer is not a JSON object")
    missing = [name for name in SCORES if name not in data]
    if missing:
        return Invalid("missing_field", f"missing {', '.join(missing)}")
    scores = {}
    for name in SCORES:
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            return Invalid("bad_value", f"{name} must be an integer, got {value!r}")
        if not 0 <= value <= 5:
            return Invalid("bad_value", f"{name} must be between 0 and 5, got {value!r}")
        scores[name] = int(value)
    reason = data.get("reason", "")
    return DocLabel(scores[SCORES[0]], scores[SCORES[1]], reason if isinstance(reason, str) else "")


def read_chunk_answer(text: str, chunk: Chunk, deletion_only: bool = False) -> Program | Invalid:
    body = _unfenced(text).strip()
    if not body:
        return Invalid("empty", "the answer is empty")
    program = parse(body)
    if program.errors:
        first = program.errors[0]
        return Invalid(
            "program_error",
            f"{len(program.errors)} unreadable line(s); line {first.line}: {first.reason}",
        )
    if not program.operations:
        return Invalid("program_error", "no operation in the answer")
    content = chunk_content(chunk.text)
    lines = content.split("\n")
    for op in program.operations:
        if deletion_only and not is_deletion(op):
            return Invalid(
                "not_a_deletion",
                f"{operation_to_text(op)} does not only delete; use remove_lines, remove_str, "
                'or normalize with target_str=""',
            )
        if isinstance(op, RemoveStr):
            if not chunk.first_line <= op.line <= chunk.last_line:
                return Invalid(
                    "out_of_range",
                    f"remove_str(line={op.line}) outside lines {chunk.first_line}-{chunk.last_line}",
                )
            if unique_position(op.text, lines[op.line - chunk.first_line]) is None:
                return Invalid(
                    "bad_cut", f"{op.text!r} does not occur exactly once in line {op.line}"
                )
        if isinstance(op, DropDoc):
            return Invalid("program_error", "drop_doc() is not a chunk-level operation")
        if isinstance(op, KeepDoc) and len(program.operations) > 1:
            return Invalid("program_error", "keep_doc() must stand alone")
        if isinstance(op, RemoveLines) and not (
            chunk.first_line <= op.start <= op.end <= chunk.last_line
        ):
            return Invalid(
                "out_of_range",
                f"remove_lines({op.start}, {op.end}) outside lines "
                f"{chunk.first_line}-{chunk.last_line}",
            )
        if isinstance(op, Normalize) and (op.source.strip() == "" or op.source not in content):
            return Invalid(
                "source_not_in_chunk", f"normalize source {op.source!r} is not in the chunk"
            )
    return program
