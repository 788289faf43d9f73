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
NOT_OUTPUT_CHANGING = frozenset({"overwrite", "workers", "batch_size", "rank", "world_size"})


class ResumeRefused(RuntimeError):
    """The output holds another run's results, or an input changed since the run started."""


@dataclass(frozen=True)
class WorkUnit:
    index: int
    path: str
    size: int
    modified: str

    @property
    def name(self) -> str:
        return f"{self.index:05d}"


def plan_units(files: list[str]) -> list[WorkUnit]:
    units = []
    for index, path in enumerate(files):
        fs, _, (local,) = fsspec.get_fs_token_paths(path)
        info = fs.info(local)
        modified = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""
        units.append(WorkUnit(index, path, int(info.get("size") or 0), str(modified)))
    return units


def _write_atomically(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
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
        if len(before) != len(units):
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
