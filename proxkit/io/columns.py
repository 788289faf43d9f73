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
- a field first seen after a file's schema was fixed goes to `_prox_overflow` in that file;
- a missing field and a null read back alike, as null (Parquet has no "absent").
The kinds are written into each file's key-value metadata (`proxkit.columns`), so proxkit reads
its own Parquet back into the records it wrote (`decode_row`). In a folder output the kinds
live in `_prox/columns/`, one file per field created atomically, so every shard, every rank and
a resumed run use the same column types.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

OVERFLOW = "_prox_overflow"
KINDS_KEY = b"proxkit.columns"
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


class FieldKinds:
    """Field name -> column kind, fixed once per run; kept in `folder` when given."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self.kinds: dict[str, str] = {name: "json" for name in ALWAYS_JSON}
        if folder is not None and folder.is_dir():
            for path in sorted(folder.glob("*.json")):
                entry = json.loads(path.read_text(encoding="utf-8"))
                self.kinds[entry["field"]] = entry["kind"]

    def decide(self, name: str, value: Any) -> str | None:
        """The field's kind, fixed now by `value` if the run has none yet."""
        known = self.kinds.get(name)
        if known is not None or (kind := kind_of(value)) is None:
            return known
        if self.folder is not None:
            kind = self._claim(name, kind)
        self.kinds[name] = kind
        return kind

    def _claim(self, name: str, kind: str) -> str:
        """Record the kind unless another process (a rank, a resumed run) did first."""
        self.folder.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:16]
        path = self.folder / f"{digest}.json"  # type: ignore[operator]
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return json.loads(path.read_text(encoding="utf-8"))["kind"]
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump({"field": name, "kind": kind}, handle)
        return kind


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
