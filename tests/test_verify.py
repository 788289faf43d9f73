"""`prox verify` as an auditor: on a real run's output it passes, and every kind of damage, to
records, shards, rejects or state files, is one problem line that names the file."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from proxkit.io import Fields, RecordWriter, read_file
from proxkit.io.encodable import json_line
from proxkit.io.readers import Document
from proxkit.pipeline.verify import verify

from conftest import example_records, write_jsonl

RULES = ("--doc-programmer", "rules", "--chunk-programmer", "rules")


def prox(*args: object) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "proxkit.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    pages = example_records()
    write_jsonl(folder / "a.jsonl", pages[:6])
    with (folder / "a.jsonl").open("a") as handle:
        handle.write('{"id": "broken", "text": \n{"id": "no text"}\n')
    write_jsonl(folder / "b.jsonl", pages[6:12])
    return folder


@pytest.fixture(scope="module", params=["jsonl.gz", "parquet"])
def good(request, inputs, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("good") / "out"
    result = prox(
        "refine", inputs, "-o", output, *RULES, "--output-format", request.param, "--workers", "1"
    )
    assert result.returncode == 0, result.stderr
    return output


def shard(output: Path, unit: int = 0) -> Path:
    (path,) = output.glob(f"part-{unit:05d}-*")
    return path


def rewrite(path: Path, change: Callable[[list[dict]], list[dict]]) -> None:
    """Rewrite a shard's records as `change` says, in the shard's own format."""
    if path.name.endswith(".parquet"):
        records = [i.record for i in read_file(str(path), Fields()) if isinstance(i, Document)]
        path.unlink()
        with RecordWriter(path) as writer:
            for record in change(records):
                writer.write(record)
        return
    lines = gzip.decompress(path.read_bytes()).splitlines()
    records = change([json.loads(line) for line in lines])
    path.write_bytes(gzip.compress(b"".join(json_line(r) for r in records)))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def changed_text(records: list[dict]) -> list[dict]:
    kept = next(r for r in records if r["text"])
    kept["text"] += " and a sentence no program wrote."
    return records


def duplicate_columns(path: Path) -> None:
    table = pq.read_table(path)
    names = table.column_names
    overflow = table.column(names.index("_prox_overflow"))
    doubled = pa.Table.from_arrays([*table.columns, overflow], names=[*names, "_prox_overflow"])
    pq.write_table(doubled.replace_schema_metadata(table.schema.metadata), path)


def leftovers(output: Path) -> None:
    (output / f"{shard(output).name}.partial").write_bytes(b"half a shard")
    (output / "_prox" / "done" / "unit-00001.json.4242.tmp").write_text("{")


def later_input(output: Path) -> None:
    source = Path(json.loads((output / "_prox" / "run.json").read_text())["units"][1]["path"])
    os.utime(source, (time.time() + 100, time.time() + 100))


# (name, damage, the file the problem names, what it says); `output` is a copy of a good run
DAMAGES: list[tuple[str, Callable[[Path], object], Callable[[Path], Path], str]] = [
    ("a shard deleted", lambda o: shard(o).unlink(), shard, "missing"),
    ("rejects deleted", lambda o: (o / "rejects-00000.jsonl").unlink(),
     lambda o: o / "rejects-00000.jsonl", "missing"),
    ("a row lost", lambda o: rewrite(shard(o), lambda rs: rs[:2] + rs[3:]),
     lambda o: Path(json.loads((o / "_prox/run.json").read_text())["units"][0]["path"]),
     "1 input records have no output"),
    ("a row twice", lambda o: rewrite(shard(o, 1), lambda rs: rs + rs[1:2]),
     lambda o: Path(shard(o, 1).name), "records written more often than read"),
    ("a row from elsewhere", lambda o: rewrite(shard(o), lambda rs: [*rs, {**rs[0], "id": "x"}]),
     lambda o: Path(shard(o).name), "records match no input record"),
    ("a text no program wrote", lambda o: rewrite(shard(o), changed_text),
     lambda o: Path(shard(o).name), ": text"),
    ("a field changed", lambda o: rewrite(shard(o, 1), lambda rs: [{**r, "url": "x"} for r in rs]),
     lambda o: Path(shard(o, 1).name), ": url"),
    ("a reject changed", lambda o: (o / "rejects-00000.jsonl").write_text(
        (o / "rejects-00000.jsonl").read_text().replace("invalid JSON", "bad JSON")),
     lambda o: Path("rejects-00000.jsonl"), "rejects are missing"),
    ("a shard cut short", lambda o: truncate(shard(o)), shard, ""),
    ("a completion record torn", lambda o: truncate(o / "_prox/done/unit-00001.json"),
     lambda o: o / "_prox/done/unit-00001.json", "is damaged (not valid JSON"),
    ("run.json torn", lambda o: truncate(o / "_prox/run.json"),
     lambda o: o / "_prox/run.json", "is damaged (not valid JSON"),
    ("stats.json wrong", lambda o: (o / "stats.json").write_text('{"documents": 1, "rejected": 0}'),
     lambda o: o / "stats.json", "documents is 1, the output holds 12"),
    ("a file of no unit", lambda o: shutil.copy(shard(o), o / shard(o).name.replace("00000-", "00009-")),
     lambda o: o / shard(o).name.replace("00000-", "00009-"), "belongs to no completed unit"),
    ("temporary files left", leftovers,
     lambda o: o / "_prox/done/unit-00001.json.4242.tmp", "a temporary file left"),
    ("an input changed", later_input, lambda o: Path("unit 00001"), "changed since the run"),
]  # fmt: skip
PARQUET_DAMAGES = [
    ("a column twice", lambda o: duplicate_columns(shard(o)), shard, "read_table cannot read it"),
    ("a column type emptied", lambda o: sorted((o / "_prox/columns").glob("*.json"))[0].write_text(""),
     lambda o: sorted((o / "_prox/columns").glob("*.json"))[0], "is damaged (empty)"),
]  # fmt: skip


def test_a_good_run_passes(good):
    report = verify(good)
    assert report.ok, report.problems
    assert (report.units, report.complete_units) == (2, 2)
    assert (report.input_records, report.output_records, report.rejected) == (12, 12, 2)


@pytest.mark.parametrize(
    ("name", "damage", "named", "says"),
    DAMAGES + PARQUET_DAMAGES,
    ids=[d[0] for d in DAMAGES + PARQUET_DAMAGES],
)
def test_every_damage_is_a_problem_naming_the_file(good, tmp_path, name, damage, named, says):
    if (name, damage, named, says) in PARQUET_DAMAGES and not shard(good).name.endswith("parquet"):
        pytest.skip("a Parquet file's damage")
    output = tmp_path / "out"
    shutil.copytree(good, output)
    path = str(named(output))  # before the damage: it may remove the file
    sources = {
        p: p.stat()
        for p in Path(
            json.loads((good / "_prox/run.json").read_text())["units"][0]["path"]
        ).parent.iterdir()
    }
    try:
        damage(output)
        report = verify(output)
    finally:  # the inputs are shared by every test here
        for source, stat in sources.items():
            os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert not report.ok
    assert all("\n" not in p for p in report.problems)
    assert any(path in p and says in p for p in report.problems), report.problems


def test_the_command_line_verifies_folders_and_single_files(good, inputs, tmp_path):
    result = prox("verify", good)
    assert result.returncode == 0, result.stderr
    assert "2/2 units complete; 12 input records, 12 output records, 2 rejected; checked in" in (
        result.stdout
    )
    assert "ok: every input record is accounted for exactly once" in result.stdout

    single = tmp_path / "one.jsonl"
    assert prox("refine", inputs, "-o", single, *RULES, "--workers", "1", "-q").returncode == 0
    assert prox("verify", single).returncode == 0
    rewrite_plain = [json.loads(line) for line in single.read_text().splitlines()]
    single.write_bytes(b"".join(json_line(r) for r in changed_text(rewrite_plain)))
    damaged = prox("verify", single)
    assert damaged.returncode == 1 and "Traceback" not in damaged.stderr
    assert "one.jsonl: 1 records are not what their input and stored programs give" in (
        damaged.stderr
    )
    missing = prox("verify", tmp_path / "nothing")
    assert missing.returncode == 2 and "holds no prox run" in missing.stderr


def test_a_limited_run_is_checked_as_a_prefix_of_its_input(inputs, tmp_path):
    output = tmp_path / "out"
    refined = prox("refine", inputs, "-o", output, *RULES, "--workers", "1", "--limit", "4", "-q")
    assert refined.returncode == 0, refined.stderr
    report = verify(output)
    assert report.ok and report.limited, report.problems
    assert (report.input_records, report.output_records) == (4, 4)
    rewrite(shard(output), lambda records: records[1:])
    assert "1 input records have no output" in " ".join(verify(output).problems)
