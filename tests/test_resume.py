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

from conftest import EXAMPLES

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


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """3,200 documents in 5 files."""
    folder = tmp_path_factory.mktemp("corpus")
    with gzip.open(EXAMPLES / "web_docs.jsonl.gz", "rt") as handle:
        records = [json.loads(line) for line in handle]
    for part in range(5):
        with gzip.open(folder / f"part{part}.jsonl.gz", "wt") as out:
            for copy in range(2):
                for record in records:
                    out.write(json.dumps({**record, "id": f"{record['id']}#{part}.{copy}"}) + "\n")
    return folder


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
