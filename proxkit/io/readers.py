"""Read corpus files (JSONL, .jsonl.gz/.zst/.bz2/.xz, Parquet) from paths, folders, globs or URLs.

Reading never raises on bad data: every input record becomes either a `Document` or a
`Reject` that names the file, the line (JSONL) or row (Parquet) and the reason, and keeps the
raw text so nothing is lost (a line, or a Parquet string, that is not UTF-8 keeps its bytes as
`\\xNN` escapes). A file that cannot be opened, or breaks part-way (a corrupt gzip), yields one
file-level `Reject` after the records that could be read. Values no writer can carry (lone
surrogates, NaN) are replaced where a record is read, and kept aside (`encodable.py`); so are
Parquet values that JSON has no type for (binary, timestamps, dates, decimals, maps).

Folders are read recursively, except what prox runs write beside their records (`_prox/`,
`stats.json`, rejects files), so a prox output is read as the records it holds.
"""

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import io
import json
import lzma
import posixpath
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import fsspec

from proxkit.io.columns import KINDS_KEY, decode_row
from proxkit.io.encodable import clean_record, pointer

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd", ".bz2", ".xz")
PARQUET_SUFFIXES = (".parquet",)


@dataclass(frozen=True)
class Fields:
    """Which record fields hold the document text and its id."""

    text: str = "text"
    id: str = "id"


@dataclass(frozen=True)
class Document:
    """One readable input record."""

    id: str
    text: str
    record: dict[str, Any]  # the whole input record; its other fields pass through
    source: str
    position: int  # 1-based line (JSONL) or row (Parquet) in `source`
    unencodable: tuple[dict[str, str], ...] = ()  # values replaced on reading (encodable.py)


@dataclass(frozen=True)
class Reject:
    """An input record (or a whole file, `position=None`) that could not be used, and why."""

    source: str
    position: int | None
    reason: str
    raw: str | None = None
    id: str | None = None
    unencodable: tuple[dict[str, str], ...] = ()

    def to_record(self) -> dict[str, Any]:
        record = {
            "source": self.source,
            "position": self.position,
            "id": self.id,
            "reason": self.reason,
            "raw": self.raw,
        }
        if self.unencodable:
            record["unencodable"] = list(self.unencodable)
        return record


def id_text(value: Any) -> str:
    """An id as proxkit compares it: a string as it is, any other value as its JSON text."""
    return value if isinstance(value, str) else _dump(value)


