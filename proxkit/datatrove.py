"""ProX as a datatrove pipeline step (extra `[datatrove]`).

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from proxkit.datatrove import ProxRefiner

    LocalPipelineExecutor(
        [JsonlReader("crawl/"), ProxRefiner("rules", "rules"), JsonlWriter("refined/")], tasks=8
    ).run()

`ProxRefiner` refines the documents it is given in batches with any proxkit programmer and
backend, through the same `BatchProcessor` as `prox refine`, so a document's refined text,
`raw_content`, `doc_program`, `chunk_program` and `prox` metadata are exactly what `prox refine`
writes (here all under `metadata`, datatrove's place for them). Dropped documents are kept with
empty text, as `prox refine` keeps them (`dropped="keep"`), or leave the pipeline, to the
`exclusion_writer` if one is given (`dropped="exclude"`), like a datatrove filter's. A
document whose refining fails is passed on unchanged, with the reason in
`metadata.prox.rejected`. datatrove's stats count documents kept, dropped (by reason), refined
and rejected, and where they happen, edits `deletion_only=True` left out, outputs it refused
as not subsequences, and documents a `chunk_score_range` kept from the chunk stage.
Programmers are built inside `run`, once per task: under datatrove's Slurm executor with one
GPU per task, each task loads its model once, on its GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from proxkit.config import ConfigError, RefineConfig
from proxkit.io.readers import Document, Fields
from proxkit.pipeline.batch import BatchOutput, build_processor, close_programmers
from proxkit.pipeline.records import refined_field

try:
    from datatrove.data import Document as DatatroveDocument
    from datatrove.pipeline.base import PipelineStep
    from datatrove.utils.batching import batched
except ImportError as exc:  # pragma: no cover - exercised where datatrove is absent
    raise ImportError(
        "proxkit.datatrove needs datatrove: pip install 'proxkit[datatrove]'"
    ) from exc

DROPPED = ("keep", "exclude")


class ProxRefiner(PipelineStep):
    name = "🧪 ProX refine"
    type = "✂️ - FORMAT"

    def __init__(
        self,
        doc_programmer: str = "gair-prox/web-doc-refining-lm",
        chunk_programmer: str = "gair-prox/web-chunk-refining-lm",
        dropped: str = "keep",
        exclusion_writer: Any = None,
        **options: Any,
    ) -> None:
        """`options`: any `prox refine` setting (`RefineConfig` field), e.g. `stages=("doc",)`,
        `backend="vllm"`, `short_doc_words=20`, `batch_size=512`, `deletion_only=True`."""
        super().__init__()
        if dropped not in DROPPED:
            raise ConfigError(f"dropped must be one of {DROPPED}, got {dropped!r}")
        self.config = RefineConfig.from_dict(
            {"doc_programmer": doc_programmer, "chunk_programmer": chunk_programmer, **options}
        )
        self.dropped = dropped
        self.exclusion_writer = exclusion_writer

    def run(self, data: Any, rank: int = 0, world_size: int = 1) -> Iterator[DatatroveDocument]:
        if data is None:
            return
        processor = build_processor(self.config)
        writer_context = self.exclusion_writer or contextlib.nullcontext()
        try:
            with writer_context as writer:
                for batch in batched(data, self.config.batch_size):
                    with self.track_time("batch"):
                        output = processor([_document(d, i) for i, d in enumerate(batch)])
                    self._count(output)
                    yield from self._results(batch, output, writer, rank)
        finally:
            close_programmers(processor)

    def _results(
        self, batch: list[DatatroveDocument], output: BatchOutput, writer: Any, rank: int
    ) -> Iterator[DatatroveDocument]:
        rejected = {r.position: r.reason for r in output.rejects}
        records = iter(output.records)
        for position, document in enumerate(batch, start=1):
            if position in rejected:
                document.metadata["prox"] = {"rejected": rejected[position]}
                yield document
                continue
            record = next(records)
            document.text = record[refined_field(Fields(self.config.text_field))]
            document.metadata = {**record["metadata"], "raw_content": record["raw_content"]}
            if _dropped(record) and self.dropped == "exclude":
                if writer is not None:
                    writer.write(document, rank)
                continue
            self.update_doc_stats(document)
            yield document

    def _count(self, output: BatchOutput) -> None:
        stats = output.stats
        for label in ("documents", "kept", "dropped", "refined", "rejected"):
            if getattr(stats, label):
                self.stat_update(label, value=getattr(stats, label))
        for reason, count in stats.drop_reasons.items():
            self.stat_update(f"dropped_{reason}", value=count)
        if stats.edits_not_applied:
            self.stat_update("edits_not_applied", value=stats.edits_not_applied)
        for outcome in ("not_a_subsequence", "above_score_band", "below_score_band"):
            if stats.outcomes.get(f"chunk:{outcome}"):
                self.stat_update(f"chunk_{outcome}", value=stats.outcomes[f"chunk:{outcome}"])


def _document(document: DatatroveDocument, index: int) -> Document:
    """A datatrove document as proxkit reads a record: its metadata is its metadata, and a
    `raw_content` there (a document refined before) is what programs run on."""
    record: dict[str, Any] = {"id": document.id, "text": document.text}
    record["metadata"] = dict(document.metadata)
    raw = document.metadata.get("raw_content")
    if isinstance(raw, str):
        record["raw_content"] = raw
        record["metadata"].pop("raw_content")
    source = str(document.metadata.get("file_path", "datatrove"))
    return Document(str(document.id), document.text, record, source, index + 1)


def _dropped(record: dict[str, Any]) -> bool:
    prox = record["metadata"]["prox"]
    return any(
        prox.get(stage, {}).get("outcome", "").startswith("dropped") for stage in ("doc", "chunk")
    )
