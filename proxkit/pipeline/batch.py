"""Refine one batch of documents: doc stage, chunk stage for the kept ones, output records.

`BatchProcessor` is a picklable value, so the local runner can run it in worker processes and
the Ray runner in tasks or actors. A batch is the reader's items in order: documents, and the
records the reader could not use (`Reject`), which pass straight to the output's rejects.

A batch runs in two steps, so a runner can keep a model busy (`overlap.py`): `start` runs the
doc stage and hands the kept documents to the chunk programmer, which may still be writing
when it returns; `finish` waits for the chunk programs, executes them and builds the records.
`processor(batch)` does both at once. If a programmer raises on a batch, its documents are
retried one at a time, so one bad record is rejected with its error and the rest goes on.

Quality-gated chunk refining (`score_band` = (LO, HI), RefineX's finding that refining low-
and mid-quality documents beats refining all): of the documents the doc stage keeps, only
those whose keep score lies in [LO, HI] go to the chunk stage. The others pass unchanged with
their own chunk outcome, `above_score_band` or `below_score_band`. Documents under the doc
keep threshold are dropped before the band applies, so a LO at or below the threshold gates
only from above; a LO above it keeps the documents scored between the two unrefined. A
document without a score (its doc programmer failed, or a stored record without one) goes to
the chunk stage as without a band. The time spent in the chunk programmer is measured then,
so the summary can estimate the model time the band saved.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxkit.io.readers import Document, Fields, Reject
from proxkit.pipeline.records import assemble, original_text, refined_field
from proxkit.pipeline.stats import RunStats
from proxkit.program.executor import (
    ExecutionResult,
    Mode,
    Outcome,
    Thresholds,
    execute_chunk,
    execute_doc,
)
from proxkit.programmers.base import BackendGone, Pending, Programmer, Written, submit
from proxkit.tokenizer import load_tokenizer

if TYPE_CHECKING:
    from proxkit.config import RefineConfig

Item = Document | Reject


@dataclass
class BatchOutput:
    records: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    stats: RunStats = field(default_factory=RunStats)


@dataclass(frozen=True)
class Started:
    """A batch whose doc stage is done and whose chunk programs may still be written."""

    originals: list[Document]
    reader_rejects: list[Reject]
    doc_written: list[Written]
    doc_results: list[ExecutionResult | None]
    survivors: list[int]
    chunk_pending: Pending
    fallback: Callable[[], BatchOutput] | None = None  # set when starting failed
    gated: dict[int, Outcome] = field(default_factory=dict)  # kept, but outside the score band
    chunk_seconds: float = 0.0  # in the chunk programmer so far (measured with a score band)


@dataclass(frozen=True)
class BatchProcessor:
    doc_programmer: Programmer | None
    chunk_programmer: Programmer | None
    mode: Mode = "strict"
    thresholds: Thresholds = field(default_factory=Thresholds)
    fields: Fields = field(default_factory=Fields)
    tokenizer: str | None = None  # a path or Hub id: count tokens before/after in the stats
    deletion_only: bool = False  # chunk programs: only deletions applied (executor.py)
    score_band: tuple[float, float] | None = None  # chunk stage only for keep scores in it

    def __call__(self, items: Sequence[Item]) -> BatchOutput:
        return self.finish(self.start(items))

    def prompt_builder(self) -> PromptBuilders | None:
        """What builds the model inputs of a batch from its documents' texts (`texts`),
        picklable, for a runner to call ahead in worker processes; None without a model."""
        stages: dict[int, tuple[Any, list[str]]] = {}
        for stage, programmer in (("doc", self.doc_programmer), ("chunk", self.chunk_programmer)):
            if hasattr(programmer, "prompt_builder"):
                stages.setdefault(id(programmer), (programmer, []))[1].append(stage)
        builders = tuple(p.prompt_builder(s) for p, s in stages.values())  # type: ignore[attr-defined]
        return PromptBuilders(builders) if builders else None

    def start(self, items: Sequence[Item], prepared: Mapping[str, list] | None = None) -> Started:
        """Run the doc stage and start the chunk stage; `prepared`: what `prompt_builder`
        built for this batch, by stage, in the order of its documents."""
        documents = [i for i in items if isinstance(i, Document)]
        rejects = [i for i in items if isinstance(i, Reject)]
        try:
            return self._start(documents, rejects, prepared or {})
        except BackendGone:
            raise  # no document is at fault: the run stops, to be resumed
        except Exception as exc:
            fallback = self._one_by_one(documents, exc)
            return Started([], rejects, [], [], [], lambda: [], fallback)

    def finish(self, started: Started) -> BatchOutput:
        try:
            output = started.fallback() if started.fallback is not None else self._finish(started)
        except BackendGone:
            raise
        except Exception as exc:
            output = self._one_by_one(started.originals, exc)()
        output.rejects[:0] = started.reader_rejects
        output.stats.rejected += len(started.reader_rejects)
        return output

    def _one_by_one(
        self, documents: Sequence[Document], error: Exception
    ) -> Callable[[], BatchOutput]:
        """After `error` on a batch: each document alone (a lone document is rejected)."""

        def run() -> BatchOutput:
            if len(documents) == 1:
                return _rejected(documents[0], error)
            merged = BatchOutput()
            for document in documents:
                single = self._alone(document)
                merged.records += single.records
                merged.rejects += single.rejects
                merged.stats.merge(single.stats)
            return merged

        return run

    def _alone(self, document: Document) -> BatchOutput:
        try:
            return self._finish(self._start([document], [], {}))
        except BackendGone:
            raise
        except Exception as exc:
            return _rejected(document, exc)

    def _submit(
        self,
        programmer: Programmer | None,
        stage: str,
        documents: list[Document],
        prepared: list | None = None,
    ) -> Pending:
        if programmer is None or not documents:
            nothing = [Written(None)] * len(documents)
            return lambda: nothing
        pending = submit(programmer, stage, documents, prepared)  # type: ignore[arg-type]

        def checked() -> list[Written]:
            written = pending()
            if len(written) != len(documents):
                raise RuntimeError(
                    f"{programmer.name} returned {len(written)} programs for {len(documents)} documents"
                )
            return written

        return checked

    def _start(
        self, documents: list[Document], rejects: list[Reject], prepared: Mapping[str, list]
    ) -> Started:
        # Programmers read the text the programs will run on (the original of a refined record).
        originals = [dataclasses.replace(d, text=original_text(d)) for d in documents]
        doc_written = self._submit(self.doc_programmer, "doc", originals, prepared.get("doc"))()
        doc_results: list[ExecutionResult | None] = [
            execute_doc(d.text, w.program, self.mode) if w.program is not None else None
            for d, w in zip(originals, doc_written)
        ]
        kept = [i for i, r in enumerate(doc_results) if r is None or not r.dropped]
        gated = self._gated(kept, doc_written)
        survivors = [i for i in kept if i not in gated]
        chunk_inputs = prepared.get("chunk")
        began = time.perf_counter()
        chunk_pending = self._submit(
            self.chunk_programmer,
            "chunk",
            [originals[i] for i in survivors],
            [chunk_inputs[i] for i in survivors] if chunk_inputs is not None else None,
        )
        seconds = time.perf_counter() - began if self.score_band else 0.0
        return Started(
            originals,
            rejects,
            doc_written,
            doc_results,
            survivors,
            chunk_pending,
            gated=gated,
            chunk_seconds=seconds,
        )

    def _gated(self, kept: list[int], doc_written: list[Written]) -> dict[int, Outcome]:
        """The kept documents whose keep score lies outside the band (module doc)."""
        outcomes = {i: band_outcome(doc_written[i].info, self.score_band) for i in kept}
        return {i: outcome for i, outcome in outcomes.items() if outcome is not None}

    def _chunk_result(
        self, text: str, written: Written, gated: Outcome | None
    ) -> ExecutionResult | None:
        """The chunk program executed, or the band's outcome; None without a program."""
        if gated is not None:
            return passed(text, gated)
        if written.program is None:
            return None
        return execute_chunk(text, written.program, self.mode, self.thresholds, self.deletion_only)

    def _finish(self, started: Started) -> BatchOutput:
        originals = started.originals
        chunk_written: list[Written] = [Written(None)] * len(originals)
        began = time.perf_counter()
        for i, written in zip(started.survivors, started.chunk_pending()):
            chunk_written[i] = written
        output = BatchOutput()
        if self.score_band is not None:
            stats = output.stats
            stats.chunk_stage_seconds += started.chunk_seconds + time.perf_counter() - began
            stats.chunk_stage_chars += sum(len(originals[i].text) for i in started.survivors)
            stats.chunk_skipped_chars += sum(len(originals[i].text) for i in started.gated)
        for index, (document, doc_w, doc_result, chunk_w) in enumerate(
            zip(originals, started.doc_written, started.doc_results, chunk_written)
        ):
            chunk_result = self._chunk_result(document.text, chunk_w, started.gated.get(index))
            info: dict[str, Any] = {"deletion_only": True} if self.deletion_only else {}
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
            output.stats.tokens_after += count(
                [r[refined_field(self.fields)] for r in output.records]
            )
        return output