def content_id(text: str) -> str:
    """A stable id for records that have none: a hash of the text."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def record_format(path: str) -> str | None:
    """'jsonl' or 'parquet' from the file name, None for files that hold no records."""
    name = path.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


STATE_FOLDER = "_prox"  # a prox output folder's own state (pipeline/units.py)
GLOB_CHARACTERS = re.compile(r"[*?\[]")


def _bookkeeping(fs: Any, path: str, cache: dict[str, bool]) -> bool:
    """Whether a file found in a folder is what a prox run writes beside its records: its state
    (`_prox/`), its statistics and rejects (in a folder holding `_prox/`), or those of a
    single-file output (`NAME.stats.json`, `NAME.rejects.jsonl` beside `NAME.config.yaml`)."""
    folder, name = posixpath.split(path)
    if STATE_FOLDER in path.split("/"):
        return True
    if name == "stats.json" or (name.startswith("rejects") and name.endswith(".jsonl")):
        if folder not in cache:
            cache[folder] = fs.isdir(posixpath.join(folder, STATE_FOLDER))
        if cache[folder]:
            return True
    for suffix in (".stats.json", ".rejects.jsonl"):
        if name.endswith(suffix):
            return fs.exists(posixpath.join(folder, name[: -len(suffix)] + ".config.yaml"))
    return False


def _inside(path: str, folders: Sequence[Path]) -> bool:
    resolved = Path(path).resolve()
    return any(resolved == f or f in resolved.parents for f in folders)


def list_files(inputs: str | Sequence[str], exclude: Sequence[Path] = ()) -> list[str]:
    """Expand paths, folders (recursively) and globs into a sorted list of record files.

    Folders and globs leave out the files of prox runs' bookkeeping, and local files equal to
    or inside `exclude` (a run's own output). An input that matches nothing raises
    FileNotFoundError: the run cannot go on without it.
    """
    owned = [Path(p).resolve() for p in exclude]
    files: list[str] = []
    for spec in [inputs] if isinstance(inputs, str) else inputs:
        fs, _, paths = fsspec.get_fs_token_paths(spec)
        local = "://" not in spec or spec.startswith("file://")
        expanded = GLOB_CHARACTERS.search(spec) is not None
        found: list[str] = []
        seen: dict[str, bool] = {}
        for path in paths:
            if fs.isdir(path):
                found.extend(
                    p for p in fs.find(path) if record_format(p) and not _bookkeeping(fs, p, seen)
                )
            elif fs.exists(path) and not (expanded and _bookkeeping(fs, path, seen)):
                found.append(path)
        if local and owned:
            found = [p for p in found if not _inside(p, owned)]
        if not found:
            raise FileNotFoundError(f"no input files match {spec!r}")
        files.extend(fs.unstrip_protocol(p) if "://" in spec else p for p in sorted(found))
    return files


def document_from_record(
    data: object,
    fields: Fields,
    source: str,
    position: int,
    raw: str | None,
    converted: Sequence[dict[str, str]] = (),
) -> Document | Reject:
    """Validate one decoded record: an object with a string text field (and maybe an id).
    An id that is not a string is kept in the record and read as its JSON text (42 -> "42").
    `converted`: notes on Parquet values converted to JSON (`read_parquet`)."""
    if not isinstance(data, dict):
        cleaned, unencodable = clean_record({"value": data})
        return Reject(
            source,
            position,
            f"record is not a JSON object (got {type(data).__name__})",
            raw or _dump(cleaned["value"]),
            unencodable=tuple(unencodable),
        )
    data, found = clean_record(data)
    unencodable = (*converted, *found)
    raw_id = data.get(fields.id)
    record_id = None if raw_id is None else id_text(raw_id)
    text = data.get(fields.text)
    if text is None:
        reason = (
            f"record has no {fields.text!r} field"
            if fields.text not in data
            else f"{fields.text!r} is null"
        )
        return Reject(source, position, reason, raw or _dump(data), record_id, unencodable)
    if not isinstance(text, str):
        return Reject(
            source,
            position,
            f"{fields.text!r} is not a string (got {type(text).__name__})",
            raw or _dump(data),
            record_id,
            unencodable,
        )
    document_id = record_id if record_id is not None else content_id(text)
    return Document(document_id, text, data, source, position, unencodable)


def _dump(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, allow_nan=False, default=str)


class ZstdFrames(io.RawIOBase):
    """The content of a zstd file, frame after frame, that raises on a truncated last frame
    (zstandard's stream reader just stops there, and the records after the cut would vanish
    without a word)."""

    def __init__(self, raw: IO[bytes]) -> None:
        import zstandard  # only .zst inputs need it

        self.raw = raw
        self.decompressor = zstandard.ZstdDecompressor
        self.frame = self.decompressor().decompressobj()
        self.started = False  # compressed bytes of the current frame were read
        self.pending = b""
        self.offset = 0

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        while True:
            chunk = self.raw.read(1 << 20)
            if not chunk:
                if self.started:
                    raise EOFError("zstd data ends inside a frame (the file is truncated)")
                return False
            out = self.frame.decompress(chunk)
            self.started = True
            while self.frame.eof:  # a frame ended; the next one may follow at once
                rest = self.frame.unused_data
                self.frame = self.decompressor().decompressobj()
                self.started = bool(rest)
                if not rest:
                    break
                out += self.frame.decompress(rest)
            if out:
                self.pending, self.offset = out, 0
                return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self.offset >= len(self.pending) and not self._fill():
            return 0
        count = min(len(buffer), len(self.pending) - self.offset)
        buffer[:count] = self.pending[self.offset : self.offset + count]
        self.offset += count
        return count


@contextmanager
def open_decompressed(path: str) -> Iterator[IO[bytes]]:
    """A buffered binary stream of the file's content, decompressed by its suffix."""
    with fsspec.open(path, "rb") as raw:
        name = path.lower()
        if name.endswith(".gz"):
            stream: IO[bytes] = gzip.GzipFile(fileobj=raw)
        elif name.endswith((".zst", ".zstd")):
            stream = io.BufferedReader(ZstdFrames(raw), buffer_size=1 << 20)
        elif name.endswith(".bz2"):
            stream = bz2.BZ2File(raw)
        elif name.endswith(".xz"):
            stream = lzma.LZMAFile(raw)  # noqa: SIM115 - closed by the with-block below
        else:
            stream = raw
        with stream:
            yield stream


def _lines_in_range(handle: IO[bytes], start: int, stop: int | None) -> Iterator[bytes]:
    """The lines that start in bytes [start, stop) of a seekable file."""
    if start:
        handle.seek(start - 1)
        handle.readline()  # the end of the line that started before `start`
    while stop is None or handle.tell() < stop:
        line = handle.readline()
        if not line:
            return
        yield line


def read_jsonl(
    path: str, fields: Fields, start: int = 0, stop: int | None = None, first_line: int = 1
) -> Iterator[Document | Reject]:
    """Records of a JSONL file, or of the lines starting in bytes [start, stop) of an
    uncompressed one (`first_line`: the number of the range's first line)."""
    position = first_line - 1
    try:
        with open_decompressed(path) as handle:
            lines = _lines_in_range(handle, start, stop) if start or stop is not None else handle
            for position, line in enumerate(lines, start=first_line):
                if position == 1 and line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]  # a byte order mark opens the file, not the record
                if not line.strip():
                    continue
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raw = line.decode("utf-8", "backslashreplace").rstrip("\n")
                    reason = f"not valid UTF-8 (byte 0x{line[exc.start]:02x} at {exc.start})"
                    yield Reject(path, position, reason, raw)
                    continue
                try:
                    data = json.loads(text)
                except (ValueError, RecursionError) as exc:
                    reason = (
                        "JSON nested too deeply"
                        if isinstance(exc, RecursionError)
                        else f"invalid JSON: {exc}"
                    )
                    yield Reject(path, position, reason, text.rstrip("\r\n"))
                    continue
                yield document_from_record(data, fields, path, position, None)
    except Exception as exc:  # unreadable or corrupt file: report it and go on with the next
        where = f"after line {position}" if position >= first_line else f"before line {first_line}"
        yield Reject(path, None, f"file unreadable {where}: {type(exc).__name__}: {exc}")


