"""`prox refine`'s runner: read -> refine batches on an engine -> write, resumable.

Documents are read in order and grouped into batches; an engine refines the batches and gives
the outputs back in order (`make_engine`):
- local (`local.py`): rules in worker processes on every core, or a model in this process
  with reading and writing overlapped with the model's work;
- replicas (`replicas.py`): one model process per device (`--gpus`), fed in turn;
- Ray (`ray_engine.py`, `--engine ray`): the same batches on a Ray cluster.
Records are written in input order, unit by unit (`units.py`), so every engine resumes alike
and writes the same bytes; rejected records go to a rejects file with the reason; the summary
is printed at the end and written as `stats.json` beside the output. A run never reads what it
writes: an input inside the output is refused, and an output inside an input folder is left
out of the inputs.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from tqdm import tqdm

from proxkit.config import ConfigError, RefineConfig
from proxkit.io.atomic import DamagedFile, write_atomically
from proxkit.io.columns import FieldKinds, file_kinds
from proxkit.io.readers import (
    GLOB_CHARACTERS,
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
from proxkit.pipeline.batch import BatchOutput, Item, uses_models
from proxkit.pipeline.lock import lock_paths, output_lock
from proxkit.pipeline.stats import RunStats
from proxkit.pipeline.units import (
    STATE_DIR,
    ResumeRefused,
    RunState,
    fingerprint,
    plan_units,
)


class OutputExists(RuntimeError):
    """The output already holds results and --overwrite was not given."""


class Engine(Protocol):
    """Refines batches somewhere (this process, worker processes, a cluster), in order."""

    def map_batches(self, batches: Iterator[list[Item]]) -> Iterator[BatchOutput]: ...

    def programmer_stats(self) -> dict[str, Any]: ...

    def close(self, abort: bool = False) -> None:
        """Release the engine; `abort` after a failure or an interrupt: stop at once."""
        ...


def make_engine(config: RefineConfig) -> Engine:
    if config.replicas and (config.engine == "ray" or not uses_models(config)):
        raise ConfigError(
            "--gpus/--replicas place model replicas: they need a model programmer and the "
            "local engine (with Ray, use --ray-actors and --ray-gpus-per-actor)"
        )
    if config.engine == "ray":
        from proxkit.pipeline.ray_engine import RayEngine

        return RayEngine(config)
    if uses_models(config) and len(config.replicas) > 1:
        from proxkit.pipeline.replicas import ReplicaEngine

        return ReplicaEngine(config)
    from proxkit.pipeline.local import LocalEngine

    return LocalEngine(config)


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

    def owned(self) -> list[Path]:
        """Every path the run writes: the output folder, or the output file and its siblings."""
        if record_format(str(self.output)) is None:
            return [self.output]
        files = [self.output, self.rejects, self.stats, self.config]
        partials = [f.with_name(f.name + PARTIAL_SUFFIX) for f in (self.output, self.rejects)]
        return [*files, *partials, lock_paths(self.output, 0, 1)[0]]

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


def input_files(inputs: tuple[str, ...], paths: RunPaths) -> list[str]:
    """The record files of `inputs`, without the run's own output; an input that names the
    output, or something inside it, is refused (the run would read, or delete, what it writes)."""
    owned = [p.resolve() for p in paths.owned()]
    for spec in inputs:
        if "://" in spec and not spec.startswith("file://"):
            continue
        local = spec.removeprefix("file://")
        glob = GLOB_CHARACTERS.search(local)
        base = Path(local[: glob.start()] if glob else local).resolve()
        if any(base == p or p in base.parents for p in owned):
            raise ConfigError(
                f"the input {spec} is the output {paths.output} or inside it: a run cannot read "
                "what it writes; write the output somewhere else"
            )
    return list_files(inputs, exclude=owned)


def batches_of(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    """The reader's items in batches of `size` documents (its rejects ride along)."""
    batch: list[Item] = []
    documents = 0
    for item in items:
        batch.append(item)
        if isinstance(item, Document):
            documents += 1
            if documents >= size:
                yield batch
                batch, documents = [], 0
    if batch:
        yield batch


def _limited(items: Iterator[Item], limit: int | None) -> Iterator[Item]:
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


