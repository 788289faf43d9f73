"""`prox verify OUT`: an audit of a run's output that takes nothing from its bookkeeping on trust.

For each work unit (or the one input stream of a single-file output) the inputs are read again,
with the run's fields, and walked in order beside what the run wrote:
- every input record is in exactly one output record or reject line that is on disk now (the
  reader's own rejects too): none lost, none written twice, none that matches no input;
- every output record is rebuilt from its input: its stored programs (`metadata.doc_program`,
  `metadata.chunk_program`, for the stages `metadata.prox` says were run) are executed again on
  the original with the run's mode, thresholds and deletion-only setting, or found kept from
  the chunk stage by the run's keep-score band (`proxkit.program.executor`) and the record
  is assembled as the run assembles it (`records.assemble`); any field that differs is named;
- every shard is read with the standard readers: `json` line by line (strict: UTF-8, no NaN),
  `pyarrow.parquet.read_table`'s own reader (pyarrow.dataset, a batch at a time; it refuses two
  columns of one name), each column in the run's column type;
- the state files are intact: `_prox/run.json`, each completion record (and the sizes it
  records), the column-type files, `stats.json`; and no temporary file is left over.
Each problem is one line naming the file. Reading streams (a unit costs one small hash per
record in memory), shows progress, and says how long it took.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from proxkit.config import ConfigError, RefineConfig
from proxkit.io.atomic import TEMPORARY_SUFFIX, DamagedFile, read_json
from proxkit.io.columns import KINDS_KEY, OVERFLOW, FieldKinds, arrow_type, decode_row
from proxkit.io.readers import (
    Document,
    Fields,
    Reject,
    id_text,
    open_decompressed,
    read_file,
    read_inputs,
    record_format,
)
from proxkit.io.writers import PARTIAL_SUFFIX
from proxkit.pipeline.batch import band_outcome, passed
from proxkit.pipeline.records import RAW, assemble, original_text
from proxkit.pipeline.run import RunPaths, input_files
from proxkit.pipeline.units import RunState, WorkUnit, fingerprint
from proxkit.program.executor import execute_chunk, execute_doc

RECORDED = ("mode", "doc", "chunk", "unencodable", "displaced")  # metadata.prox the run derives


@dataclass
class Verification:
    units: int = 0
    complete_units: int = 0
    input_records: int = 0
    output_records: int = 0
    rejected: int = 0
    limited: bool = False  # a --limit run: each unit is checked as a prefix of its input
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (
            f"{self.complete_units}/{self.units} units complete; {self.input_records:,} input "
            f"records, {self.output_records:,} output records, {self.rejected:,} rejected; "
            f"checked in {self.seconds:.1f} s"
            + (" (a --limit run: checked as prefixes)" if self.limited else "")
        )


@dataclass(frozen=True)
class Part:
    """One stream of input records and what the run wrote for it."""

    label: str  # "unit 00003", or the output file's name
    items: Iterator[Document | Reject]
    shards: list[Path]
    rejects: Path  # where its rejects are, if it has any


class Audit:
    """Checks parts of one run against its configuration, collecting problems."""

    def __init__(self, config: RefineConfig, report: Verification, max_listed: int) -> None:
        self.fields = Fields(config.text_field, config.id_field)
        self.config = config
        self.report = report
        self.max_listed = max_listed
        self.kinds: dict[str, str] | None = None  # the run's Parquet column types, if known
        self.undone: list[str] = []  # units without a completion record
        self.bar: tqdm | None = None

    def problem(self, message: str) -> None:
        self.report.problems.append(message)

    # -- reading what was written, with the standard readers ---------------------------------

    def shard_records(self, path: Path) -> Iterator[dict[str, Any]]:
        """The records of one shard; a shard the standard readers refuse is one problem."""
        if not path.is_file():
            self.problem(f"{path}: missing")
            return
        if record_format(str(path)) == "parquet":
            yield from self._parquet_records(path)
            return
        number = 0
        try:
            with open_decompressed(str(path)) as handle:
                for number, line in enumerate(handle, start=1):
                    try:
                        yield _strict_json(line)
                    except ValueError as exc:
                        self.problem(f"{path}:{number}: not a strict JSON line ({exc})")
        except Exception as exc:
            self.problem(f"{path}: unreadable after line {number} ({type(exc).__name__}: {exc})")

    def _parquet_records(self, path: Path) -> Iterator[dict[str, Any]]:
        """Rows read by the reader behind `pyarrow.parquet.read_table` (pyarrow.dataset, which
        refuses what read_table refuses), a batch at a time."""
        import pyarrow.dataset as ds

        try:
            dataset = ds.dataset(path, format="parquet")
            metadata = dataset.schema.metadata or {}
            kinds = json.loads(metadata[KINDS_KEY]) if KINDS_KEY in metadata else {}
            self._check_columns(path, dataset.schema, kinds)
            for batch in dataset.to_batches(batch_size=1024):
                for row in batch.to_pylist():
                    yield decode_row(row, kinds)
        except Exception as exc:
            self.problem(f"{path}: pyarrow.parquet.read_table cannot read it ({str(exc)[:300]})")

    def _check_columns(self, path: Path, schema: Any, kinds: dict[str, str]) -> None:
        for name in schema.names:
            if name == OVERFLOW:
                continue
            kind = kinds.get(name)
            if kind is None or schema.field(name).type != arrow_type(kind):
                self.problem(f"{path}: column {name!r} has no column type, or not its own")
            elif self.kinds is not None and self.kinds.get(name, kind) != kind:
                self.problem(
                    f"{path}: column {name!r} is {kind}, the run's type (_prox/columns) is "
                    f"{self.kinds[name]}"
                )

    def reject_lines(self, path: Path) -> Iterator[dict[str, Any]]:
        if not path.is_file():
            return
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    yield _strict_json(line)
                except ValueError as exc:
                    self.problem(f"{path}:{number}: not a strict JSON line ({exc})")

    # -- walking input and output side by side ----------------------------------------------

    def check(self, part: Part) -> tuple[int, int]:
        """Audit one part; (output records, reject lines) found."""
        found = Findings(part.label, self.max_listed)
        records = ((shard, r) for shard in part.shards for r in self.shard_records(shard))
        rejects = self.reject_lines(part.rejects)
        rejects_name = part.rejects.name
        pending = next(records, None)
        reject = next(rejects, None)
        matched: set[bytes] = set()
        written = rejected = 0
        for item in part.items:
            if self.bar is not None:
                self.bar.update(1)
            if self.report.limited and pending is None and reject is None:
                break  # a --limit run stopped here
            self.report.input_records += isinstance(item, Document)
            if isinstance(item, Reject):
                if reject == item.to_record():
                    reject, rejected = next(rejects, None), rejected + 1
                else:
                    found.missing_rejects.append(f"{_where(item)} in {rejects_name}")
                continue
            if _failed_here(reject, item):
                if reject.get("id") != item.id or reject.get("raw") != _raw(item):  # type: ignore[union-attr]
                    found.changed.append(f"{rejects_name}: the reject of {_where(item)}")
                reject, rejected = next(rejects, None), rejected + 1
                continue
            key = _identity(item.id, original_text(item))
            while pending is not None and self._key(pending[1]) != key:
                if self._key(pending[1]) not in matched:
                    break
                found.twice.append(f"{self._id(pending[1])} (in {pending[0].name})")
                pending, written = next(records, None), written + 1
            if pending is None or self._key(pending[1]) != key:
                found.lost.append(f"{item.id} ({_where(item)})")
                continue
            shard, record = pending
            differing = self._differences(item, record, record_format(str(shard)) == "parquet")
            if differing:
                found.changed.append(f"{shard.name}: id {item.id}: {', '.join(differing)}")
            matched.add(key)
            pending, written = next(records, None), written + 1
        while pending is not None:
            kind = found.twice if self._key(pending[1]) in matched else found.unknown
            kind.append(f"{self._id(pending[1])} (in {pending[0].name})")
            pending, written = next(records, None), written + 1
        while reject is not None:
            found.unknown.append(
                f"reject of {reject.get('source')}:{reject.get('position')} (in {rejects_name})"
            )
            reject, rejected = next(rejects, None), rejected + 1
        self.report.problems += found.lines()
        return written, rejected

    def _id(self, record: dict[str, Any]) -> str:
        return id_text(record.get(self.fields.id))

    def _key(self, record: dict[str, Any]) -> bytes:
        raw = record.get(RAW)
        return _identity(self._id(record), raw if isinstance(raw, str) else "")

    def _differences(self, document: Document, record: dict[str, Any], parquet: bool) -> list[str]:
        """The fields in which `record` is not what the run makes of `document` with the
        programs the record stores."""
        metadata = record.get("metadata")
        prox = metadata.get("prox") if isinstance(metadata, dict) else None
        if not isinstance(prox, dict):
            return ["metadata.prox is missing"]
        programs = {}
        for stage in ("doc", "chunk"):
            program = metadata.get(f"{stage}_program") if stage in prox else None  # type: ignore[union-attr]
            if program is not None and not isinstance(program, str):
                return [f"metadata.{stage}_program is not a string"]
            programs[stage] = program
        original = original_text(document)
        config = self.config
        doc = None
        if programs["doc"] is not None:
            doc = execute_doc(original, programs["doc"], config.mode)
        chunk = None
        if doc is None or not doc.dropped:
            gated = band_outcome(prox.get("doc_info"), config.chunk_score_range)
            if gated is not None:  # the band kept it from the chunk stage
                chunk = passed(original, gated)
            elif programs["chunk"] is not None:
                chunk = execute_chunk(
                    original,
                    programs["chunk"],
                    config.mode,
                    config.thresholds,
                    config.deletion_only,
                )
        info = {k: v for k, v in prox.items() if k not in RECORDED}
        expected = assemble(
            document,
            original,
            programs["doc"],
            doc,
            programs["chunk"],
            chunk,
            config.mode,
            self.fields,
            info,
        ).record
        if parquet:  # a missing field and a null read back alike
            expected, record = _without_nulls(expected), _without_nulls(record)
        return _differing_paths(expected, record)


@dataclass
class Findings:
    """What one part's walk found, listed a few at a time."""

    label: str
    max_listed: int
    lost: list[str] = field(default_factory=list)
    twice: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    missing_rejects: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        kinds = (
            (self.lost, "{n} input records have no output"),
            (self.twice, "records written more often than read ({n})"),
            (self.unknown, "{n} records match no input record"),
            (self.changed, "{n} records are not what their input and stored programs give"),
            (self.missing_rejects, "{n} rejects are missing"),
        )
        lines = []
        for found, what in kinds:
            if found:
                listed = "; ".join(found[: self.max_listed])
                if len(found) > self.max_listed:
                    listed += f"; and {len(found) - self.max_listed:,} more"
                lines.append(f"{self.label}: {what.format(n=f'{len(found):,}')}: {listed}")
        return lines