def _json_native(kind: Any) -> bool:
    """Whether pyarrow gives values of this Arrow type as JSON values (str, int, list, ...)."""
    import pyarrow as pa

    t = pa.types
    if t.is_null(kind) or t.is_boolean(kind) or t.is_integer(kind) or t.is_floating(kind):
        return True
    if t.is_string(kind) or t.is_large_string(kind):
        return True
    if t.is_list(kind) or t.is_large_list(kind) or t.is_fixed_size_list(kind):
        return _json_native(kind.value_type)
    if t.is_struct(kind):
        return all(_json_native(kind.field(i).type) for i in range(kind.num_fields))
    return False


def _readable_type(kind: Any) -> Any:
    """The type a column is cast to before it becomes Python values: strings as bytes (so
    invalid UTF-8 is found value by value), timestamps, dates, times, durations and decimals
    as Arrow's text of them; binary stays binary."""
    import pyarrow as pa

    t = pa.types
    if t.is_string(kind):
        return pa.binary()
    if t.is_large_string(kind):
        return pa.large_binary()
    if t.is_temporal(kind) or t.is_decimal(kind):
        return pa.string()
    if t.is_dictionary(kind):
        return _readable_type(kind.value_type)
    if t.is_list(kind):
        return pa.list_(_readable_type(kind.value_type))
    if t.is_large_list(kind):
        return pa.large_list(_readable_type(kind.value_type))
    if t.is_fixed_size_list(kind):
        return pa.list_(_readable_type(kind.value_type))
    if t.is_map(kind):
        return pa.map_(_readable_type(kind.key_type), _readable_type(kind.item_type))
    if t.is_struct(kind):
        return pa.struct(
            [
                pa.field(f.name, _readable_type(f.type))
                for f in (kind.field(i) for i in range(kind.num_fields))
            ]
        )
    return kind


def _from_arrow(value: Any, kind: Any, strict: bool) -> Any:
    """A value of `_readable_type(kind)` as the JSON value proxkit reads: strings decoded
    (`strict`: raising UnicodeDecodeError, else with `\\xNN` escapes), binary as base64 text,
    map entries as [key, value] pairs."""
    import pyarrow as pa

    t = pa.types
    if value is None:
        return None
    if t.is_dictionary(kind):
        return _from_arrow(value, kind.value_type, strict)
    if t.is_string(kind) or t.is_large_string(kind):
        return value.decode("utf-8") if strict else value.decode("utf-8", "backslashreplace")
    if t.is_binary(kind) or t.is_large_binary(kind) or t.is_fixed_size_binary(kind):
        return base64.b64encode(value).decode("ascii")
    if t.is_list(kind) or t.is_large_list(kind) or t.is_fixed_size_list(kind):
        return [_from_arrow(v, kind.value_type, strict) for v in value]
    if t.is_map(kind):
        return [
            [_from_arrow(k, kind.key_type, strict), _from_arrow(v, kind.item_type, strict)]
            for k, v in value
        ]
    if t.is_struct(kind):
        return {
            f.name: _from_arrow(value[f.name], f.type, strict)
            for f in (kind.field(i) for i in range(kind.num_fields))
        }
    return value


