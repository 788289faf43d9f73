"""Work units and completion records: what makes a run resumable exactly once.

Each input file is a work unit. Its output shards and rejects are named after it
(`part-00003-00000...`, `rejects-00003.jsonl`) and written under temporary names; when they are
all in place, a completion record (`_prox/done/unit-00003.json`: the unit, a hash of the
configuration, each file's name and size, the unit's statistics) is written atomically. A
re-run keeps the units whose record is intact and whose files are all there with their sizes,
and redoes the others from scratch (saying why), after deleting whatever they left behind, so
no document is lost or written twice, and a shard deleted by hand is rebuilt.

The run's configuration and the inputs' fingerprints (size and modification time) are stored
with the output; resuming with another configuration, or after an input changed, is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec

from proxkit.io.atomic import TEMPORARY_SUFFIX, DamagedFile, read_json, write_atomically
from proxkit.io.readers import STATE_FOLDER as STATE_DIR
from proxkit.io.writers import PARTIAL_SUFFIX

# Options that change how a run goes, not what it writes: a resume may differ in them.
NOT_OUTPUT_CHANGING = frozenset(
    {
        "overwrite",
        "workers",
        "prompt_workers",
        "batch_size",
        "rank",
        "world_size",
        "replicas",
        "threads",
        "max_batch_size",
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


def config_digest(relevant: dict[str, Any]) -> str:
    """A short hash of the output-changing configuration, stored in every completion record."""
    text = json.dumps(relevant, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")


def _record_problem(record: Any, unit: WorkUnit) -> str | None:
    """Why a completion record cannot be used for `unit`, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if record.get("unit") != asdict(unit):
        return f"not the record of unit {unit.name}"
    files, sizes = record.get("files"), record.get("bytes")
    if not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
        return "no list of files"
    if not (isinstance(sizes, list) and len(sizes) == len(files)):
        return "no file sizes"
    if not isinstance(record.get("config"), str) or not isinstance(record.get("stats"), dict):
        return "no configuration or statistics"
    rejects = record.get("rejects")
    if rejects is not None and not (isinstance(rejects, list) and len(rejects) == 2):
        return "a malformed rejects entry"
    return None


class RunState:
    """The `_prox/` folder of an output: run manifest and completion records.

    Both are written whole or not at all (`proxkit.io.atomic`); one damaged anyway is reported
    by name (`DamagedFile`): a damaged manifest is rebuilt from the command that resumes, a
    damaged or contradicted completion record makes its unit be redone.
    """

    def __init__(self, output: Path) -> None:
        self.output = output
        self.root = output / STATE_DIR
        self.manifest = self.root / "run.json"
        self.columns = self.root / "columns"
        self.digest: str | None = None  # the configuration's, once the run has started

    def exists(self) -> bool:
        return self.manifest.is_file()

    def read_manifest(self) -> dict[str, Any]:
        data = read_json(self.manifest)
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("config"), dict)
            or not isinstance(data.get("units"), list)
        ):
            raise DamagedFile(self.manifest, 'not a {"config": ..., "units": [...]} object')
        try:
            [WorkUnit(**u) for u in data["units"]]
        except TypeError as exc:
            raise DamagedFile(self.manifest, f"a unit that is not a work unit: {exc}") from None
        return data

    def units(self) -> list[WorkUnit]:
        return [WorkUnit(**u) for u in self.read_manifest()["units"]]

    def start(self, config: dict[str, Any], units: list[WorkUnit]) -> str | None:
        """Record a new run, or check that this one continues the recorded run; returns a
        note when a damaged manifest had to be rebuilt."""
        relevant = {k: v for k, v in config.items() if k not in NOT_OUTPUT_CHANGING}
        self.digest = config_digest(relevant)
        manifest = {"config": relevant, "units": [asdict(u) for u in units]}
        if not self.exists():
            write_atomically(self.manifest, _json_bytes(manifest))
            return None
        try:
            recorded = self.read_manifest()
        except DamagedFile as exc:
            write_atomically(self.manifest, _json_bytes(manifest))
            return (
                f"{exc}; rebuilt from this command (a completed unit is kept only where its "
                "completion record shows this configuration and input)"
            )
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
        return None

    def record(self, unit: WorkUnit) -> Path:
        return self.root / "done" / f"unit-{unit.name}.json"

    def done(self, unit: WorkUnit) -> dict[str, Any] | None:
        """The unit's completion record, None if it has none; `DamagedFile` if unusable."""
        path = self.record(unit)
        if not path.is_file():
            return None
        record = read_json(path)
        problem = _record_problem(record, unit)
        if problem is not None:
            raise DamagedFile(path, problem)
        return record

    def done_or_none(self, unit: WorkUnit) -> dict[str, Any] | None:
        """The completion record, or None when it is missing or damaged."""
        try:
            return self.done(unit)
        except DamagedFile:
            return None

    def resumable(self, unit: WorkUnit) -> tuple[dict[str, Any] | None, str | None]:
        """The unit's completion record when its output is in place as recorded, else None;
        and, when a record was there but cannot be trusted, why the unit is redone."""
        try:
            record = self.done(unit)
        except DamagedFile as exc:
            return None, str(exc)
        if record is None:
            return None, None
        if record["config"] != self.digest:
            return None, f"{self.record(unit).name} was written with another configuration"
        entries = list(zip(record["files"], record["bytes"]))
        if record["rejects"] is not None:
            entries.append(tuple(record["rejects"]))
        for name, size in entries:
            path = self.output / name
            if not path.is_file():
                return None, f"{path} is missing"
            if path.stat().st_size != size:
                return None, f"{path} has {path.stat().st_size:,} bytes, not the {size:,} written"
        return record, None

    def complete(
        self, unit: WorkUnit, files: list[Path], rejects: Path | None, stats: dict[str, Any]
    ) -> None:
        record = {
            "unit": asdict(unit),
            "config": self.digest,
            "files": [f.name for f in files],
            "bytes": [f.stat().st_size for f in files],
            "rejects": None if rejects is None else [rejects.name, rejects.stat().st_size],
            "stats": stats,
        }
        write_atomically(self.record(unit), _json_bytes(record))

    def clear_partial(self, unit: WorkUnit) -> None:
        """Remove what an earlier attempt at this unit left behind, its record too."""
        record = self.record(unit)
        for path in (
            *record.parent.glob(f"{record.name}*"),
            *self.output.glob(f"part-{unit.name}-*"),
            *self.output.glob(f"rejects-{unit.name}.jsonl*"),
        ):
            path.unlink()

    def clear_leftovers(self) -> list[Path]:
        """Remove the temporary files of killed writers (only while no other rank writes)."""
        found = [
            p
            for folder in (self.output, self.root, self.root / "done", self.columns)
            if folder.is_dir()
            for p in folder.iterdir()
            if p.name.endswith((PARTIAL_SUFFIX, TEMPORARY_SUFFIX))
        ]
        for path in found:
            path.unlink()
        return found