def _strict_json(line: bytes) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line.decode("utf-8"), parse_constant=refuse)


def _identity(record_id: str, original: str) -> bytes:
    data = f"{record_id}\0{original}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).digest()


def _where(item: Document | Reject) -> str:
    return f"{item.source}:{item.position}" if item.position is not None else item.source


def _raw(document: Document) -> str:
    return json.dumps(document.record, ensure_ascii=False, default=str)


def _failed_here(reject: dict[str, Any] | None, document: Document) -> bool:
    """Whether the next reject line is this document's, rejected while it was refined."""
    return (
        reject is not None
        and reject.get("source") == document.source
        and reject.get("position") == document.position
        and str(reject.get("reason", "")).startswith("refining failed")
    )


def _without_nulls(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if v is not None}


def _differing_paths(expected: Any, found: Any, prefix: str = "", depth: int = 3) -> list[str]:
    if expected == found:
        return []
    if depth and isinstance(expected, dict) and isinstance(found, dict):
        return [
            path
            for key in [*expected, *(k for k in found if k not in expected)]
            for path in _differing_paths(
                expected.get(key), found.get(key), f"{prefix}{key}.", depth - 1
            )
        ] or [prefix.rstrip(".") or "the record"]
    return [prefix.rstrip(".") or "the record"]


