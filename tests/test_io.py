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


def test_a_byte_order_mark_before_a_blank_line_is_no_reject(tmp_path):
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf\n{"id": "1", "text": "after the blank"}\n')
    documents, rejects = collect(str(tmp_path / "bom.jsonl"))
    assert rejects == [] and [(d.id, d.position) for d in documents] == [("1", 2)]


def _invalid_strings(values: list[bytes]) -> pa.Array:
    """A Parquet string column holding bytes that are not UTF-8 (as real files do)."""
    return pa.array(values, pa.binary()).view(pa.string())


def test_invalid_utf8_in_parquet_rejects_only_its_rows(tmp_path):
    count = 3000
    texts = [f"document {i}".encode() for i in range(count)]
    texts[1500] = b"bad \xff byte"
    urls = [f"https://example.org/{i}".encode() for i in range(count)]
    urls[2500] = b"https://example.org/\xe9t\xe9"
    tags = pa.ListArray.from_arrays(
        list(range(count + 1)),
        _invalid_strings([b"ok"] * 99 + [b"\xc3("] + [b"ok"] * (count - 100)),
    )
    table = pa.table(
        {"id": [str(i) for i in range(count)], "text": _invalid_strings(texts),
         "url": _invalid_strings(urls), "tags": tags}
    )  # fmt: skip
    pq.write_table(table, tmp_path / "p.parquet")
    documents, rejects = collect(str(tmp_path / "p.parquet"))
    assert len(documents) == count - 3
    assert [(r.position, r.reason) for r in rejects] == [
        (100, "column 'tags' is not valid UTF-8 (byte 0xc3 at 0)"),
        (1501, "column 'text' is not valid UTF-8 (byte 0xff at 4)"),
        (2501, "column 'url' is not valid UTF-8 (byte 0xe9 at 20)"),
    ]
    assert json.loads(rejects[1].raw) == {
        "id": "1500", "text": "bad \\xff byte", "url": "https://example.org/1500", "tags": ["ok"]
    }  # fmt: skip
    assert [d.position for d in documents[1497:1500]] == [1499, 1500, 1502]


