"""Corpus I/O: every format in and out, folders and globs, shards, and bad files reported."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from proxkit.io import Document, Fields, RecordWriter, Reject, content_id, list_files, read_inputs

from conftest import write_jsonl

RECORDS = [{"id": f"r{i}", "text": f"document {i}\nsecond line", "lang": "en"} for i in range(5)]


def collect(paths, fields=Fields()):
    items = list(read_inputs(list_files(paths), fields))
    return [i for i in items if isinstance(i, Document)], [
        i for i in items if isinstance(i, Reject)
    ]


def test_jsonl_gzip_zstd_and_parquet_read_alike(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", RECORDS)
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in RECORDS)
    (tmp_path / "c.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in RECORDS).encode())
    )
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "d.parquet")
    for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst", "d.parquet"):
        documents, rejects = collect(str(tmp_path / name))
        assert rejects == []
        assert [(d.id, d.text, d.record["lang"], d.position) for d in documents] == [
            (r["id"], r["text"], "en", i + 1) for i, r in enumerate(RECORDS)
        ]


def test_folders_and_globs_expand_to_sorted_record_files(tmp_path):
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "2.jsonl", RECORDS[:1])
    write_jsonl(tmp_path / "1.jsonl", RECORDS[1:2])
    (tmp_path / "notes.txt").write_text("not a record file")
    assert [Path(p).name for p in list_files(str(tmp_path))] == ["1.jsonl", "2.jsonl"]
    assert [Path(p).name for p in list_files(str(tmp_path / "*.jsonl"))] == ["1.jsonl"]
    with pytest.raises(FileNotFoundError, match="no input files match"):
        list_files(str(tmp_path / "*.parquet"))


def test_custom_fields_and_content_hash_ids(tmp_path):
    write_jsonl(
        tmp_path / "a.jsonl", [{"content": "hello world", "doc_id": 7}, {"content": "no id"}]
    )
    documents, _ = collect(str(tmp_path / "a.jsonl"), Fields(text="content", id="doc_id"))
    assert [d.id for d in documents] == ["7", content_id("no id")]
    assert content_id("no id") == content_id("no id") != content_id("no id ")


def test_corrupt_gzip_keeps_what_was_read_and_reports_the_file(tmp_path):
    payload = gzip.compress("".join(json.dumps(r) + "\n" for r in RECORDS * 200).encode())
    (tmp_path / "broken.jsonl.gz").write_bytes(payload[: len(payload) // 2])
    documents, rejects = collect(str(tmp_path / "broken.jsonl.gz"))
    assert 0 < len(documents) < 1000
    (reject,) = rejects
    assert reject.position is None and reject.reason.startswith(
        f"file unreadable after line {len(documents)}"
    )


def test_parquet_without_the_text_column_is_reported_with_its_columns(tmp_path):
    pq.write_table(pa.table({"body": ["x"], "id": ["1"]}), tmp_path / "p.parquet")
    documents, (reject,) = collect(str(tmp_path / "p.parquet"))
    assert documents == []
    assert (
        reject.reason
        == "Parquet file has no 'text' column (columns: body, id); choose the text column with --text-field"
    )


def test_binary_garbage_is_rejected_line_by_line(tmp_path):
    (tmp_path / "g.jsonl").write_bytes(b"\x00\xff\xfe garbage\n\x89PNG\r\n")
    documents, rejects = collect(str(tmp_path / "g.jsonl"))
    assert documents == [] and [r.position for r in rejects] == [1, 2]
    assert all(r.reason.startswith("not valid UTF-8 (byte 0x") for r in rejects)
    # the bytes stay, as \xNN escapes in valid UTF-8 text
    assert [r.raw for r in rejects] == ["\x00\\xff\\xfe garbage", "\\x89PNG\r"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_reported(tmp_path):
    path = write_jsonl(tmp_path / "locked.jsonl", RECORDS)
    path.chmod(0)
    _, (reject,) = collect(str(path))
    assert "PermissionError" in reject.reason


def test_unreadable_file_is_reported_even_as_root(tmp_path):
    # A directory where a file is expected raises on open, as an unreadable file does.
    (tmp_path / "data.jsonl").mkdir()
    from proxkit.io.readers import read_file

    (reject,) = list(read_file(str(tmp_path / "data.jsonl"), Fields()))
    assert reject.position is None and "IsADirectoryError" in reject.reason


@pytest.mark.parametrize("output_format", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet"])
def test_sharded_writer_round_trips_and_caps_shard_size(tmp_path, output_format):
    records = [{"id": str(i), "text": "x" * 100, "metadata": {"n": i}} for i in range(50)]
    with RecordWriter(tmp_path / "out", output_format, max_bytes=1000) as writer:
        for record in records:
            writer.write(record)
    assert len(writer.paths) > 3
    assert [p.name for p in sorted((tmp_path / "out").iterdir())] == [p.name for p in writer.paths]
    documents, rejects = collect(str(tmp_path / "out"))
    assert rejects == [] and [d.id for d in documents] == [r["id"] for r in records]
    metadata = [d.record["metadata"] for d in documents]
    assert [json.loads(m) if isinstance(m, str) else m for m in metadata] == [
        r["metadata"] for r in records
    ]


def test_a_failed_write_leaves_no_complete_looking_file(tmp_path):
    with pytest.raises(RuntimeError), RecordWriter(tmp_path / "out.jsonl.gz") as writer:
        writer.write({"id": "1", "text": "x"})
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []  # nor a complete-looking file, nor a partial one


def test_zstd_files_of_several_frames_read_whole_and_a_truncated_one_says_so(tmp_path):
    from proxkit.io.readers import read_file

    lines = [json.dumps({"id": str(i), "text": f"document {i}"}) for i in range(3000)]
    data = "\n".join(lines).encode() + b"\n"
    half = data.index(b"\n", len(data) // 2) + 1
    frames = zstandard.ZstdCompressor().compress(data[:half])
    frames += zstandard.ZstdCompressor().compress(data[half:])
    (tmp_path / "whole.jsonl.zst").write_bytes(frames)
    (tmp_path / "cut.jsonl.zst").write_bytes(frames[:-20])
    whole = list(read_file(str(tmp_path / "whole.jsonl.zst")))
    assert [d.id for d in whole] == [str(i) for i in range(3000)]
    cut = list(read_file(str(tmp_path / "cut.jsonl.zst")))
    assert isinstance(cut[-1], Reject) and "truncated" in cut[-1].reason
    assert 0 < len(cut) - 1 < 3000
