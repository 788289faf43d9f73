"""The stored programmer: programs already in the records (`metadata.doc_program` /
`metadata.chunk_program`), so `prox execute` re-runs a refined corpus with new thresholds
or another parsing mode without any model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from proxkit.io.readers import Document
from proxkit.programmers.base import Stage, Written


class StoredProgramError(ValueError):
    """A stored program that is not a string; the record is rejected with this message."""


@dataclass(frozen=True)
class StoredProgrammer:
    name: str = "stored"

    def write(self, stage: Stage, documents: Sequence[Document]) -> list[Written]:
        key = f"{stage}_program"
        written = []
        for document in documents:
            metadata = document.record.get("metadata")
            metadata = metadata if isinstance(metadata, dict) else {}
            value = metadata.get(key)
            if value is not None and not isinstance(value, str):
                raise StoredProgramError(
                    f"metadata.{key} is not a string (got {type(value).__name__})"
                )
            # What the original programmer recorded (rules fired, scores) stays with its program.
            previous = metadata.get("prox")
            info = previous.get(f"{stage}_info") if isinstance(previous, dict) else None
            written.append(Written(value, info if isinstance(info, dict) else {}))
        return written