def test_parquet_values_json_has_no_type_for_are_converted_and_noted(tmp_path):
    import datetime
    import decimal

    table = pa.table(
        {
            "text": ["a", "b"],
            "blob": pa.array([b"\x00\xffbytes", None], pa.binary()),
            "when": pa.array([1_700_000_000_123_456_789, 0], pa.timestamp("ns", tz="UTC")),
            "day": pa.array([datetime.date(2024, 5, 1), None]),
            "price": pa.array([decimal.Decimal("1.50"), decimal.Decimal("-0.01")]),
            "pairs": pa.array([[("k", 1)], []], pa.map_(pa.string(), pa.int64())),
            "nested": pa.array([{"b": b"x"}, {"b": None}], pa.struct([("b", pa.binary())])),
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    (first, second), rejects = collect(str(tmp_path / "t.parquet"))
    assert rejects == []
    assert first.record == {
        "text": "a",
        "blob": "AP9ieXRlcw==",
        "when": "2023-11-14 22:13:20.123456789Z",
        "day": "2024-05-01",
        "price": "1.50",
        "pairs": [["k", 1]],
        "nested": {"b": "eA=="},
    }
    assert list(first.unencodable) == [
        {"path": "/blob", "arrow_type": "binary"},
        {"path": "/when", "arrow_type": "timestamp[ns, tz=UTC]"},
        {"path": "/day", "arrow_type": "date32[day]"},
        {"path": "/price", "arrow_type": "decimal128(3, 2)"},
        {"path": "/pairs", "arrow_type": "map<string, int64 ('pairs')>"},
        {"path": "/nested", "arrow_type": "struct<b: binary>"},
    ]
    assert [n["path"] for n in second.unencodable] == ["/when", "/price", "/pairs", "/nested"]


def test_a_parquet_file_with_two_columns_of_one_name_is_one_clear_reject(tmp_path):
    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["text", "text"])
    pq.write_table(table, tmp_path / "twice.parquet")
    documents, (reject,) = collect(str(tmp_path / "twice.parquet"))
    assert documents == [] and "several columns named 'text'" in reject.reason


def test_folders_leave_out_what_prox_runs_write_beside_their_records(tmp_path):
    run = tmp_path / "out"
    (run / "_prox" / "done").mkdir(parents=True)
    for name in ("_prox/run.json", "_prox/done/unit-00000.json", "stats.json"):
        (run / name).write_text("{}")
    write_jsonl(run / "rejects-00000.jsonl", [{"reason": "x"}])
    write_jsonl(run / "part-00000-00000.jsonl", RECORDS)
    write_jsonl(tmp_path / "single.jsonl", RECORDS)
    write_jsonl(tmp_path / "single.rejects.jsonl", [{"reason": "x"}])
    (tmp_path / "single.stats.json").write_text("{}")
    (tmp_path / "single.config.yaml").write_text("inputs: []\n")
    write_jsonl(tmp_path / "own.rejects.jsonl", RECORDS)  # no own.config.yaml: a user's file
    found = [Path(p).relative_to(tmp_path).as_posix() for p in list_files(str(tmp_path))]
    assert found == ["out/part-00000-00000.jsonl", "own.rejects.jsonl", "single.jsonl"]
    assert list_files(str(run / "stats.json")) == [str(run / "stats.json")]  # named: read
    assert [Path(p).name for p in list_files(str(run / "*.json*"))] == ["part-00000-00000.jsonl"]
    kept = list_files(str(tmp_path), exclude=[run, tmp_path / "single.jsonl"])
    assert [Path(p).name for p in kept] == ["own.rejects.jsonl"]


def test_parquet_columns_follow_the_file_not_the_order_types_were_claimed(tmp_path):
    from proxkit.io.columns import FieldKinds

    rows = [{"text": "x", "b": 1, "a": None}, {"a": "late", "text": "y", "_prox_overflow": [1]}]
    outputs = []
    for order in (["a", "b", "text"], ["text", "b", "a"]):
        folder = tmp_path / "-".join(order)
        kinds = FieldKinds(folder / "columns")
        for name in order:  # other units or ranks claimed these types first, in this order
            kinds.decide(name, {"a": "s", "b": 2, "text": "t"}[name])
        with RecordWriter(folder / "out", "parquet", kinds=FieldKinds(folder / "columns")) as w:
            for row in rows:
                w.write(row)
        (path,) = w.paths
        outputs.append(path.read_bytes())
        assert pq.read_table(path).column_names == ["text", "b", "a", "_prox_overflow"]
        documents, _ = collect(str(path))
        assert [d.record for d in documents] == [
            {"text": "x", "b": 1, "a": None},
            {"text": "y", "b": None, "a": "late", "_prox_overflow": [1]},
        ]
    assert outputs[0] == outputs[1]


def test_a_damaged_column_type_file_is_named_and_rebuilt(tmp_path):
    from proxkit.io.columns import FieldKinds

    kinds = FieldKinds(tmp_path)
    kinds.decide("extra", 5)
    kinds.path("extra").write_text("")  # a full disk once left such files
    reloaded = FieldKinds(tmp_path)
    (damaged,) = reloaded.damaged
    assert damaged.path == kinds.path("extra") and "is damaged (empty)" in str(damaged)
    assert "extra" not in reloaded.kinds
    reloaded.restore({"extra": "int64"})
    assert FieldKinds(tmp_path).kinds["extra"] == "int64" and not FieldKinds(tmp_path).damaged


def test_state_files_appear_whole_and_failed_writes_leave_nothing(tmp_path):
    from proxkit.io.atomic import create_once, write_atomically
    from proxkit.io.rejects import RejectLog

    target = tmp_path / "state.json"
    write_atomically(target, b"old")
    with pytest.raises(TypeError):
        write_atomically(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert create_once(tmp_path / "once", b"first") and not create_once(tmp_path / "once", b"2")
    assert (tmp_path / "once").read_bytes() == b"first"
    with pytest.raises(RuntimeError), RejectLog(tmp_path / "rejects.jsonl") as log:
        log.add(Reject("in.jsonl", 1, "invalid JSON", "{"))
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError), RecordWriter(tmp_path / "o", "jsonl", max_bytes=10) as w:
        for i in range(5):
            w.write({"id": str(i), "text": "some text"})  # several shards completed
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["o", "once", "state.json"]
