"""Write records as JSONL (plain, .gz, .zst) or Parquet: one file, or a folder of size-capped shards.

Every file is written under a temporary name, flushed to disk and renamed into place when it is
complete (`atomic.py`), so a reader (or a resumed run) never sees a half-written shard under its
final name; a write that fails or is interrupted removes its temporary file, even when the
failure is a full disk (one left by `kill -9` is removed when the run resumes).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO

from proxkit.io.atomic import fsync_file, publish
from proxkit.io.columns import (
    KINDS_KEY,
    OVERFLOW,
    FieldKinds,
    arrow_type,
    encode_rows,
    schema_fields,
)
from proxkit.io.encodable import json_line
from proxkit.io.readers import record_format

OUTPUT_FORMATS = ("jsonl", "jsonl.gz", "jsonl.zst", "parquet")
PARTIAL_SUFFIX = ".partial"


def _compressor(raw: BinaryIO, name: str) -> BinaryIO:
    """Wrap a raw file in the compressor that the final file name asks for."""
    if name.endswith(".gz"):
        import gzip

        return gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0)  # type: ignore[return-value]
    if name.endswith((".zst", ".zstd")):
        import zstandard

        return zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)  # type: ignore[return-value]
    return raw


class _JsonlFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(path.name + PARTIAL_SUFFIX)
        self.raw: BinaryIO = self.partial.open("wb")
        self.handle = _compressor(self.raw, path.name)
        self.bytes_written = 0

    def write(self, record: dict[str, Any]) -> None:
        data = json_line(record)
        self.handle.write(data)
        self.bytes_written += len(data)

    def close(self) -> None:
        if self.handle is not self.raw:
            self.handle.close()
        self.raw.flush()
        os.fsync(self.raw.fileno())
        self.raw.close()
        publish(self.partial, self.path)

    def abort(self) -> None:
        """Close without renaming and remove the partial file: nothing looks complete."""
        try:
            self.raw.close()  # may fail to flush (a full disk): the file goes all the same
        finally:
            self.partial.unlink(missing_ok=True)


class _ParquetFile:
    """Buffers rows and writes row groups of at most ROWS_PER_GROUP rows or GROUP_BYTES of
    text, each field in its run-wide column type; the columns are those of the first row
    group (`columns.py`)."""

    ROWS_PER_GROUP = 2048
    GROUP_BYTES = 64 * 1024 * 1024  # a few 50 MB documents must not make one huge row group

    def __init__(self, path: Path, kinds: FieldKinds) -> None:
        self.partial = path.with_name(path.name + PARTIAL_SUFFIX)
        self.path = path
        self.kinds = kinds
        self.schema_kinds: dict[str, str] | None = None  # fixed at the first row group
        self.rows: list[dict[str, Any]] = []
        self.buffered = 0
        self.writer = None
        self.bytes_written = 0

    def write(self, record: dict[str, Any]) -> None:
        for name, value in record.items():
            self.kinds.decide(name, value)
        self.rows.append(record)
        size = sum(len(v) if isinstance(v, str) else 8 for v in record.values())
        self.buffered += size
        self.bytes_written += size
        if len(self.rows) >= self.ROWS_PER_GROUP or self.buffered >= self.GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.rows:
            return
        if self.schema_kinds is None:
            self.schema_kinds = schema_fields(self.rows, self.kinds.kinds)
            fields = [pa.field(n, arrow_type(k)) for n, k in self.schema_kinds.items()]
            schema = pa.schema([*fields, pa.field(OVERFLOW, pa.string())]).with_metadata(
                {KINDS_KEY: json.dumps(self.schema_kinds).encode()}
            )
            self.writer = pq.ParquetWriter(str(self.partial), schema, compression="zstd")
        columns = encode_rows(self.rows, self.schema_kinds)
        self.writer.write_table(pa.Table.from_pydict(columns, schema=self.writer.schema))  # type: ignore[union-attr]
        self.rows, self.buffered = [], 0

    def abort(self) -> None:
        try:
            if self.writer is not None:
                self.writer.close()  # may fail to flush (a full disk): the file goes all the same
        finally:
            self.partial.unlink(missing_ok=True)

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._flush()
        if self.writer is None:  # no rows at all: still leave a valid, empty file
            pq.write_table(pa.table({}), str(self.partial))
        else:
            self.writer.close()
            self.writer = None
        fsync_file(self.partial)
        publish(self.partial, self.path)


def fresh_folder(path: str | Path, overwrite: bool) -> Path:
    """An empty folder at `path`; an existing non-empty one is replaced only with `overwrite`."""
    folder = Path(path)
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{folder} exists; use --overwrite to replace it")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def output_suffix(output_format: str) -> str:
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(
            f"unknown output format {output_format!r}; expected one of {OUTPUT_FORMATS}"
        )
    return "." + output_format


def format_of_file(path: str) -> str:
    """The output format a file name asks for, e.g. 'out.jsonl.gz' -> 'jsonl.gz'."""
    kind = record_format(path)
    if kind is None:
        raise ValueError(
            f"{path}: not a record file name (.jsonl, .jsonl.gz, .jsonl.zst, .parquet)"
        )
    if kind == "parquet":
        return "parquet"
    for compressed in ("jsonl.gz", "jsonl.zst"):
        if path.endswith(compressed.removeprefix("jsonl")):
            return compressed
    return "jsonl"


def open_file(path: Path, kinds: FieldKinds | None = None) -> _JsonlFile | _ParquetFile:
    path.parent.mkdir(parents=True, exist_ok=True)
    if format_of_file(str(path)) == "parquet":
        return _ParquetFile(path, kinds if kinds is not None else FieldKinds())
    return _JsonlFile(path)


class RecordWriter:
    """Writes records to one file (a target named like `out.jsonl.gz`) or to shards
    `{prefix}-00000.{format}`, `{prefix}-00001...` in a folder, each up to `max_bytes` of
    uncompressed records (0: no limit). As a context manager, files are completed only when
    the block ends without an exception. Parquet files share `kinds`, the run's column types
    (a fresh set per writer when not given)."""

    def __init__(
        self,
        target: Path,
        output_format: str = "jsonl.gz",
        max_bytes: int = 0,
        prefix: str = "part",
        kinds: FieldKinds | None = None,
    ) -> None:
        self.target = target
        self.single_file = record_format(str(target)) is not None
        self.suffix = "" if self.single_file else output_suffix(output_format)
        self.max_bytes = 0 if self.single_file else max_bytes
        self.prefix = prefix
        self.current: _JsonlFile | _ParquetFile | None = None
        self.paths: list[Path] = []
        self.kinds = kinds if kinds is not None else FieldKinds()

    def _next_path(self) -> Path:
        if self.single_file:
            return self.target
        return self.target / f"{self.prefix}-{len(self.paths):05d}{self.suffix}"

    def write(self, record: dict[str, Any]) -> None:
        if self.current is None:
            path = self._next_path()
            self.current = open_file(path, self.kinds)
            self.paths.append(path)
        self.current.write(record)
        if self.max_bytes and self.current.bytes_written >= self.max_bytes:
            self._complete()

    def _complete(self) -> None:
        current, self.current = self.current, None
        try:
            current.close()  # type: ignore[union-attr]
        except BaseException:
            current.abort()  # type: ignore[union-attr]
            raise

    def close(self) -> None:
        if self.current is None and self.single_file and not self.paths:
            self.current = open_file(self.target, self.kinds)  # an empty input still has a file
            self.paths.append(self.target)
        if self.current is not None:
            self._complete()

    def abort(self) -> None:
        """Remove what this writer wrote, the shards it completed too: a write that did not
        end leaves nothing that looks complete."""
        try:
            if self.current is not None:
                self.current.abort()
                self.current = None
        finally:
            for path in self.paths:
                path.unlink(missing_ok=True)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.close()
        except BaseException:
            self.abort()
            raise
