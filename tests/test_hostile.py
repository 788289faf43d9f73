"""Hostile input: records like those in real crawls never crash a run and are never lost.

For every output format and 1 and 2 workers, a real `prox refine` over
- 10,000 generated hostile records (seeded: control characters, lone surrogates, every kind of
  line end, right-to-left and combining text, NaN, huge integers, ids of every type, fields
  whose type changes between records, deep nesting, invalid JSON and UTF-8), and
- a fixed corpus of nasty files (a 50 MB single-line document, a 100,000-line document,
  truncated gzip and zstd files, a Parquet file with a null text, a record nested 100,000 deep)
must exit 0, `prox verify` must account for every record, every file it wrote must be valid
UTF-8 and strict JSON (or valid Parquet) that pyarrow reads, and every passthrough field must
come back as it was read. Property tests check the encoding policy and the Parquet columns.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxkit.io.columns import OVERFLOW, FieldKinds, arrow_type, decode_row, encode_rows
from proxkit.io.encodable import SURROGATES, clean_record, json_line
from proxkit.io.readers import Document, Fields, Reject, read_file
from proxkit.pipeline.records import original_text

pytestmark = pytest.mark.slow
FORMATS = ("jsonl", "jsonl.gz", "jsonl.zst", "parquet")
PIECES = [
    "word", "The river valley", "[000]", "keep_doc()", 'quote " and \\ backslash', "\x00",
    "\x01\x1b[31m", "\x7f", "\ud800", "\udfff", "a\udc80b", "😀", "\U0010ffff", "مرحبا بالعالم",
    "שלום", "e\u0301\u0308", "\u200d\u200b", "\ufeff", "\r", "\r\n", "\u2028", "\u2029", "\x85",
    "\t", "x" * 300, "Menu | Home | About", "Copyright 2024. All rights reserved.",
]  # fmt: skip
LINE_ENDS = ["\n", "\r\n", "\r", "\u2028", "\n\n"]


def hostile_string(rng: random.Random, pieces: int = 4) -> str:
    return " ".join(rng.choice(PIECES) for _ in range(rng.randint(0, pieces)))


def hostile_text(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.05:
        return ""
    if kind < 0.1:
        return rng.choice([" ", "\n\n", "\t \r\n", "\u2028"])
    words = "The committee met on Tuesday to review the budget for the coming year and agreed"
    lines = [
        words if rng.random() < 0.5 else hostile_string(rng, 8) for _ in range(rng.randint(1, 12))
    ]
    return "".join(line + rng.choice(LINE_ENDS) for line in lines)


def hostile_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(12 if depth < 5 else 9)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 42, 2**63 - 1, -(2**63), 2**70, -(2**100)])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e308, float("nan"), float("inf"), -float("inf")])
    if kind in (4, 5, 6, 7, 8):
        return hostile_string(rng)
    if kind in (9, 10):
        return [hostile_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {hostile_string(rng, 2): hostile_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def hostile_lines(count: int, seed: int) -> list[bytes]:
    """`count` JSONL lines, most of them usable records, all of them hostile."""
    rng = random.Random(seed)
    lines = []
    for i in range(count):
        roll = rng.random()
        if roll < 0.02:
            lines.append(b'{"text": "cut in the mid')
            continue
        if roll < 0.03:
            lines.append(json.dumps(rng.choice([[1, 2], "a string", 3, None])).encode())
            continue
        if roll < 0.04:
            lines.append(b'{"text": "latin-1 \xe9t\xe9", "id": "bad-utf8"}')
            continue
        record: dict = {}
        id_roll = rng.random()
        if id_roll < 0.5:
            record["id"] = f"doc-{i % 7000}"  # duplicates too
        elif id_roll < 0.8:
            record["id"] = hostile_value(rng)
        text_roll = rng.random()
        if text_roll < 0.97:
            record["text"] = hostile_text(rng)
        elif text_roll < 0.985:
            record["text"] = hostile_value(rng)  # not a string: rejected
        for name in rng.sample(["extra", "meta", "url", "score", "tags", "metadata"], 3):
            if rng.random() < 0.6:
                record[name] = hostile_value(rng)
        if rng.random() < 0.05:
            record[hostile_string(rng, 1)] = hostile_value(rng)  # a hostile key
        lines.append(json.dumps(record).encode())  # surrogates as \\ud800 escapes, NaN as NaN
    return lines


def write_lines(path: Path, lines: list[bytes]) -> Path:
    data = b"\n".join(lines) + b"\n"
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def refine(inputs: Path, output: Path, fmt: str, workers: int) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "proxkit.cli", "refine", str(inputs), "-o", str(output),
        "--doc-programmer", "rules", "--chunk-programmer", "rules", "--output-format", fmt,
        "--workers", str(workers), "--batch-size", "64", "-q",
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def strict_json(line: str) -> dict:
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


def check_jsonl_bytes(data: bytes) -> list[dict]:
    """Valid UTF-8, strict JSON on every line, and pyarrow reads it."""
    text = data.decode("utf-8")
    assert not SURROGATES.search(text)
    records = [strict_json(line) for line in text.split("\n") if line]  # not splitlines: U+2028
    schema = pa.schema([("reason" if records and "reason" in records[0] else "text", pa.string())])
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    blocks = pj.ReadOptions(block_size=max(len(data), 1 << 20))  # a line may be 100 MB
    table = pj.read_json(io.BytesIO(data), read_options=blocks, parse_options=options)
    assert table.num_rows == len(records)
    return records


def decompressed(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return data


def without_nulls(record: dict) -> dict:
    return {k: v for k, v in record.items() if v is not None}


def same(a, b) -> bool:
    """Equal, with NaN equal to itself (it never appears: it is cleaned to null)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def check_run(inputs: Path, output: Path, fmt: str, result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    verified = subprocess.run(
        [sys.executable, "-m", "proxkit.cli", "verify", str(output)], capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    for shard in output.glob("part-*"):
        if fmt == "parquet":
            pq.read_table(shard)  # valid Parquet
        else:
            check_jsonl_bytes(decompressed(shard))
    rejects = [
        r for p in sorted(output.glob("rejects-*.jsonl")) for r in check_jsonl_bytes(p.read_bytes())
    ]
    stats = json.loads((output / "stats.json").read_text())
    assert stats["rejected"] == len(rejects)

    fields = Fields()
    files = sorted(p for p in inputs.iterdir())
    read = [i for f in files for i in read_file(str(f), fields)]
    documents = [i for i in read if isinstance(i, Document)]
    outputs = [
        i.record
        for shard in sorted(output.glob("part-*"))
        for i in read_file(str(shard), fields)
        if isinstance(i, Document)
    ]
    assert len(outputs) == len(documents) == stats["documents"]
    assert sum(isinstance(i, Reject) for i in read) == len(rejects)
    for document, written in zip(documents, outputs):
        expected = {k: v for k, v in document.record.items() if k not in ("text", "metadata")}
        expected["id"] = (
            document.record.get("id") if document.record.get("id") is not None else document.id
        )
        got = {k: v for k, v in written.items() if k not in ("text", "raw_content", "metadata")}
        if fmt == "parquet":  # a missing field and a null read back alike
            expected, got = without_nulls(expected), without_nulls(got)
        assert got.keys() == expected.keys() and all(same(got[k], expected[k]) for k in got)
        assert written["raw_content"] == original_text(document)
        source = document.record.get("metadata")
        if isinstance(source, dict):
            assert all(same(written["metadata"].get(k), v) for k, v in source.items())
        elif source is not None:
            assert written["metadata"]["source_metadata"] == source
        assert list(document.unencodable) == written["metadata"]["prox"].get("unencodable", [])


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """10,000 generated hostile records in two files, one gzipped."""
    folder = tmp_path_factory.mktemp("hostile")
    write_lines(folder / "a.jsonl", hostile_lines(5000, seed=1))
    write_lines(folder / "b.jsonl.gz", hostile_lines(5000, seed=2))
    return folder


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("fmt", FORMATS)
def test_ten_thousand_hostile_records(generated, tmp_path, fmt, workers):
    output = tmp_path / "out"
    check_run(generated, output, fmt, refine(generated, output, fmt, workers))
    stats = json.loads((output / "stats.json").read_text())
    assert stats["documents"] + stats["rejected"] == 10_000
    assert stats["records_with_unencodable_values"] > 100


@pytest.fixture(scope="module")
def nasty(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("nasty")
    lines = [
        # 50 MB on one line, like a minified script or an inlined image
        json.dumps({"id": "huge", "text": ("QUJD" * 250 + " ") * 50_000}).encode(),
        json.dumps(
            {"id": "long", "text": "\n".join(f"line {i}." for i in range(100_000))}
        ).encode(),
        json.dumps(
            {"id": "nul", "text": "a\x00b\x00\x01 The committee met.\r\nAnd agreed."}
        ).encode(),
        json.dumps({"id": "empty", "text": ""}).encode(),
        json.dumps({"id": "blank", "text": " \n\t\r\n "}).encode(),
        json.dumps(
            {"id": "deep", "text": "nested", "extra": json.loads("[" * 200 + "]" * 200)}
        ).encode(),
        b'{"id": "deeper", "text": "x", "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        json.dumps({"id": 42, "text": "a numeric id", "extra": 1}).encode(),
        json.dumps({"id": 42, "text": "the same id twice", "extra": "string now"}).encode(),
        json.dumps({"text": "no id at all", "extra": {"now": ["an", "object"]}}).encode(),
        b'\xef\xbb\xbf{"id": "bom", "text": "a byte order mark opens the file"}',
    ]
    write_lines(folder / "a.jsonl", [lines[-1], *lines[:-1]])
    complete = gzip.compress(b"\n".join(lines[2:6]) + b"\n")
    (folder / "b.jsonl.gz").write_bytes(complete[: len(complete) // 2])  # truncated gzip
    compressed = zstandard.ZstdCompressor().compress(b"\n".join(lines[2:6]) + b"\n")
    (folder / "c.jsonl.zst").write_bytes(compressed[: len(compressed) // 2])  # truncated zstd
    pq.write_table(
        pa.table({"id": ["p1", "p2"], "text": ["a Parquet row", None]}), folder / "d.parquet"
    )
    return folder


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_corpus_of_nasty_files(nasty, tmp_path, fmt, workers):
    output = tmp_path / "out"
    result = refine(nasty, output, fmt, workers)
    check_run(nasty, output, fmt, result)
    rejects = [
        json.loads(line)
        for p in output.glob("rejects-*")
        for line in p.read_text().split("\n")
        if line
    ]
    reasons = " | ".join(r["reason"] for r in rejects)
    assert "JSON nested too deeply" in reasons and "'text' is null" in reasons
    assert reasons.count("file unreadable") == 2  # the truncated gzip and zstd files


# -- the policies themselves, as properties ---------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)
records = st.dictionaries(st.text(max_size=6), json_values, max_size=6)


@given(records)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_cleaning_keeps_every_original_and_writes_strict_utf8_json(record):
    cleaned, found = clean_record(record)
    line = json_line(cleaned)
    strict_json(line.decode("utf-8"))  # valid UTF-8, no NaN
    assert clean_record(cleaned) == (cleaned, [])  # nothing left to clean
    for entry in found:  # every replaced value is kept, exactly
        if "original" in entry:
            value = json.loads(entry["original"])
            assert (isinstance(value, float) and not math.isfinite(value)) or SURROGATES.search(
                value
            )


@given(st.lists(records, min_size=1, max_size=8))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_records_round_trip_through_parquet_columns(rows):
    rows = [clean_record(r)[0] for r in rows]
    kinds = FieldKinds()
    for row in rows:
        for name, value in row.items():
            kinds.decide(name, value)
    columns = encode_rows(rows, dict(kinds.kinds))
    fields = [pa.field(name, arrow_type(kind)) for name, kind in kinds.kinds.items()]
    schema = pa.schema([*fields, pa.field(OVERFLOW, pa.string())])
    table = pa.Table.from_pydict(columns, schema=schema)
    back = [decode_row(row, dict(kinds.kinds)) for row in table.to_pylist()]
    for original, decoded in zip(rows, back):
        assert {k: v for k, v in decoded.items() if v is not None} == {
            k: v for k, v in original.items() if v is not None
        }


# -- fields of the ProX layout already in the input, and re-refining prox output ----------------

RULES = ("--doc-programmer", "rules", "--chunk-programmer", "rules")
ONE = ("--workers", "1", "-q")  # where the number of workers does not matter: no pool to start


def prox(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "proxkit.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def records_of(output: Path, fields: Fields = Fields()) -> list[dict]:
    """What proxkit reads back from an output (a missing field and a null alike)."""
    shards = [output] if output.is_file() else sorted(output.glob("part-*"))
    return [
        without_nulls(i.record)
        for shard in shards
        for i in read_file(str(shard), fields)
        if isinstance(i, Document)
    ]


def audit(output: Path) -> None:
    from proxkit.pipeline.verify import verify

    report = verify(output)
    assert report.ok, report.problems


@pytest.fixture(scope="module")
def colliding(tmp_path_factory) -> Path:
    """Example pages whose records already hold fields the ProX layout writes."""
    from conftest import example_records

    folder = tmp_path_factory.mktemp("colliding")
    records = []
    for i, page in enumerate(example_records()[:24]):
        record = {"id": page["id"], "text": page["text"]}
        if i % 4 == 0:
            record["raw_content"] = f"<html>the page {i} as it was crawled</html>"
        elif i % 4 == 1:
            record["metadata"] = {"prox": "a note of the corpus's own", "lang": "en"}
        elif i % 4 == 2:
            record["_prox_overflow"] = {"theirs": i}
        records.append(record)
    write_lines(folder / "in.jsonl", [json.dumps(r).encode() for r in records])
    return folder


@pytest.mark.parametrize(("fmt", "workers"), [("jsonl", 1), ("parquet", 2)])
def test_input_fields_the_layout_needs_are_moved_never_lost(colliding, tmp_path, fmt, workers):
    out = tmp_path / "out"
    result = prox("refine", colliding, "-o", out, *RULES, "--output-format", fmt,
                  "--workers", workers, "-q")  # fmt: skip
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    if fmt == "parquet":
        for shard in out.glob("part-*"):
            pq.read_table(shard)  # one column per name
    inputs = [json.loads(line) for line in (colliding / "in.jsonl").read_text().splitlines()]
    written = records_of(out)
    assert len(written) == len(inputs) == 24
    for i, (source, record) in enumerate(zip(inputs, written)):
        prox_notes = record["metadata"]["prox"]
        assert record["raw_content"] == source["text"]  # programs ran on the text field
        displaced = prox_notes.get("displaced", [])
        if i % 4 == 0:
            assert displaced == [{"field": "raw_content", "value": source["raw_content"]}]
        elif i % 4 == 1:
            assert displaced == [{"field": "metadata.prox", "value": "a note of the corpus's own"}]
            assert record["metadata"]["lang"] == "en" and prox_notes["mode"] == "strict"
        else:
            assert displaced == []
        if i % 4 == 2:
            assert record["_prox_overflow"] == {"theirs": i}
    assert any(r["text"] not in ("", r["raw_content"]) for r in written)  # really refined
    assert json.loads((out / "stats.json").read_text())["records_with_displaced_fields"] == 12
    audit(out)

    # Re-refining the output (the README's `prox refine OUT -o OUT2`, `prox execute OUT -o NEW`)
    # starts again from raw_content and keeps what the first run kept aside.
    again, executed = tmp_path / "again", tmp_path / "executed"
    assert prox("refine", out, "-o", again, *RULES, *ONE, "--output-format", fmt).returncode == 0
    (tmp_path / "format.yaml").write_text(f"output_format: {fmt}\n")  # execute has no flag for it
    assert (
        prox("execute", out, "-o", executed, "--config", tmp_path / "format.yaml").returncode == 0
    )
    for other in (again, executed):
        assert records_of(other) == written
        stats = json.loads((other / "stats.json").read_text())
        assert (stats["rejected"], stats["records_with_displaced_fields"]) == (0, 0)  # carried
        audit(other)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_text_field_raw_content_keeps_the_original_and_the_refinement(colliding, tmp_path, fmt):
    pages = [json.loads(line) for line in (colliding / "in.jsonl").read_text().splitlines()][:8]
    layout = [{"raw_content": p["text"], "doc_id": p["id"]} for p in pages]  # RedPajama-V2's
    layout[3]["text"] = "a text field of the corpus's own"
    write_lines(tmp_path / "rpv2.jsonl", [json.dumps(r).encode() for r in layout])
    out = tmp_path / "out"
    result = prox("refine", tmp_path / "rpv2.jsonl", "-o", out, *RULES, "--text-field",
                  "raw_content", "--id-field", "doc_id", "--output-format", fmt, *ONE)  # fmt: skip
    assert result.returncode == 0, result.stderr
    fields = Fields("raw_content", "doc_id")
    written = records_of(out, fields)
    plain = tmp_path / "plain"
    write_lines(tmp_path / "plain.jsonl", [json.dumps(p).encode() for p in pages])
    assert prox("refine", tmp_path / "plain.jsonl", "-o", plain, *RULES, *ONE).returncode == 0
    for source, record, reference in zip(layout, written, records_of(plain)):
        assert record["raw_content"] == source["raw_content"]
        assert record["text"] == reference["text"]  # the refinement, not the original
        assert record["metadata"].get("chunk_program") == reference["metadata"].get("chunk_program")
    assert written[3]["metadata"]["prox"]["displaced"] == [
        {"field": "text", "value": "a text field of the corpus's own"}
    ]
    assert sum(r["text"] != r["raw_content"] for r in written) >= 3
    audit(out)


# -- a run never reads, nor deletes, what it writes ---------------------------------------------


def test_an_output_that_is_an_input_is_refused_and_the_input_kept(tmp_path):
    single = tmp_path / "d.jsonl"
    single.write_text('{"id": "1", "text": "one document"}\n')
    spark = tmp_path / "spark"
    spark.mkdir()
    (spark / "part-00000-3f2a.json").write_text('{"id": "2", "text": "written by Spark"}\n')
    (spark / "_SUCCESS").write_text("")
    before = {p: p.read_bytes() for p in (single, spark / "part-00000-3f2a.json")}
    for source, output in (
        (single, single),
        (spark, spark),
        (spark / "part-00000-3f2a.json", spark),
    ):
        result = prox("refine", source, "-o", output, *RULES, "--overwrite", "-q")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert f"is the output {output} or inside it" in line
    assert {p: p.read_bytes() for p in before} == before


def test_an_output_inside_the_input_folder_resumes_and_is_never_read(tmp_path):
    from proxkit.pipeline.run import RunPaths

    # a folder is resumed by the same command; a finished single file is replaced with --overwrite
    for output, runs in (
        ("out", ((), (), ("--overwrite",))),
        ("one.jsonl", ((), ("--overwrite",))),
    ):
        data = tmp_path / output.replace(".", "-")
        data.mkdir()
        write_lines(data / "a.jsonl", [b'{"id": "1", "text": "one"}', b"{broken"])
        for extra in runs:
            result = prox("refine", data, "-o", data / output, *RULES, *ONE, *extra)
            assert result.returncode == 0, result.stderr
            stats = json.loads(RunPaths.for_output(str(data / output)).stats.read_text())
            assert (stats["documents"], stats["rejected"]) == (1, 1)
        audit(data / output)


def test_a_parquet_string_that_is_not_utf8_rejects_its_row_only(tmp_path):
    rows = 1200  # past the reader's first batch of 1,024 rows, which one bad string once lost
    texts = [f"row {i}: The committee met on Tuesday and agreed.".encode() for i in range(rows)]
    texts[1100] = b"not \xff UTF-8"
    extra = [b"fine"] * rows
    extra[10] = b"\xc0 either"
    table = pa.table(
        {
            "id": [str(i) for i in range(rows)],
            "text": pa.array(texts, pa.binary()).view(pa.string()),
            "extra": pa.array(extra, pa.binary()).view(pa.string()),
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    for fmt in ("jsonl", "parquet"):
        out = tmp_path / fmt
        result = prox(
            "refine", tmp_path / "in.parquet", "-o", out, *RULES, "--output-format", fmt, *ONE
        )
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        stats = json.loads((out / "stats.json").read_text())
        assert (stats["documents"], stats["rejected"]) == (rows - 2, 2)
        rejects = [
            json.loads(line) for line in (out / "rejects-00000.jsonl").read_text().splitlines()
        ]
        assert [(r["position"], json.loads(r["raw"])) for r in rejects] == [
            (11, {"id": "10", "text": texts[10].decode(), "extra": "\\xc0 either"}),
            (1101, {"id": "1100", "text": "not \\xff UTF-8", "extra": "fine"}),
        ]
        audit(out)


# -- state that survives damage ------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_files(tmp_path_factory) -> Path:
    from conftest import example_records

    folder = tmp_path_factory.mktemp("three")
    pages = example_records()
    for part in range(3):
        lines = [
            json.dumps({**p, "part": part, f"only_in_{part}": True}).encode()
            for p in pages[part * 8 : part * 8 + 8]
        ]
        lines.insert(3, b"{not json")
        write_lines(folder / f"part{part}.jsonl", lines)
    return folder


def shard_bytes(output: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(output.glob("part-*"))} | {
        p.name: p.read_bytes() for p in sorted(output.glob("rejects-*"))
    }


@pytest.mark.parametrize("fmt", ["jsonl.gz", "parquet"])
def test_damaged_state_is_named_and_the_same_command_repairs_it(three_files, tmp_path, fmt):
    out = tmp_path / "out"
    command = (
        "refine",
        three_files,
        "-o",
        out,
        *RULES,
        "--output-format",
        fmt,
        "--workers",
        "1",
        "-q",
    )
    assert prox(*command).returncode == 0
    reference = shard_bytes(out)
    done = out / "_prox" / "done"
    damaged = [out / "_prox" / "run.json", done / "unit-00001.json"]
    for path in damaged:  # a torn write on a crashed network client
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    if fmt == "parquet":
        column = sorted((out / "_prox" / "columns").glob("*.json"))[0]
        column.write_bytes(b"")  # what a full disk left before
        damaged.append(column)
    (out / f"part-00000-00000.{fmt}").unlink()  # deleted by hand
    (out / "rejects-00002.jsonl").unlink()
    named = [*damaged, out / f"part-00000-00000.{fmt}", out / "rejects-00002.jsonl"]

    verified = prox("verify", out)
    assert verified.returncode == 1 and "Traceback" not in verified.stderr
    for path in named:
        assert str(path) in verified.stderr, (path, verified.stderr)
    for command_name in ("report", "inspect"):
        shown = prox(command_name, out, *(["--no-pager"] if command_name == "inspect" else []))
        assert shown.returncode == 2 and "Traceback" not in shown.stderr, shown.stderr
        assert (
            str(out / "_prox" / "run.json") in shown.stderr and len(shown.stderr.splitlines()) == 1
        )

    repaired = prox(*command)
    assert repaired.returncode == 0 and "Traceback" not in repaired.stderr, repaired.stderr
    for path in named:
        assert str(path) in repaired.stderr  # each named in a note
    assert shard_bytes(out) == reference
    assert not [p for p in out.rglob("*") if p.name.endswith((".partial", ".tmp"))]
    assert prox("verify", out).returncode == 0


# -- a full disk ---------------------------------------------------------------------------------


@contextmanager
def small_filesystem(path: Path, size: int) -> Iterator[Callable[[int], None]]:
    """A tmpfs of `size` bytes mounted at `path`; yields a function that resizes it."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(
            "a full disk needs a small file system: mounting a tmpfs needs root "
            f"(CAP_SYS_ADMIN) ({mounted.stderr.strip()})"
        )

    def resize(new_size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new_size}", str(path)], check=True)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_column_type_is_never_left_empty_by_a_full_disk(tmp_path):
    from proxkit.io.columns import FieldKinds

    with small_filesystem(tmp_path / "disk", 8192):
        columns = tmp_path / "disk" / "columns"
        columns.mkdir()
        filler = tmp_path / "disk" / "filler"
        with filler.open("wb", buffering=0) as handle, contextlib.suppress(OSError):
            while True:  # fill the disk to the last byte
                handle.write(b"x" * 512)
        with pytest.raises(OSError, match="No space left"):
            FieldKinds(columns).decide("extra", 1)
        assert list(columns.iterdir()) == []  # no empty type file, no temporary one
        filler.unlink()
        assert FieldKinds(columns).decide("extra", 1) == "int64"
        assert FieldKinds(columns).kinds["extra"] == "int64"


@pytest.mark.parametrize(("fmt", "shares"), [("parquet", (0.4, 0.8)), ("jsonl.gz", (0.5,))])
def test_a_full_disk_stops_the_run_cleanly_and_the_same_command_resumes(
    three_files, tmp_path, fmt, shares
):
    from proxkit.io.columns import FieldKinds

    command = (*RULES, "--output-format", fmt, "--workers", "1", "-q")
    reference = tmp_path / "reference"
    assert prox("refine", three_files, "-o", reference, *command).returncode == 0
    used = sum(4096 * -(-p.stat().st_size // 4096) for p in reference.rglob("*") if p.is_file())
    used += 4096 * sum(1 for p in reference.rglob("*") if p.is_dir())
    failures = 0
    for share in shares:
        disk = tmp_path / f"disk-{share}"
        with small_filesystem(disk, int(used * share) // 4096 * 4096) as resize:
            out = disk / "out"
            result = prox("refine", three_files, "-o", out, *command)
            if result.returncode == 0:
                continue  # it fitted
            failures += 1
            assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
            assert "No space left on device" in result.stderr
            assert "run the same command to resume" in result.stderr
            assert not [p for p in out.rglob("*") if p.name.endswith((".partial", ".tmp"))]
            assert FieldKinds(out / "_prox" / "columns").damaged == []
            for record in (out / "_prox" / "done").glob("*.json"):
                assert all((out / n).is_file() for n in json.loads(record.read_text())["files"])
            resize(used * 4)
            resumed = prox("refine", three_files, "-o", out, *command)
            assert resumed.returncode == 0, resumed.stderr
            assert shard_bytes(out) == shard_bytes(reference)
            assert not [p for p in out.rglob("*") if p.name.endswith((".partial", ".tmp"))]
            audit(out)
    assert failures, "no disk was small enough to fill"
