"""Resumable runs: SIGKILL at random points, resume, and the output equals an uninterrupted
run's (nothing lost, nothing written twice); other configurations and changed inputs refused."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import example_records

# One worker runs this module: its corpora and uninterrupted runs are made once, and the tests
# that run again in those outputs do not meet each other there.
pytestmark = pytest.mark.xdist_group("resume")
RULES = ("--doc-programmer", "rules", "--chunk-programmer", "rules")


def command(inputs: Path, output: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "proxkit.cli",
        "refine",
        str(inputs),
        "-o",
        str(output),
        *RULES,
        "--workers",
        "1",
        "--batch-size",
        "32",
        "--shard-size",
        "400KB",
        "-q",
        *extra,
    ]


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: gzip.decompress(p.read_bytes()) for p in sorted(folder.glob("part-*"))}


def write_corpus(folder: Path, copies: int) -> Path:
    """The example corpus `copies` times in each of 5 gzipped files, every id distinct."""
    records = example_records()
    for part in range(5):
        with gzip.open(folder / f"part{part}.jsonl.gz", "wt") as out:
            for copy in range(copies):
                for record in records:
                    out.write(json.dumps({**record, "id": f"{record['id']}#{part}.{copy}"}) + "\n")
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """3,200 documents in 5 files."""
    return write_corpus(tmp_path_factory.mktemp("corpus"), copies=2)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """1,600 documents in 5 files: enough time to stop a run between its units."""
    return write_corpus(tmp_path_factory.mktemp("small_corpus"), copies=1)


@pytest.fixture(scope="module")
def small_uninterrupted(small_corpus, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("small_whole") / "out"
    subprocess.run(command(small_corpus, output), check=True, timeout=600)
    return output


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("whole") / "out"
    subprocess.run(command(corpus, output), check=True, timeout=600)
    return output


def test_killed_runs_resume_to_the_same_output(corpus, uninterrupted, tmp_path):
    output = tmp_path / "out"
    rng = random.Random(7)
    kills = 0
    for _ in range(3):
        process = subprocess.Popen(command(corpus, output), stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.5, 4.0))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 2  # the run was really interrupted, more than once
    subprocess.run(command(corpus, output), check=True, timeout=600)
    assert outputs(output) == outputs(uninterrupted)
    ids = [
        json.loads(line)["id"] for data in outputs(output).values() for line in data.splitlines()
    ]
    assert len(ids) == len(set(ids)) == 3200
    assert not list(output.glob("*.partial"))
    stats = json.loads((output / "stats.json").read_text())
    assert stats["documents"] == 3200


def test_another_configuration_is_refused(corpus, uninterrupted):
    result = subprocess.run(
        command(corpus, uninterrupted, "--short-doc-words", "3"), capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "another configuration (differs in: thresholds)" in result.stderr


def test_rerunning_a_finished_run_changes_nothing(corpus, uninterrupted):
    before = outputs(uninterrupted)
    subprocess.run(command(corpus, uninterrupted, "--workers", "2"), check=True, timeout=600)
    assert outputs(uninterrupted) == before


def test_a_changed_input_is_refused(corpus, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.jsonl").write_text('{"id": "1", "text": "one document"}\n')
    subprocess.run(command(inputs, tmp_path / "out"), check=True)
    (inputs / "a.jsonl").write_text('{"id": "1", "text": "one document, edited"}\n')
    os.utime(inputs / "a.jsonl", (time.time() + 5, time.time() + 5))
    result = subprocess.run(command(inputs, tmp_path / "out"), capture_output=True, text=True)
    assert result.returncode == 2 and "changed since the run started" in result.stderr


def test_ranks_split_the_files_and_together_equal_one_run(corpus, uninterrupted, tmp_path):
    output = tmp_path / "out"
    for rank in ("0", "1"):
        subprocess.run(
            command(corpus, output, "--rank", rank, "--world-size", "2"), check=True, timeout=600
        )
    assert outputs(output) == outputs(uninterrupted)


def prox_verify(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "proxkit.cli", "verify", str(folder)], capture_output=True, text=True
    )


def test_verify_accounts_for_every_record(uninterrupted, tmp_path):
    import shutil

    result = prox_verify(uninterrupted)
    assert result.returncode == 0, result.stderr
    assert "5/5 units complete; 3,200 input records, 3,200 output records" in result.stdout

    damaged = tmp_path / "damaged"
    shutil.copytree(uninterrupted, damaged)
    shard = sorted(damaged.glob("part-00001-*"))[0]
    lines = gzip.decompress(shard.read_bytes()).splitlines(keepends=True)
    shard.write_bytes(
        gzip.compress(b"".join(lines[1:] + lines[2:3]))
    )  # one lost, one written twice
    (damaged / "_prox" / "done" / "unit-00004.json").unlink()
    result = prox_verify(damaged)
    assert result.returncode == 1
    assert "unit 00001: records written more often than read" in result.stderr
    assert "unit 00001: 1 input records have no output" in result.stderr
    assert "unit 00004 (" in result.stderr and "is not complete" in result.stderr


def test_a_record_that_makes_the_worker_raise_is_rejected_and_the_unit_completes(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = {"id": "good", "text": "enough words " * 10, "metadata": {"chunk_program": "keep_doc()"}}
    bad = {"id": "bad", "text": "enough words " * 10, "metadata": {"chunk_program": 5}}
    (inputs / "a.jsonl").write_text(
        "\n".join(json.dumps(r) for r in (good, bad, good | {"id": "good2"})) + "\n"
    )
    output = tmp_path / "out"
    execute = [sys.executable, "-m", "proxkit.cli", "execute", str(inputs), "-o", str(output), "-q"]
    assert subprocess.run(execute, capture_output=True).returncode == 0
    (reject,) = [
        json.loads(line) for line in (output / "rejects-00000.jsonl").read_text().splitlines()
    ]
    assert reject["id"] == "bad" and reject["reason"].startswith("refining failed")
    assert (output / "_prox" / "done" / "unit-00000.json").is_file()
    result = prox_verify(output)
    assert result.returncode == 0, result.stderr


def test_a_full_disk_is_a_clear_error_and_nothing_is_marked_complete(corpus, tmp_path):
    import resource

    def small_disk() -> None:  # a file growing past 50 KB fails with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    output = tmp_path / "out"
    result = subprocess.run(
        command(corpus, output), capture_output=True, text=True, preexec_fn=small_disk, timeout=600
    )
    assert result.returncode == 1
    assert "could not write the output" in result.stderr and "File too large" in result.stderr
    assert "Traceback" not in result.stderr
    done = (
        list((output / "_prox" / "done").glob("*.json"))
        if (output / "_prox" / "done").exists()
        else []
    )
    for record in done:  # whatever was marked complete really is complete
        assert all((output / name).is_file() for name in json.loads(record.read_text())["files"])
    assert len(done) < 5
    subprocess.run(command(corpus, output), check=True, timeout=600)  # room again: it resumes
    assert prox_verify(output).returncode == 0


def test_an_input_changing_during_the_run_is_not_marked_complete(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    big = inputs / "a.jsonl"
    big.write_text(
        "".join(json.dumps({"id": str(i), "text": "words " * 50}) + "\n" for i in range(20000))
    )
    process = subprocess.Popen(command(inputs, tmp_path / "out"), stderr=subprocess.PIPE, text=True)
    manifest = tmp_path / "out" / "_prox" / "run.json"
    deadline = time.time() + 120
    while not manifest.exists() and time.time() < deadline:  # the run has planned its units
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before the input could change"
    with big.open("a") as handle:
        handle.write(
            json.dumps({"id": "late", "text": "appended while the run reads the file"}) + "\n"
        )
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 2 and "changed while it was being read" in stderr
    assert not (tmp_path / "out" / "_prox" / "done" / "unit-00000.json").exists()


# --- large files: byte ranges and row groups as work units ------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from proxkit.io.readers import Document, Fields, read_file  # noqa: E402
from proxkit.pipeline.units import plan_units  # noqa: E402


@given(st.lists(st.integers(0, 120), min_size=1, max_size=60), st.integers(1, 400))
@settings(max_examples=150, deadline=None)
def test_byte_ranges_cover_every_line_once_with_its_number(tmp_path_factory, lengths, unit_bytes):
    path = tmp_path_factory.mktemp("ranges") / "f.jsonl"
    # blank lines (length 0) and records of many lengths
    lines = [
        "" if n == 0 else json.dumps({"id": str(i), "text": "x" * n}) for i, n in enumerate(lengths)
    ]
    path.write_text("\n".join(lines) + "\n")
    units = plan_units([str(path)], unit_bytes)
    read = [
        (d.position, d.id)
        for u in units
        for d in read_file(str(path), Fields(), u.start, u.stop, u.first_position)
        if isinstance(d, Document)
    ]
    assert read == [(i + 1, str(i)) for i, n in enumerate(lengths) if n]


def all_records(folder: Path) -> list[dict]:
    return [json.loads(line) for data in outputs(folder).values() for line in data.splitlines()]


def test_large_files_split_into_units_give_the_same_records(corpus, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    with gzip.open(corpus / "part0.jsonl.gz", "rt") as handle:
        records = [json.loads(line) for line in handle]
    lines = [json.dumps(r) for r in records]
    lines.insert(400, "{broken json")  # line 401
    (inputs / "big.jsonl").write_text("\n".join(lines) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records[:300]), inputs / "big.parquet", row_group_size=25)
    whole, split = tmp_path / "whole", tmp_path / "split"
    subprocess.run(command(inputs, whole), check=True, timeout=600)
    subprocess.run(command(inputs, split, "--unit-size", "300KB"), check=True, timeout=600)
    units = json.loads((split / "_prox" / "run.json").read_text())["units"]
    assert (
        len(units) > 10
        and len(json.loads((whole / "_prox" / "run.json").read_text())["units"]) == 2
    )
    assert all_records(split) == all_records(whole)
    rejects = [
        json.loads(line)
        for p in sorted(split.glob("rejects-*"))
        for line in p.read_text().splitlines()
    ]
    assert [(r["position"], r["raw"]) for r in rejects] == [(401, "{broken json")]
    assert prox_verify(split).returncode == 0


def _wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _holds_lock(output: Path) -> bool:
    lock = output / "_prox" / "lock"
    return lock.is_file() and bool(lock.read_text().strip())


def test_one_writer_per_output_and_a_killed_holder_is_taken_over(
    small_corpus, small_uninterrupted, tmp_path
):
    corpus, uninterrupted = small_corpus, small_uninterrupted
    output = tmp_path / "out"
    first = subprocess.Popen(command(corpus, output), stderr=subprocess.DEVNULL)
    _wait_for(lambda: _holds_lock(output))
    second = subprocess.run(command(corpus, output), capture_output=True, text=True, timeout=60)
    assert second.returncode == 1
    assert f"{output} is being written by pid {first.pid}" in second.stderr
    first.send_signal(signal.SIGKILL)
    first.wait()
    third = subprocess.run(command(corpus, output), capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr
    assert f"taking over the lock left by pid {first.pid}" in third.stderr
    assert outputs(output) == outputs(uninterrupted)
    assert (output / "_prox" / "lock").read_text() == ""  # released


def test_ranks_run_side_by_side_but_not_beside_a_whole_run(
    small_corpus, small_uninterrupted, tmp_path
):
    corpus, uninterrupted = small_corpus, small_uninterrupted
    output = tmp_path / "out"
    ranks = [
        subprocess.Popen(
            command(corpus, output, "--rank", rank, "--world-size", "2"),
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in ("0", "1")
    ]
    _wait_for(lambda: any((output / "_prox").glob("lock-rank-*")))
    whole = subprocess.run(command(corpus, output), capture_output=True, text=True, timeout=60)
    assert whole.returncode == 1 and "is being written by pid" in whole.stderr
    for process in ranks:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
    assert outputs(output) == outputs(uninterrupted)


@pytest.mark.parametrize(("sent", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_stop_cleanly_and_the_run_resumes(
    small_corpus, small_uninterrupted, tmp_path, sent, code
):
    corpus, uninterrupted = small_corpus, small_uninterrupted
    output = tmp_path / "out"
    process = subprocess.Popen(
        command(corpus, output, "--workers", "2"), stderr=subprocess.PIPE, text=True
    )
    done = output / "_prox" / "done"
    _wait_for(lambda: done.is_dir() and any(done.glob("*.json")))
    process.send_signal(sent)
    started = time.time()
    _, stderr = process.communicate(timeout=30)
    assert time.time() - started < 5
    assert process.returncode == code
    assert f"interrupted: ({sent.name})" in stderr and "run the same command to resume" in stderr
    assert "Traceback" not in stderr
    assert not list(output.glob("*.partial"))
    finished = {json.loads(p.read_text())["unit"]["index"] for p in done.glob("*.json")}
    assert 1 <= len(finished) < 5
    assert f"{len(finished)} of 5 units are complete" in stderr
    # Only complete units have shards under their final names.
    assert {int(p.name.split("-")[1]) for p in output.glob("part-*")} == finished
    assert not _holds_lock(output)
    subprocess.run(command(corpus, output), check=True, timeout=600)
    assert outputs(output) == outputs(uninterrupted)


def test_workers_do_not_outlive_a_killed_run(small_corpus, tmp_path):
    process = subprocess.Popen(
        command(small_corpus, tmp_path / "out", "--workers", "2"), stderr=subprocess.DEVNULL
    )

    def descendants() -> list[int]:
        found, stack = [], [process.pid]
        while stack:
            pid = stack.pop()
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            found += [int(c) for c in children]
            stack += [int(c) for c in children]
        return found

    _wait_for(lambda: len(descendants()) >= 2)
    workers = descendants()
    process.send_signal(signal.SIGKILL)
    process.wait()

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
        except OSError:
            return False

    _wait_for(lambda: not any(alive(pid) for pid in workers), seconds=5)


# --- Parquet bytes, signals while workers start, single output files ---------------------------


@pytest.fixture(scope="module")
def varied(tmp_path_factory) -> Path:
    """5 small files whose records bring fields of their own (file k: `only_in_k`), so the order
    in which a run meets fields differs from the order of their hashed type files."""
    folder = tmp_path_factory.mktemp("varied")
    records = example_records()
    for part in range(5):
        with (folder / f"part{part}.jsonl").open("w") as out:
            for record in records[part * 12 : part * 12 + 12]:
                fields = {f"only_in_{part}": part, "shared": record["url"], "part": part}
                out.write(json.dumps({**record, **fields}) + "\n")
    return folder


def parquet_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("part-*"))}


def test_resumed_and_ranked_parquet_runs_give_the_bytes_of_one_run(varied, tmp_path):
    parquet = ("--output-format", "parquet")
    whole = tmp_path / "whole"
    subprocess.run(command(varied, whole, *parquet), check=True, timeout=600)
    ranked = tmp_path / "ranked"
    for rank in ("1", "0"):  # the later files first: their fields are met first
        extra = (*parquet, "--rank", rank, "--world-size", "2")
        subprocess.run(command(varied, ranked, *extra), check=True, timeout=600)
    resumed = tmp_path / "resumed"
    subprocess.run(command(varied, resumed, *parquet), check=True, timeout=600)
    for unit in ("00001", "00003", "00004"):  # as a kill leaves it: types kept, units undone
        (resumed / "_prox" / "done" / f"unit-{unit}.json").unlink()
        for shard in resumed.glob(f"part-{unit}-*"):
            shard.unlink()
    subprocess.run(command(varied, resumed, *parquet, "--workers", "2"), check=True, timeout=600)
    assert len(parquet_bytes(whole)) == 5
    assert parquet_bytes(ranked) == parquet_bytes(whole) == parquet_bytes(resumed)


def test_a_signal_while_workers_start_prints_no_worker_traceback(small_corpus, tmp_path):
    for attempt, delay in enumerate((0.0, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8)):
        output = tmp_path / f"out{attempt}"
        process = subprocess.Popen(
            command(small_corpus, output, "--workers", "2"),
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a process group of its own, as a terminal's Ctrl-C hits
        )
        # Once the run has planned its units, its worker processes are about to start.
        manifest = output / "_prox" / "run.json"
        _wait_for(lambda m=manifest, p=process: m.exists() or p.poll() is not None)
        time.sleep(delay)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert "Traceback" not in stderr, stderr
        assert process.returncode in (0, 130), stderr


def test_a_failed_single_output_file_is_written_by_the_same_command(corpus, tmp_path):
    import resource

    def small_disk() -> None:  # full after the first batch and its reject are written
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    inputs = tmp_path / "in"
    inputs.mkdir()
    with gzip.open(corpus / "part0.jsonl.gz", "rt") as handle:
        (inputs / "a.jsonl").write_text("{not json\n" + handle.read())
    output = tmp_path / "out.jsonl.gz"
    first = subprocess.run(
        command(inputs, output), capture_output=True, text=True, preexec_fn=small_disk, timeout=600
    )
    assert first.returncode == 1 and "run the same command" in first.stderr
    assert f"rejected {inputs / 'a.jsonl'}:1: invalid JSON" in first.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out.jsonl.gz.lock"]
    again = subprocess.run(command(inputs, output), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert len(gzip.decompress(output.read_bytes()).splitlines()) == 640
    assert prox_verify(output).returncode == 0