def band_outcome(doc_info: Any, band: tuple[float, float] | None) -> Outcome | None:
    """Where the keep score in a document's doc-stage details puts it: outside the band (the
    chunk stage is not run: its outcome), or None (run it; also without a band or a score)."""
    score = doc_info.get("keep_score") if isinstance(doc_info, dict) else None
    if band is None or isinstance(score, bool) or not isinstance(score, (int, float)):
        return None
    low, high = band
    if score > high:
        return Outcome.ABOVE_SCORE_BAND
    return Outcome.BELOW_SCORE_BAND if score < low else None


def passed(text: str, outcome: Outcome) -> ExecutionResult:
    """A document the score band kept from the chunk stage: its text unchanged, and why."""
    words = len(text.split())
    return ExecutionResult(text, outcome, words_before=words, words_after=words)


@dataclass(frozen=True)
class PromptBuilders:
    """The prompt builders of a batch's model programmers, called as one (picklable)."""

    builders: tuple[Callable[[Sequence[str]], dict[str, list]], ...]

    def __call__(self, texts: Sequence[str]) -> dict[str, list]:
        built: dict[str, list] = {}
        for build in self.builders:
            built.update(build(texts))
        return built


def _rejected(document: Document, error: Exception) -> BatchOutput:
    output = BatchOutput()
    output.rejects.append(
        Reject(
            document.source,
            document.position,
            f"refining failed: {type(error).__name__}: {error}",
            json.dumps(document.record, ensure_ascii=False, default=str),
            document.id,
        )
    )
    output.stats.rejected += 1
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