def run(config: RefineConfig, progress: bool = True) -> RunStats:
    """Refine `config.inputs` into `config.output`; returns the run's statistics.

    A folder output is written unit by unit (one unit per input file or part of a large one)
    and resumes where a killed run stopped; a single output file is written in one go.
    """
    paths = RunPaths.for_output(config.output)
    files = input_files(config.inputs, paths)
    with output_lock(paths.output, config.rank, config.world_size) as takeover:
        if takeover:
            _note(takeover)
        try:
            stats = _run_locked(config, paths, files, progress)
        except DamagedFile as exc:  # a state file damaged by someone else during the run
            raise ResumeRefused(f"{exc}; run the same command to rebuild it") from None
        summary = json.dumps(stats.to_dict(), indent=2) + "\n"
        write_atomically(paths.stats, summary.encode("utf-8"))
        config_yaml = yaml.safe_dump(config.to_dict(), sort_keys=False)
        write_atomically(paths.config, config_yaml.encode("utf-8"))
    return stats


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def _run_locked(
    config: RefineConfig, paths: RunPaths, files: list[str], progress: bool
) -> RunStats:
    fields = Fields(config.text_field, config.id_field)
    engine = make_engine(config)
    bar = tqdm(unit="doc", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    finished = False
    try:
        if record_format(config.output) is not None:
            prepare_output(paths, config.overwrite)
            stats = RunStats()
            with RejectLog(paths.rejects) as rejects, RecordWriter(paths.output) as writer:
                items = _limited(read_inputs(files, fields), config.limit)
                _refine_into(writer, items, engine, config.batch_size, rejects, stats, bar)
        else:
            stats = _run_units(config, files, fields, engine, paths, bar)
        stats.programmers.update(engine.programmer_stats())
        finished = True
    finally:
        bar.close()
        engine.close(abort=not finished)
    return stats


def resume_hint(config: RefineConfig) -> str:
    """What a stopped run left, and how to go on."""
    if record_format(config.output) is not None:
        return f"{config.output} was not written; run the same command to write it"
    state = RunState(Path(config.output))
    if not state.exists():
        return "nothing was written yet; run the same command to start again"
    try:
        units = state.units()
    except DamagedFile as exc:
        return f"{exc}; run the same command to rebuild it and resume"
    done = sum(state.done_or_none(unit) is not None for unit in units)
    return (
        f"{done} of {len(units)} units are complete (their output is final); "
        "run the same command to resume"
    )


def _refine_into(
    writer: RecordWriter,
    items: Iterator[Item],
    engine: Engine,
    batch_size: int,
    rejects: RejectLog,
    stats: RunStats,
    bar: tqdm,
) -> None:
    for output in engine.map_batches(batches_of(items, batch_size)):
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
    engine: Engine,
    paths: RunPaths,
    bar: tqdm,
) -> RunStats:
    output = paths.output
    state = RunState(output)
    if config.overwrite:
        _clear_folder(output)
    elif (
        output.is_dir()
        and any(p.name != STATE_DIR for p in output.iterdir())  # _prox/ holds our lock
        and not state.exists()
    ):
        raise OutputExists(
            f"{output} already holds files that no prox run wrote; pass --overwrite to replace them"
        )
    units = plan_units(files, config.unit_bytes)
    rebuilt = state.start(config.to_dict(), units)
    if rebuilt:
        _note(rebuilt)
    if config.world_size == 1:  # no other rank writes: what killed writers left can go
        state.clear_leftovers()
    mine = [u for u in units if u.index % config.world_size == config.rank]
    done: dict[int, dict[str, Any] | None] = {u.index: state.done_or_none(u) for u in units}
    for unit in mine:
        done[unit.index], why = state.resumable(unit)
        if why:
            _note(f"unit {unit.name} ({unit.path}) is redone: {why}")
    kinds = _column_kinds(state, [r for r in done.values() if r])
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
        with (
            RejectLog(output / f"rejects-{unit.name}.jsonl") as rejects,
            RecordWriter(
                output,
                config.output_format,
                config.shard_bytes,
                prefix=f"part-{unit.name}",
                kinds=kinds,
            ) as writer,
        ):
            items = _limited(
                read_file(unit.path, fields, unit.start, unit.stop, unit.first_position),
                remaining,
            )
            _refine_into(writer, items, engine, config.batch_size, rejects, unit_stats, bar)
        if fingerprint(unit.path) != (unit.size, unit.modified):
            state.clear_partial(unit)
            raise ResumeRefused(
                f"input {unit.path} changed while it was being read; its output is not marked complete"
            )
        # Only now is the unit's output complete: its shards are in place under final names.
        state.complete(unit, writer.paths, rejects.written, unit_stats.to_dict())
        documents += unit_stats.documents
    stats = RunStats()
    for unit in units:  # every unit done so far, by any rank
        record = state.done_or_none(unit)
        if record is not None:
            stats.merge(RunStats.from_dict(record["stats"]))
    return stats


def _column_kinds(state: RunState, done: list[dict[str, Any]]) -> FieldKinds:
    """The run's Parquet column types, shared by all units; a damaged type file is rebuilt
    from the types the completed shards were written with."""
    kinds = FieldKinds(state.columns)
    if kinds.damaged:
        for damaged in kinds.damaged:
            _note(f"{damaged}; rebuilt from the completed shards' column types")
        written: dict[str, str] = {}
        for record in done:
            for name in record["files"]:
                if record_format(name) == "parquet":
                    try:
                        written.update(file_kinds(state.output / name))
                    except Exception:  # an unreadable shard: prox verify names it
                        continue
        kinds.restore(written)
    return kinds


def _clear_folder(output: Path) -> None:
    """--overwrite: remove what a prox run writes into an output folder, nothing else (the
    locks this run holds stay)."""
    if not output.is_dir():
        return
    for path in output.iterdir():
        if path.name.startswith(("part-", "rejects")) or path.name in ("stats.json", "config.yaml"):
            path.unlink()
    state = output / STATE_DIR
    if state.is_dir():
        for path in state.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            elif not path.name.startswith("lock"):
                path.unlink()
