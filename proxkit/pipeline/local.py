"""The local runner: read -> doc stage -> chunk stage -> write, streaming, on all local cores.

Documents are read in order and grouped into batches; at most two batches per worker are in
flight, so memory stays flat however large the corpus. Output records are written in input
order; rejected records go to a rejects file with the reason; the summary is printed at the end
and written as `stats.json` beside the output.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import yaml
from tqdm import tqdm

from proxkit.config import RefineConfig
from proxkit.io.readers import Document, Fields, Reject, list_files, read_inputs, record_format
from proxkit.io.writers import PARTIAL_SUFFIX, RecordWriter
from proxkit.pipeline.batch import BatchOutput, BatchProcessor
from proxkit.pipeline.stats import RunStats
from proxkit.programmers import make_programmer

REJECTS_SHOWN = 20


class OutputExists(RuntimeError):
    """The output already holds results and --overwrite was not given."""


@dataclass(frozen=True)
class RunPaths:
    """Where a run writes: records (a file or a folder), rejects, statistics, configuration."""

    output: Path
    rejects: Path
    stats: Path
    config: Path

    @classmethod
    def for_output(cls, output: str) -> RunPaths:
        path = Path(output)
        if record_format(output) is not None:  # a single output file
            stem = path.name.split(".")[0]
            return cls(
                path,
                path.with_name(f"{stem}.rejects.jsonl"),
                path.with_name(f"{stem}.stats.json"),
                path.with_name(f"{stem}.config.yaml"),
            )
        return cls(path, path / "rejects.jsonl", path / "stats.json", path / "config.yaml")

    def existing(self) -> list[Path]:
        found = [p for p in (self.rejects, self.stats, self.config) if p.exists()]
        if self.output.is_file():
            found.append(self.output)
        elif self.output.is_dir():
            found += [p for p in self.output.iterdir() if p.name.startswith("part-")]
        return found


class RejectLog:
    """Writes rejected records to a JSONL file (created on the first reject) and echoes the
    first few to stderr, so every reject is both visible and kept."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.handle = None

    def add(self, reject: Reject) -> None:
        self.count += 1
        if self.count <= REJECTS_SHOWN:
            where = f"{reject.source}:{reject.position}" if reject.position else reject.source
            print(f"rejected {where}: {reject.reason}", file=sys.stderr)
        elif self.count == REJECTS_SHOWN + 1:
            print(f"more rejects: see {self.path}", file=sys.stderr)
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = self.path.open("w", encoding="utf-8")
        self.handle.write(json.dumps(reject.to_record(), ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def prepare_output(paths: RunPaths, overwrite: bool) -> None:
    existing = paths.existing()
    if existing and not overwrite:
        raise OutputExists(
            f"{paths.output} already holds results ({existing[0].name}, ...); "
            "pass --overwrite to replace them"
        )
    for path in existing:
        path.unlink()
    if paths.output.is_dir():
        for partial in paths.output.glob(f"*{PARTIAL_SUFFIX}"):
            partial.unlink()


def _batches(
    items: Iterator[Document | Reject], size: int, rejects: RejectLog, stats: RunStats
) -> Iterator[list[Document]]:
    """Group documents into batches; rejects from the reader are logged on the way."""
    batch: list[Document] = []
    for item in items:
        if isinstance(item, Reject):
            rejects.add(item)
            stats.rejected += 1
            continue
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _limited(items: Iterator[Document | Reject], limit: int | None) -> Iterator[Document | Reject]:
    if limit is None:
        return items
    documents = 0

    def within() -> Iterator[Document | Reject]:
        nonlocal documents
        for item in items:
            if isinstance(item, Document):
                if documents >= limit:
                    return
                documents += 1
            yield item

    return within()


def _map_ordered(
    function: Callable[[list[Document]], BatchOutput],
    batches: Iterator[list[Document]],
    workers: int,
) -> Iterator[BatchOutput]:
    """Results in input order, with at most 2 batches per worker in flight."""
    if workers <= 1:
        yield from map(function, batches)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        pending: deque[Future[BatchOutput]] = deque()
        for batch in itertools.islice(batches, 2 * workers):
            pending.append(pool.submit(function, batch))
        while pending:
            result = pending.popleft().result()
            for batch in itertools.islice(batches, 1):
                pending.append(pool.submit(function, batch))
            yield result


def build_processor(config: RefineConfig) -> BatchProcessor:
    return BatchProcessor(
        doc_programmer=make_programmer(config.doc_programmer, config)
        if "doc" in config.stages
        else None,
        chunk_programmer=make_programmer(config.chunk_programmer, config)
        if "chunk" in config.stages
        else None,
        mode=config.mode,
        thresholds=config.thresholds,
        fields=Fields(config.text_field, config.id_field),
        tokenizer=config.tokenizer,
    )


def run_local(config: RefineConfig, progress: bool = True) -> RunStats:
    """Refine `config.inputs` into `config.output`; returns the run's statistics."""
    paths = RunPaths.for_output(config.output)
    files = list_files(config.inputs)
    processor = build_processor(config)
    prepare_output(paths, config.overwrite)
    workers = config.workers or os.cpu_count() or 1
    if not all(
        getattr(p, "parallel", True)
        for p in (processor.doc_programmer, processor.chunk_programmer)
        if p
    ):
        workers = 1

    stats = RunStats()
    rejects = RejectLog(paths.rejects)
    items = _limited(read_inputs(files, processor.fields), config.limit)
    bar = tqdm(unit="doc", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        with RecordWriter(paths.output, config.output_format, config.shard_bytes) as writer:
            batches = _batches(items, config.batch_size, rejects, stats)
            for output in _map_ordered(processor, batches, workers):
                for record in output.records:
                    writer.write(record)
                for reject in output.rejects:
                    rejects.add(reject)
                stats.merge(output.stats)
                bar.update(len(output.records) + len(output.rejects))
                if stats.documents:
                    bar.set_postfix(kept=f"{stats.kept / stats.documents:.1%}", refresh=False)
    finally:
        bar.close()
        rejects.close()
    for stage, programmer in (
        ("doc", processor.doc_programmer),
        ("chunk", processor.chunk_programmer),
    ):
        if hasattr(programmer, "stats"):
            stats.programmers[stage] = programmer.stats()
    paths.stats.parent.mkdir(parents=True, exist_ok=True)
    paths.stats.write_text(json.dumps(stats.to_dict(), indent=2) + "\n", encoding="utf-8")
    paths.config.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    return stats