def uses_models(config: RefineConfig) -> bool:
    """Whether a stage is written by a language model (rather than rules or stored programs)."""
    from proxkit.programmers import needs_model

    return any(needs_model(getattr(config, f"{stage}_programmer")) for stage in config.stages)


def check_score_band(config: RefineConfig) -> None:
    """Refuse a chunk-score band this run cannot honour: it needs keep scores, which a model
    doc programmer scoring in one pass gives (every backend does, or is refused at start-up),
    or stored programs written by one, and both stages."""
    from proxkit.config import ConfigError
    from proxkit.programmers import needs_model

    if config.chunk_score_range is None:
        return
    if set(config.stages) != {"doc", "chunk"}:
        raise ConfigError("chunk_score_range gates the chunk stage on doc scores: run both stages")
    spec = config.doc_programmer
    scored = needs_model(spec) and config.doc_scoring == "forward"
    if not (scored or spec == "stored"):
        raise ConfigError(
            f"chunk_score_range needs doc-level keep scores, and this doc programmer ({spec}, "
            f"backend {config.backend}, doc scoring {config.doc_scoring}) gives none: they come "
            "from a model doc programmer scoring in one pass (--doc-scoring forward), or from "
            "stored programs written by one"
        )


def build_processor(config: RefineConfig) -> BatchProcessor:
    """The configured programmers (a model loaded here) in a processor."""
    from proxkit.programmers import make_programmers

    check_score_band(config)
    programmers = make_programmers(config)
    return BatchProcessor(
        doc_programmer=programmers.get("doc"),
        chunk_programmer=programmers.get("chunk"),
        mode=config.mode,
        thresholds=config.thresholds,
        fields=Fields(config.text_field, config.id_field),
        tokenizer=config.tokenizer,
        deletion_only=config.deletion_only,
        score_band=config.chunk_score_range,
    )


def model_device(processor: BatchProcessor) -> str | None:
    """The device of the processor's model, if it has one (`cuda:0`, `cpu`)."""
    for programmer in (processor.doc_programmer, processor.chunk_programmer):
        device = getattr(getattr(programmer, "backend", None), "device", None)
        if isinstance(device, str):
            return device
    return None


def programmer_stats(processor: BatchProcessor) -> dict[str, Any]:
    """Per stage what its programmer counted (prompts, cache hits, model work), and the model
    backend's own counters under "model"."""
    stats: dict[str, Any] = {}
    for stage, programmer in (
        ("doc", processor.doc_programmer),
        ("chunk", processor.chunk_programmer),
    ):
        if hasattr(programmer, "stats"):
            stats[stage] = programmer.stats(stage)  # type: ignore[union-attr]
        if hasattr(programmer, "backend_stats"):
            stats["model"] = programmer.backend_stats()  # type: ignore[union-attr]
    return stats


def close_programmers(processor: BatchProcessor) -> None:
    for programmer in {
        id(p): p for p in (processor.doc_programmer, processor.chunk_programmer)
    }.values():
        close = getattr(programmer, "close", None)
        if close is not None:
            close()