# -- the state files ------------------------------------------------------------------------


def _leftovers(output: Path, state: RunState) -> list[str]:
    folders = (output, state.root, state.root / "done", state.columns)
    return [
        f"{p}: a temporary file left by a writer that did not finish"
        for folder in folders
        if folder.is_dir()
        for p in sorted(folder.iterdir())
        if p.name.endswith((PARTIAL_SUFFIX, TEMPORARY_SUFFIX))
    ]


def _check_stats(path: Path, report: Verification, audit: Audit) -> None:
    if not path.is_file():
        return
    try:
        stats = read_json(path)
    except DamagedFile as exc:
        audit.problem(str(exc))
        return
    counted = {"documents": report.output_records, "rejected": report.rejected}
    for name, value in counted.items():
        if not isinstance(stats, dict) or stats.get(name) != value:
            recorded = stats.get(name) if isinstance(stats, dict) else None
            audit.problem(f"{path}: {name} is {recorded}, the output holds {value:,}")


def _unit_parts(
    output: Path, state: RunState, units: list[WorkUnit], audit: Audit
) -> Iterator[tuple[Part, dict[str, Any]]]:
    """The completed units whose input can be read again, with their completion records."""
    fields = audit.fields
    for unit in units:
        try:
            record = state.done(unit)
        except DamagedFile as exc:
            audit.problem(str(exc))
            continue
        if record is None:
            audit.undone.append(
                f"unit {unit.name} ({unit.path}) is not complete: {state.record(unit)} is missing"
            )
            continue
        audit.report.complete_units += 1
        try:
            changed = fingerprint(unit.path) != (unit.size, unit.modified)
        except (OSError, ValueError) as exc:
            audit.problem(f"unit {unit.name}: its input {unit.path} cannot be read again ({exc})")
            continue
        if changed:
            audit.problem(
                f"unit {unit.name}: its input {unit.path} changed since the run; not checked"
            )
            continue
        listed = list(zip(record["files"], record["bytes"]))
        if record["rejects"] is not None:
            listed.append(tuple(record["rejects"]))
        for name, size in listed:  # a missing shard is reported where it is read
            path = output / name
            if not path.is_file() and name == (record["rejects"] or [None])[0]:
                audit.problem(f"{path}: missing")
            elif path.is_file() and path.stat().st_size != size:
                audit.problem(
                    f"{path}: {path.stat().st_size:,} bytes, its unit's record says {size:,}"
                )
        items = read_file(unit.path, fields, unit.start, unit.stop, unit.first_position)
        shards = [output / name for name in record["files"]]
        rejects = output / f"rejects-{unit.name}.jsonl"
        yield Part(f"unit {unit.name}", items, shards, rejects), record


