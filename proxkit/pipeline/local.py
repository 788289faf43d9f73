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
import shutil
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
from proxkit.io.readers import (
    Document,
    Fields,
    Reject,
    list_files,
    read_file,
    read_inputs,
    record_format,
)
from proxkit.io.rejects import RejectLog
from proxkit.io.writers import PARTIAL_SUFFIX, RecordWriter
from proxkit.pipeline.batch import BatchOutput, BatchProcessor
from proxkit.pipeline.stats import RunStats
from proxkit.pipeline.units import STATE_DIR, ResumeRefused, RunState, fingerprint, plan_units
from proxkit.programmers import make_programmers


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
    pool: ProcessPoolExecutor | None,
    workers: int,
) -> Iterator[BatchOutput]:
    """Results in input order, with at most 2 batches per worker in flight."""
    if pool is None:
        yield from map(function, batches)
        return
    pending: deque[Future[BatchOutput]] = deque()
    for batch in itertools.islice(batches, 2 * workers):
        pending.append(pool.submit(function, batch))
    while pending:
        result = pending.popleft().result()
        for batch in itertools.islice(batches, 1):
            pending.append(pool.submit(function, batch))
        yield result


def uses_models(config: RefineConfig) -> bool:
    """Whether a stage is written by a language model (rather than rules or stored programs)."""
    specs = [getattr(config, f"{stage}_programmer") for stage in config.stages]
    return any(
        spec != "stored" and spec != "rules" and not spec.startswith("rules:") for spec in specs
    )


def build_processor(config: RefineConfig) -> BatchProcessor:
    programmers = make_programmers(config)
    return BatchProcessor(
        doc_programmer=programmers.get("doc"),
        chunk_programmer=programmers.get("chunk"),
        mode=config.mode,
        thresholds=config.thresholds,
        fields=Fields(config.text_field, config.id_field),
        tokenizer=config.tokenizer,
    )


def run_local(config: RefineConfig, progress: bool = True) -> RunStats:
    """Refine `config.inputs` into `config.output`; returns the run's statistics.

    A folder output is written unit by unit (one unit per input file) and resumes where a
    killed run stopped; a single output file is written in one go.
    """
    paths = RunPaths.for_output(config.output)
    files = list_files(config.inputs)
    fields = Fields(config.text_field, config.id_field)
    # With Ray, models are loaded by the cluster's actors, never by this driver.
    models_on_cluster = config.engine == "ray" and uses_models(config)
    processor = (
        BatchProcessor(None, None, fields=fields) if models_on_cluster else build_processor(config)
    )
    pool = None
    if config.engine == "ray":
        from proxkit.pipeline.ray_engine import RayEngine

        engine = RayEngine(config, processor, models_on_cluster)
        map_batches: MapBatches = engine.map_batches
    else:
        engine = None
        workers = config.workers or os.cpu_count() or 1
        if uses_models(config):
            workers = 1  # a model runs in this process; its backend batches on its own
        if workers > 1:
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))

        def map_batches(batches: Iterator[list[Document]]) -> Iterator[BatchOutput]:
            return _map_ordered(processor, batches, pool, workers)

    bar = tqdm(unit="doc", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        if record_format(config.output) is not None:
            prepare_output(paths, config.overwrite)
            stats = RunStats()
            rejects = RejectLog(paths.rejects)
            try:
                with RecordWriter(paths.output) as writer:
                    items = _limited(read_inputs(files, fields), config.limit)
                    _refine_into(writer, items, map_batches, config.batch_size, rejects, stats, bar)
            finally:
                rejects.close()
        else:
            stats = _run_units(config, files, fields, map_batches, paths, bar)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if engine is not None:
            engine.close()
    for stage, programmer in (
        ("doc", processor.doc_programmer),
        ("chunk", processor.chunk_programmer),
    ):
        if hasattr(programmer, "stats"):
            stats.programmers[stage] = programmer.stats(stage)
    paths.stats.parent.mkdir(parents=True, exist_ok=True)
    paths.stats.write_text(json.dumps(stats.to_dict(), indent=2) + "\n", encoding="utf-8")
    paths.config.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    return stats


MapBatches = Callable[[Iterator[list[Document]]], Iterator[BatchOutput]]


def _refine_into(
    writer: RecordWriter,
    items: Iterator[Document | Reject],
    map_batches: MapBatches,
    batch_size: int,
    rejects: RejectLog,
    stats: RunStats,
    bar: tqdm,
) -> None:
    batches = _batches(items, batch_size, rejects, stats)
    for output in map_batches(batches):
        for record in output.records:
            writer.write(record)
        for reject in output.rejects:
            rejects.add(reject)
        stats.merge(output.stats)
        bar.update(len(output.records) + len(output.rejects))
        if stats.documents:
            bar.set_postfix(kept=f"{stats.kept / stats.documents:.1%}", refresh=False)


def _run_units(
    config: RefineConfig,
    files: list[str],
    fields: Fields,
    map_batches: MapBatches,
    paths: RunPaths,
    bar: tqdm,
) -> RunStats:
    output = paths.output
    state = RunState(output)
    if config.overwrite:
        _clear_folder(output)
    elif output.is_dir() and any(output.iterdir()) and not state.exists():
        raise OutputExists(
            f"{output} already holds files that no prox run wrote; pass --overwrite to replace them"
        )
    units = plan_units(files, config.unit_bytes)
    state.start(config.to_dict(), units)
    mine = [u for u in units if u.index % config.world_size == config.rank]
    done = {u.index: state.done(u) for u in units}
    documents = sum(r["stats"]["documents"] for r in done.values() if r)
    for unit in mine:
        if done[unit.index] is not None:
            bar.update(done[unit.index]["stats"]["documents"])
            continue
        remaining = None if config.limit is None else config.limit - documents
        if remaining is not None and remaining <= 0:
            break
        state.clear_partial(unit)
        unit_stats = RunStats()
        rejects = RejectLog(output / f"rejects-{unit.name}.jsonl")
        try:
            with RecordWriter(
                output, config.output_format, config.shard_bytes, prefix=f"part-{unit.name}"
            ) as writer:
                items = _limited(
                    read_file(unit.path, fields, unit.start, unit.stop, unit.first_position),
                    remaining,
                )
                _refine_into(
                    writer, items, map_batches, config.batch_size, rejects, unit_stats, bar
                )
        finally:
            rejects.close()
        if fingerprint(unit.path) != (unit.size, unit.modified):
            raise ResumeRefused(
                f"input {unit.path} changed while it was being read; its output is not marked complete"
            )
        # Only now is the unit's output complete: its shards are in place under final names.
        state.complete(unit, writer.paths, unit_stats.to_dict())
        documents += unit_stats.documents
    stats = RunStats()
    for unit in units:  # every unit done so far, by any rank
        record = state.done(unit)
        if record is not None:
            stats.merge(RunStats.from_dict(record["stats"]))
    return stats


def _clear_folder(output: Path) -> None:
    """--overwrite: remove what a prox run writes into an output folder, nothing else."""
    if not output.is_dir():
        return
    for path in output.iterdir():
        if path.name.startswith(("part-", "rejects")) or path.name in ("stats.json", "config.yaml"):
            path.unlink()
    shutil.rmtree(output / STATE_DIR, ignore_errors=True)
