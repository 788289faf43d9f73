"""Refine one batch of documents: doc stage, chunk stage for the kept ones, output records.

`BatchProcessor` is a picklable value, so the local runner can run it in worker processes and
the Ray runner in tasks or actors. A programmer that raises on a batch is retried one document
at a time, so one bad record is rejected with its error and the rest of the batch goes on.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxkit.io.readers import Document, Fields, Reject
from proxkit.pipeline.records import assemble, original_text
from proxkit.pipeline.stats import RunStats
from proxkit.program.executor import ExecutionResult, Mode, Thresholds, execute_chunk, execute_doc
from proxkit.programmers.base import Programmer, Written
from proxkit.tokenizer import load_tokenizer


@dataclass
class BatchOutput:
    records: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    stats: RunStats = field(default_factory=RunStats)


@dataclass(frozen=True)
class BatchProcessor:
    doc_programmer: Programmer | None
    chunk_programmer: Programmer | None
    mode: Mode = "strict"
    thresholds: Thresholds = field(default_factory=Thresholds)
    fields: Fields = field(default_factory=Fields)
    tokenizer: str | None = None  # a path or Hub id: count tokens before/after in the stats

    def __call__(self, documents: Sequence[Document]) -> BatchOutput:
        try:
            return self._process(documents)
        except Exception as exc:
            if len(documents) == 1:
                output = BatchOutput()
                document = documents[0]
                output.rejects.append(
                    Reject(
                        document.source,
                        document.position,
                        f"refining failed: {type(exc).__name__}: {exc}",
                        json.dumps(document.record, ensure_ascii=False, default=str),
                        document.id,
                    )
                )
                output.stats.rejected += 1
                return output
        merged = BatchOutput()
        for document in documents:
            single = self([document])
            merged.records += single.records
            merged.rejects += single.rejects
            merged.stats.merge(single.stats)
        return merged

    def _write(
        self, programmer: Programmer | None, stage: str, documents: list[Document]
    ) -> list[Written]:
        if programmer is None or not documents:
            return [Written(None)] * len(documents)
        written = programmer.write(stage, documents)  # type: ignore[arg-type]
        if len(written) != len(documents):
            raise RuntimeError(
                f"{programmer.name} returned {len(written)} programs for {len(documents)} documents"
            )
        return written

    def _process(self, documents: Sequence[Document]) -> BatchOutput:
        # Programmers read the text the programs will run on (the original of a refined record).
        originals = [dataclasses.replace(d, text=original_text(d)) for d in documents]
        doc_written = self._write(self.doc_programmer, "doc", originals)
        doc_results: list[ExecutionResult | None] = [
            execute_doc(d.text, w.program, self.mode) if w.program is not None else None
            for d, w in zip(originals, doc_written)
        ]
        survivors = [i for i, r in enumerate(doc_results) if r is None or not r.dropped]
        chunk_written: list[Written] = [Written(None)] * len(documents)
        for i, written in zip(
            survivors,
            self._write(self.chunk_programmer, "chunk", [originals[i] for i in survivors]),
        ):
            chunk_written[i] = written

        output = BatchOutput()
        for document, doc_w, doc_result, chunk_w in zip(
            originals, doc_written, doc_results, chunk_written
        ):
            chunk_result = (
                execute_chunk(document.text, chunk_w.program, self.mode, self.thresholds)
                if chunk_w.program is not None
                else None
            )
            info: dict[str, Any] = {}
            if doc_w.info:
                info["doc_info"] = dict(doc_w.info)
            if chunk_w.info:
                info["chunk_info"] = dict(chunk_w.info)
            refined = assemble(
                document,
                document.text,
                doc_w.program,
                doc_result,
                chunk_w.program,
                chunk_result,
                self.mode,
                self.fields,
                info,
            )
            output.records.append(refined.record)
            output.stats.add(refined, _drop_reason(doc_result, doc_w, chunk_result))
            output.stats.programmer_failures += "failed" in doc_w.info or "failed" in chunk_w.info
        if self.tokenizer is not None:
            count = _token_counter(self.tokenizer)
            output.stats.tokens_before += count([d.text for d in originals])
            output.stats.tokens_after += count([r[self.fields.text] for r in output.records])
        return output


@functools.lru_cache(maxsize=2)
def _token_counter(tokenizer: str) -> Callable[[list[str]], int]:
    """Loaded once per worker process; batches carry only the tokenizer's name."""
    backend = load_tokenizer(tokenizer).backend

    def count(texts: list[str]) -> int:
        return sum(len(e) for e in backend.encode_batch_fast(texts, add_special_tokens=False))

    return count


def _drop_reason(
    doc_result: ExecutionResult | None, doc_written: Written, chunk_result: ExecutionResult | None
) -> str | None:
    if doc_result is not None and doc_result.dropped:
        rules = doc_written.info.get("rules")
        return f"doc:{rules[0]}" if rules else "doc:drop_doc"
    if chunk_result is not None and chunk_result.dropped:
        return f"chunk:{chunk_result.outcome.value}"
    return None
