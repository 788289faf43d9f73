"""Records with fields of any type as Parquet columns: one type per field for a whole run.

Merged crawls hold fields whose type changes from record to record (`"extra": 1`, then
`"extra": "a"`, then an object), and fields that appear late or not at all. A Parquet file has
one schema, so proxkit gives every field one column type for the whole run, fixed by the first
value it sees (`FieldKinds`), and stores what does not fit without losing it:
- strings, booleans, integers (64-bit) and floats get `string`, `bool`, `int64`, `double`
  columns; objects, lists and integers beyond 64 bits get a `json` column (the value's JSON
  text); `metadata` is always `json`;
- a value that does not fit its field's column (a string in an `int64` column, an integer in a
  `double` one: converting it would change it) is stored, as JSON, in the `_prox_overflow`
  column (one JSON object per row, field -> value), and the field's own column is null there;
- a file's columns are the fields that have a value in its first row group, in the order they
  first appear there, so a file's bytes depend on its own records only (not on what other
  units, ranks or an earlier attempt saw first); a field first seen later in the file, or
  null throughout its first row group, goes to `_prox_overflow` in that file;
- a field that is itself named `_prox_overflow` is stored inside the overflow column, under its
  name, and read back as that field;
- a missing field and a null read back alike, as null (Parquet has no "absent").
The kinds are written into each file's key-value metadata (`proxkit.columns`), so proxkit reads
its own Parquet back into the records it wrote (`decode_row`). In a folder output the kinds
live in `_prox/columns/`, one file per field (named by a hash of the field's name), created
whole or not at all, so every shard, every rank and a resumed run use the same column types;
a damaged one is rebuilt from the completed shards' metadata.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from proxkit.io.atomic import DamagedFile, create_once, read_json

OVERFLOW = "_prox_overflow"
KINDS_KEY = b"proxkit.columns"
KINDS = ("bool", "int64", "double", "string", "json")
ALWAYS_JSON = ("metadata",)
INT64 = (-(2**63), 2**63 - 1)


def kind_of(value: Any) -> str | None:
    """The column kind a first value asks for; None for null (no decision yet)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64" if INT64[0] <= value <= INT64[1] else "json"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    return "json"


def fits(kind: str, value: Any) -> bool:
    if value is None or kind == "json":
        return True
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "int64":
        return isinstance(value, int) and INT64[0] <= value <= INT64[1]
    if kind == "double":
        return isinstance(value, float)
    return isinstance(value, str)


def arrow_type(kind: str) -> Any:
    import pyarrow as pa

    return {"bool": pa.bool_(), "int64": pa.int64(), "double": pa.float64()}.get(kind, pa.string())


def read_kind(path: Path) -> tuple[str, str]:
    """(field, kind) from a column-type file; `DamagedFile` when it holds anything else."""
    entry = read_json(path)
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("field"), str)
        or entry.get("kind") not in KINDS
    ):
        raise DamagedFile(path, 'not a {"field": ..., "kind": ...} object')
    return entry["field"], entry["kind"]


def file_kinds(path: Path) -> dict[str, str]:
    """The column kinds a proxkit Parquet file was written with (from its footer)."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata[KINDS_KEY]) if KINDS_KEY in metadata else {}


class FieldKinds:
    """Field name -> column kind, fixed once per run; kept in `folder` when given. Files of
    `folder` that cannot be read are listed in `damaged` (and not used)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self.kinds: dict[str, str] = {name: "json" for name in ALWAYS_JSON}
        self.damaged: list[DamagedFile] = []
        if folder is not None and folder.is_dir():
            for path in sorted(folder.glob("*.json")):
                try:
                    name, kind = read_kind(path)
                except DamagedFile as exc:
                    self.damaged.append(exc)
                    continue
                self.kinds[name] = kind

    def decide(self, name: str, value: Any) -> str | None:
        """The field's kind, fixed now by `value` if the run has none yet."""
        known = self.kinds.get(name)
        if known is not None or name == OVERFLOW or (kind := kind_of(value)) is None:
            return known
        if self.folder is not None:
            kind = self._claim(name, kind)
        self.kinds[name] = kind
        return kind

    def restore(self, written: Mapping[str, str]) -> None:
        """Replace the damaged files (removed) by the kinds completed files were written with."""
        for damaged in self.damaged:
            damaged.path.unlink(missing_ok=True)
        self.damaged = []
        for name, kind in written.items():
            if name not in self.kinds:
                self.kinds[name] = self._claim(name, kind) if self.folder is not None else kind

    def path(self, name: str) -> Path:
        digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:16]
        return self.folder / f"{digest}.json"  # type: ignore[operator]

    def _claim(self, name: str, kind: str) -> str:
        """Record the kind unless another process (a rank, a resumed run) did first."""
        path = self.path(name)
        if create_once(path, json.dumps({"field": name, "kind": kind}).encode("utf-8")):
            return kind
        field, recorded = read_kind(path)
        if field != name:
            raise DamagedFile(path, f"holds the field {field!r}, not {name!r}")
        return recorded


def schema_fields(rows: list[dict[str, Any]], kinds: Mapping[str, str]) -> dict[str, str]:
    """A file's columns: the fields with a value in `rows`, in the order they first appear."""
    found: dict[str, str] = {}
    for row in rows:
        for name, value in row.items():
            if value is not None and name not in found and name in kinds:
                found[name] = kinds[name]
    return found


def encode_rows(rows: list[dict[str, Any]], kinds: dict[str, str]) -> dict[str, list[Any]]:
    """Column lists for `rows` under fixed `kinds` (field -> kind), with the overflow column."""
    columns: dict[str, list[Any]] = {name: [] for name in kinds}
    overflow: list[str | None] = []
    for row in rows:
        spilled = {}
        for name, kind in kinds.items():
            value = row.get(name)
            if not fits(kind, value):
                spilled[name] = value
                value = None
            elif kind == "json" and value is not None:
                value = json.dumps(value, ensure_ascii=False, allow_nan=False, default=str)
            columns[name].append(value)
        spilled |= {name: value for name, value in row.items() if name not in kinds}
        overflow.append(
            json.dumps(spilled, ensure_ascii=False, allow_nan=False, default=str)
            if spilled
            else None
        )
    columns[OVERFLOW] = overflow
    return columns


def decode_row(row: dict[str, Any], kinds: dict[str, str]) -> dict[str, Any]:
    """A row of a proxkit Parquet file back into the record that was written."""
    record = {}
    for name, value in row.items():
        if name == OVERFLOW:
            continue
        record[name] = (
            json.loads(value) if kinds.get(name) == "json" and value is not None else value
        )
    spilled = row.get(OVERFLOW)
    if spilled:
        record.update(json.loads(spilled))
    return record
