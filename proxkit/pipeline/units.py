"""Work units and completion records: what makes a run resumable exactly once.

Each input file is a work unit. Its output shards are named after it (`part-00003-00000...`)
and written under temporary names; when the unit's last shard is in place, a completion record
(`_prox/done/unit-00003.json`, with the unit's statistics and files) is written atomically. A
re-run skips units with a record and redoes the others from scratch, after deleting whatever
they left behind, so no document is lost or written twice.

The run's configuration and the inputs' fingerprints (size and modification time) are stored
with the output; resuming with another configuration, or after an input changed, is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec

STATE_DIR = "_prox"
# Options that change how a run goes, not what it writes: a resume may differ in them.
NOT_OUTPUT_CHANGING = frozenset(
    {
        "overwrite",
        "workers",
        "batch_size",
        "rank",
        "world_size",
        "replicas",
        "threads",
        "generation",
        "max_batch_size",
        "kv_cache_tokens",
    }
)


class ResumeRefused(RuntimeError):
    """The output holds another run's results, or an input changed since the run started."""


@dataclass(frozen=True)
class WorkUnit:
    """A whole file, or part of a large one: lines starting in bytes [start, stop) of an
    uncompressed JSONL file, or row groups [start, stop) of a Parquet file."""

    index: int
    path: str
    size: int
    modified: str
    start: int = 0
    stop: int | None = None  # None: to the end of the file
    first_position: int = 1  # line or row number of the unit's first record

    @property
    def name(self) -> str:
        return f"{self.index:05d}"


def fingerprint(path: str) -> tuple[int, str]:
    """(size, modification time) of a file, on any fsspec file system."""
    fs, _, (local,) = fsspec.get_fs_token_paths(path)
    info = fs.info(local)
    modified = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""
    return int(info.get("size") or 0), str(modified)


def _line_ranges(path: str, size: int, unit_bytes: int) -> list[tuple[int, int | None, int]]:
    """(start, stop, first line) ranges of about `unit_bytes`, found in one pass over the file."""
    boundaries = list(range(unit_bytes, size, unit_bytes))
    # A range owns the lines that start inside it. Its reader skips from byte b-1 through the
    # first newline there, so its first line is 2 + (newlines in bytes [0, b-1)).
    first_lines, newlines, offset = [], 0, 0
    with fsspec.open(path, "rb") as handle:
        for boundary in boundaries:
            while offset < boundary - 1:
                block = handle.read(min(1 << 23, boundary - 1 - offset))
                newlines += block.count(b"\n")
                offset += len(block)
            first_lines.append(newlines + 2)
    starts = [0, *boundaries]
    stops: list[int | None] = [*boundaries, None]
    return list(zip(starts, stops, [1, *first_lines]))


def _row_group_ranges(path: str, unit_bytes: int) -> list[tuple[int, int | None, int]]:
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as handle:
        metadata = pq.ParquetFile(handle).metadata
    ranges, start, rows, first_row, size = [], 0, 0, 1, 0
    for group in range(metadata.num_row_groups):
        size += metadata.row_group(group).total_byte_size
        rows += metadata.row_group(group).num_rows
        if size >= unit_bytes or group == metadata.num_row_groups - 1:
            ranges.append((start, group + 1, first_row))
            start, first_row, size = group + 1, rows + 1, 0
    return ranges or [(0, None, 1)]


def plan_units(files: list[str], unit_bytes: int = 0) -> list[WorkUnit]:
    """One unit per file; files over `unit_bytes` (0: never) split into byte or row ranges."""
    from proxkit.io.readers import COMPRESSION_SUFFIXES, record_format

    units: list[WorkUnit] = []
    for path in files:
        size, modified = fingerprint(path)
        ranges: list[tuple[int, int | None, int]] = [(0, None, 1)]
        if unit_bytes and size > unit_bytes:
            kind = record_format(path)
            if kind == "parquet":
                ranges = _row_group_ranges(path, unit_bytes)
            elif kind == "jsonl" and not path.lower().endswith(COMPRESSION_SUFFIXES):
                ranges = _line_ranges(path, size, unit_bytes)
        for start, stop, first in ranges:
            units.append(WorkUnit(len(units), path, size, modified, start, stop, first))
    return units


def _write_atomically(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Ranks of one run may write the same file at once: each through its own temporary name.
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class RunState:
    """The `_prox/` folder of an output: run manifest and completion records."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.root = output / STATE_DIR
        self.manifest = self.root / "run.json"

    def exists(self) -> bool:
        return self.manifest.is_file()

    def start(self, config: dict[str, Any], units: list[WorkUnit]) -> None:
        """Record a new run, or check that this one continues the recorded run."""
        relevant = {k: v for k, v in config.items() if k not in NOT_OUTPUT_CHANGING}
        if not self.exists():
            _write_atomically(
                self.manifest, {"config": relevant, "units": [asdict(u) for u in units]}
            )
            return
        recorded = json.loads(self.manifest.read_text(encoding="utf-8"))
        if recorded["config"] != relevant:
            changed = sorted(
                k
                for k in relevant.keys() | recorded["config"].keys()
                if relevant.get(k) != recorded["config"].get(k)
            )
            raise ResumeRefused(
                f"{self.output} holds a run with another configuration (differs in: {', '.join(changed)}); "
                "use another output folder, or --overwrite to start over"
            )
        before = {u["path"]: u for u in recorded["units"]}
        for unit in units:
            old = before.get(unit.path)
            if old is None or (old["size"], old["modified"]) != (unit.size, unit.modified):
                raise ResumeRefused(
                    f"input {unit.path} changed since the run started (size or modification time); refusing to mix outputs"
                )
        if [asdict(u) for u in units] != recorded["units"]:
            raise ResumeRefused("the set of input files changed since the run started")

    def record(self, unit: WorkUnit) -> Path:
        return self.root / "done" / f"unit-{unit.name}.json"

    def done(self, unit: WorkUnit) -> dict[str, Any] | None:
        path = self.record(unit)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def complete(self, unit: WorkUnit, files: list[Path], stats: dict[str, Any]) -> None:
        _write_atomically(
            self.record(unit),
            {"unit": asdict(unit), "files": [f.name for f in files], "stats": stats},
        )

    def clear_partial(self, unit: WorkUnit) -> None:
        """Remove what an interrupted attempt at this unit left behind."""
        for path in self.output.glob(f"part-{unit.name}-*"):
            path.unlink()
        rejects = self.output / f"rejects-{unit.name}.jsonl"
        if rejects.exists():
            rejects.unlink()