@dataclass(frozen=True)
class _Column:
    name: str
    values: list[Any]
    noted: str | None  # the Arrow type, when its values were converted to JSON
    invalid: dict[int, str]  # row -> why it is not valid UTF-8


def _column(name: str, array: Any) -> _Column:
    """One column of a batch as JSON values; rows holding invalid UTF-8 are named, with their
    values decoded leniently so the reject can keep them."""
    native = _json_native(array.type)
    if native:
        try:
            return _Column(name, array.to_pylist(), None, {})
        except UnicodeDecodeError:
            pass  # some value is not UTF-8: find which, value by value
    values, invalid = [], {}
    for row, value in enumerate(array.cast(_readable_type(array.type)).to_pylist()):
        try:
            values.append(_from_arrow(value, array.type, strict=True))
        except UnicodeDecodeError as exc:
            invalid[row] = (
                f"column {name!r} is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at {exc.start})"
            )
            values.append(_from_arrow(value, array.type, strict=False))
    return _Column(name, values, None if native else str(array.type), invalid)


def _parquet_rows(
    batch: Any, kinds: dict[str, str] | None
) -> Iterator[tuple[dict[str, Any], list[dict[str, str]], str | None]]:
    """(record, notes on converted values, why the row is rejected or None) per row."""
    columns = [_column(name, array) for name, array in zip(batch.schema.names, batch.columns)]
    for row in range(batch.num_rows):
        record = {c.name: c.values[row] for c in columns}
        notes = [
            {"path": pointer("", c.name), "arrow_type": c.noted}
            for c in columns
            if c.noted is not None and c.values[row] is not None
        ]
        reason = next((c.invalid[row] for c in columns if row in c.invalid), None)
        if reason is None and kinds is not None:  # proxkit's own output: rebuild the record
            try:
                record = decode_row(record, kinds)
            except ValueError as exc:
                reason = f"not a row proxkit wrote (its {KINDS_KEY.decode()} say otherwise): {exc}"
        yield record, notes, reason


def read_parquet(
    path: str,
    fields: Fields,
    groups: range | None = None,
    first_row: int = 1,
    batch_rows: int = 1024,
) -> Iterator[Document | Reject]:
    """Records of a Parquet file, or of its row groups `groups` (`first_row`: their first row)."""
    import pyarrow.parquet as pq

    position = first_row - 1
    try:
        with fsspec.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            columns = parquet.schema_arrow.names
            twice = sorted({c for c in columns if columns.count(c) > 1})
            if twice:
                yield Reject(
                    path,
                    None,
                    f"Parquet file has several columns named {', '.join(map(repr, twice))}; "
                    "its rows cannot be records",
                )
                return
            if fields.text not in columns:
                yield Reject(
                    path,
                    None,
                    f"Parquet file has no {fields.text!r} column (columns: {', '.join(columns)}); "
                    "choose the text column with --text-field",
                )
                return
            chosen = list(groups) if groups is not None else None
            # proxkit's own output: columns typed for the whole run, rebuilt into records
            metadata = parquet.schema_arrow.metadata or {}
            kinds = json.loads(metadata[KINDS_KEY]) if KINDS_KEY in metadata else None
            for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=chosen):
                for record, notes, reason in _parquet_rows(batch, kinds):
                    position += 1
                    if reason is not None:
                        cleaned, unencodable = clean_record(record)
                        yield Reject(
                            path, position, reason, _dump(cleaned), None, tuple(unencodable)
                        )
                    else:
                        yield document_from_record(record, fields, path, position, None, notes)
    except Exception as exc:
        where = f"after row {position}" if position >= first_row else f"before row {first_row}"
        yield Reject(path, None, f"file unreadable {where}: {type(exc).__name__}: {exc}")


def read_file(
    path: str,
    fields: Fields = Fields(),
    start: int = 0,
    stop: int | None = None,
    first_position: int = 1,
) -> Iterator[Document | Reject]:
    """Records of a file, or of a part of it: byte range (JSONL) or row groups (Parquet)."""
    kind = record_format(path)
    if kind == "parquet":
        # Row-group ranges always end explicitly; no stop means the whole file.
        return read_parquet(
            path, fields, range(start, stop) if stop is not None else None, first_position
        )
    if kind == "jsonl":
        return read_jsonl(path, fields, start, stop, first_position)
    return iter([Reject(path, None, "unknown file type (expected .jsonl[.gz|.zst] or .parquet)")])


def read_inputs(files: Iterable[str], fields: Fields = Fields()) -> Iterator[Document | Reject]:
    """Every record of every file, in order."""
    for path in files:
        yield from read_file(path, fields)
