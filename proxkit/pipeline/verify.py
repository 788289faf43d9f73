"""`prox verify OUT`: every input record ends in exactly one output record or reject.

For each work unit of a folder output, the input file is read again (with the run's text and
id fields) and compared with the unit's shards and rejects, as listed by its completion
record: records missing, records written twice, shards missing, units not completed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from proxkit.io.readers import Document, Fields, read_file
from proxkit.pipeline.units import RunState, WorkUnit


@dataclass
class Verification:
    units: int = 0
    complete_units: int = 0
    input_records: int = 0
    output_records: int = 0
    rejected: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _read_ids(paths: list[Path], fields: Fields) -> Counter[str]:
    """The ids of the records in output files, read as the input's were (42 -> "42")."""
    ids: Counter[str] = Counter()
    for path in paths:
        for item in read_file(str(path), fields):
            if isinstance(item, Document):
                ids[item.id] += 1
            else:
                raise ValueError(f"{path}: unreadable output ({item.reason})")
    return ids


def verify(output: Path, max_listed: int = 10) -> Verification:
    state = RunState(output)
    if not state.exists():
        raise FileNotFoundError(f"{output} holds no prox run (no {state.manifest})")
    manifest = json.loads(state.manifest.read_text(encoding="utf-8"))
    config = manifest["config"]
    fields = Fields(config.get("text_field", "text"), config.get("id_field", "id"))
    limited = config.get("limit") is not None
    report = Verification(units=len(manifest["units"]))
    for data in manifest["units"]:
        unit = WorkUnit(**data)
        record = state.done(unit)
        if record is None:
            report.problems.append(f"unit {unit.name} ({unit.path}) is not complete")
            continue
        report.complete_units += 1
        shards = [output / name for name in record["files"]]
        missing_shards = [p.name for p in shards if not p.is_file()]
        if missing_shards:
            report.problems.append(f"unit {unit.name}: shards missing: {', '.join(missing_shards)}")
            continue
        written = _read_ids(shards, fields)
        rejects = [json.loads(line) for line in _lines(output / f"rejects-{unit.name}.jsonl")]
        # Records rejected while refining have no output record; the reader's own rejects
        # (invalid JSON, no text) never were documents, so they are not expected.
        refused = Counter(
            r["id"] for r in rejects if r.get("reason", "").startswith("refining failed")
        )
        items = read_file(unit.path, fields, unit.start, unit.stop, unit.first_position)
        expected = Counter(i.id for i in items if isinstance(i, Document))
        report.input_records += sum(expected.values())
        report.output_records += sum(written.values())
        report.rejected += len(rejects)
        duplicated = [i for i, n in (written + refused).items() if n > expected.get(i, 0)]
        if duplicated:
            listed = ", ".join(duplicated[:max_listed])
            report.problems.append(
                f"unit {unit.name}: records written more often than read: {listed}"
            )
        lost = expected - written - refused
        if lost and not limited:
            listed = ", ".join(list(lost)[:max_listed])
            report.problems.append(
                f"unit {unit.name}: {sum(lost.values())} input records have no output: {listed}"
            )
    return report


def _lines(path: Path) -> list[str]:
    # "\n" alone ends a JSONL line: str.splitlines would also split at U+2028 inside a string
    if not path.is_file():
        return []
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line]