def _plan(
    state: RunState, report: Verification
) -> tuple[RefineConfig, list[WorkUnit], bool] | None:
    """The run's configuration, its units, and whether they are all of them: from
    `_prox/run.json`, or when it is damaged, from `config.yaml` and the completion records
    that can be read (the others are named)."""
    try:
        manifest = state.read_manifest()
        units = [WorkUnit(**u) for u in manifest["units"]]
        return RefineConfig.from_dict(manifest["config"]), units, True
    except DamagedFile as exc:
        report.problems.append(f"{exc}; checking the units whose completion records can be read")
    except (ConfigError, TypeError) as exc:
        report.problems.append(f"{state.manifest}: {exc}")
        return None
    paths = RunPaths.for_output(str(state.output))
    try:
        config = RefineConfig.from_dict(yaml.safe_load(paths.config.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError, ConfigError, TypeError, AttributeError) as exc:
        report.problems.append(f"{paths.config}: cannot stand in for _prox/run.json ({exc})")
        return None
    units = []
    for path in sorted((state.root / "done").glob("unit-*.json")):
        try:
            units.append(WorkUnit(**read_json(path)["unit"]))
        except DamagedFile as exc:
            report.problems.append(str(exc))
        except (TypeError, KeyError) as exc:
            report.problems.append(f"{path} is damaged (no work unit: {exc})")
    return config, units, False


def _folder(output: Path, report: Verification, max_listed: int, progress: bool) -> None:
    state = RunState(output)
    plan = _plan(state, report)
    if plan is None:
        return
    config, units, every_unit = plan
    report.units = len(units)
    report.limited = config.limit is not None
    audit = Audit(config, report, max_listed)
    kinds = FieldKinds(state.columns)
    audit.kinds = kinds.kinds
    report.problems += [str(d) for d in kinds.damaged]
    report.problems += _leftovers(output, state)
    totals = [state.done_or_none(u) for u in units]
    total = sum(r["stats"]["documents"] + r["stats"]["rejected"] for r in totals if r)
    listed = {n for r in totals if r for n in [*r["files"], *(r["rejects"] or [])[:1]]}
    ours = [p for p in sorted(output.iterdir()) if p.name.startswith(("part-", "rejects-"))]
    for path in ours:  # temporary files among them are reported as left over
        if path.name not in listed and not path.name.endswith(PARTIAL_SUFFIX):
            report.problems.append(f"{path}: belongs to no completed unit")
    checked = 0
    with tqdm(total=total, unit="rec", disable=not progress, desc="verify") as bar:
        audit.bar = bar
        for part, record in _unit_parts(output, state, units, audit):
            checked += 1
            written, rejected = audit.check(part)
            report.output_records += written
            report.rejected += rejected
            stats = record["stats"]
            if (stats.get("documents"), stats.get("rejected")) != (written, rejected):
                report.problems.append(
                    f"{state.record(WorkUnit(**record['unit']))}: counts {stats.get('documents')} "
                    f"records and {stats.get('rejected')} rejects; the files hold {written:,} and {rejected:,}"
                )
    if not (report.limited and report.input_records >= (config.limit or 0)):
        report.problems += audit.undone  # a --limit run that took its documents ends early
    if every_unit and checked == report.units:  # else its counts cannot match
        _check_stats(output / "stats.json", report, audit)


def _single_file(output: Path, report: Verification, max_listed: int, progress: bool) -> None:
    paths = RunPaths.for_output(str(output))
    if not paths.config.is_file():
        raise FileNotFoundError(f"{output}: no {paths.config.name} beside it (the run did not end)")
    try:
        config = RefineConfig.from_dict(yaml.safe_load(paths.config.read_text(encoding="utf-8")))
        files = input_files(config.inputs, paths)
    except (ConfigError, TypeError, ValueError, OSError) as exc:
        report.problems.append(f"{paths.config}: {exc}")
        return
    report.units = report.complete_units = 1
    report.limited = config.limit is not None
    audit = Audit(config, report, max_listed)
    part = Part(output.name, read_inputs(files, audit.fields), [output], paths.rejects)
    with tqdm(unit="rec", disable=not progress, desc="verify") as bar:
        audit.bar = bar
        report.output_records, report.rejected = audit.check(part)
    _check_stats(paths.stats, report, audit)


def verify(output: Path, max_listed: int = 10, progress: bool = False) -> Verification:
    """Audit the output of `prox refine` or `prox execute` (a folder, or a single file)."""
    started = time.perf_counter()
    report = Verification()
    if record_format(str(output)) is not None:
        _single_file(output, report, max_listed, progress)
    else:
        state = RunState(output)
        if not state.exists():
            raise FileNotFoundError(f"{output} holds no prox run (no {state.manifest})")
        _folder(output, report, max_listed, progress)
    report.problems = [" ".join(p.split()) for p in report.problems]  # one line each
    report.seconds = time.perf_counter() - started
    return report
