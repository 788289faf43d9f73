"""Model replicas as real processes (`prox refine --replicas cpu,cpu`): a replica killed during
the run stops it with a message naming its device, no process is left behind, and the same
command resumes to the bytes of an uninterrupted run in one process."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from proxkit.cli import app

from conftest import write_jsonl
from tiny_model import make_documents

pytest.importorskip("torch")
pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def command(inputs: Path, output: Path, model: Path) -> list[str]:
    return [
        sys.executable, "-m", "proxkit.cli", "refine", str(inputs), "-o", str(output),
        "--doc-programmer", str(model), "--chunk-programmer", str(model),
        "--backend", "transformers", "--replicas", "cpu,cpu", "--threads", "1", "--batch-size", "4",
        "--doc-keep-fraction", "0.75", "--chunk-max-new-tokens", "40", "--dtype", "float32",
        "-q",
    ]  # fmt: skip


def shards(output: Path) -> dict[str, bytes]:
    return {p.name: gzip.decompress(p.read_bytes()) for p in sorted(output.glob("part-*"))}


def test_a_killed_replica_stops_the_run_and_the_run_resumes(refiner, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for part in range(4):
        texts = make_documents(12, seed=part)
        records = [{"id": f"{part}-{i}", "text": t} for i, (t, _) in enumerate(texts)]
        write_jsonl(inputs / f"part{part}.jsonl", records)
    whole = tmp_path / "whole"  # in this process, without replicas: the bytes replicas owe
    single = command(inputs, whole, refiner)[3:]
    at = single.index("--replicas")
    assert single[at : at + 4] == ["--replicas", "cpu,cpu", "--threads", "1"]
    del single[at : at + 4]
    assert CliRunner().invoke(app, single).exit_code == 0

    output = tmp_path / "out"
    process = subprocess.Popen(command(inputs, output, refiner), stderr=subprocess.PIPE, text=True)
    done = output / "_prox" / "done"
    deadline = time.time() + 300
    while not (done.is_dir() and any(done.iterdir())) and time.time() < deadline:
        time.sleep(0.1)
    replicas = [c for c in children(process.pid) if "resource_tracker" not in _cmdline(c)]
    assert len(replicas) == 2, replicas
    os.kill(replicas[1], signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "model replica on cpu died (exit code -9)" in stderr
    assert "run the same command to resume" in stderr
    time.sleep(1)
    assert not any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in replicas)
    finished = len(list(done.iterdir()))
    assert 1 <= finished < 4

    subprocess.run(command(inputs, output, refiner), check=True, timeout=600)
    assert shards(output) == shards(whole)
    verified = subprocess.run(
        [sys.executable, "-m", "proxkit.cli", "verify", str(output)], capture_output=True
    )
    assert verified.returncode == 0, verified.stdout


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except OSError:
        return False
    return state != "Z"
