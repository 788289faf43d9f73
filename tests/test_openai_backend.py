"""The OpenAI-compatible backend against a real HTTP server process on 127.0.0.1, with injected
faults: slow answers, 500s, cut connections, garbage bodies, client errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from proxkit.config import RefineConfig
from proxkit.pipeline.run import run
from proxkit.program import Thresholds

from conftest import LLAMA2, start_server

BODY = "A sentence of ordinary article text that should stay in place.\n"


@pytest.fixture
def server():
    process, url = start_server()
    yield url
    process.terminate()
    process.wait(timeout=10)


def page(marker: str = "", spam: bool = False) -> str:
    lines = [
        "MENU Home | About",
        BODY.strip() + f" {marker}".rstrip(),
        BODY.strip(),
        "MENU Contact",
    ]
    return "\n".join(lines + (["SPAM SPAM"] if spam else []))


def refine(tmp_path: Path, url: str, docs: dict[str, str], **overrides) -> tuple[list[dict], dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs.items()))
    config = RefineConfig(
        inputs=(str(source),),
        output=str(tmp_path / "out"),
        doc_programmer="scripted-refiner",
        chunk_programmer="scripted-refiner",
        backend="openai",
        api_base=url,
        tokenizer=str(LLAMA2),
        request_timeout=2.0,
        max_retries=3,
        output_format="jsonl",
        thresholds=Thresholds(short_doc_words=3),
        **overrides,
    )
    stats = run(config, progress=False)
    records = [
        json.loads(line)
        for line in (tmp_path / "out" / "part-00000-00000.jsonl").read_text().splitlines()
    ]
    return records, stats.to_dict()


@pytest.mark.parametrize("api_mode", ["completions", "chat"])
def test_refine_through_a_server_that_misbehaves(server, tmp_path, llama2_dir, api_mode):
    docs = {
        "plain": page(),
        "twice": page(),  # the same prompts again: served from the program cache
        "spam": page(spam=True),
        "flaky500": page("FAULT:500x2"),
        "dropped-connection": page("FAULT:dropx1"),
        "garbage-body": page("FAULT:garbagex2"),
        "slow": page("FAULT:slowx1"),
        "always-failing": page("FAULT:always500"),
        "bad-request": page("FAULT:400"),
    }
    # The scripted server keeps no grammar and gives no log-probabilities: this test is about
    # faults, so it asks for neither (a server is refused at start-up if it is asked).
    records, stats = refine(
        tmp_path, server, docs, api_mode=api_mode, constrained=False, doc_scoring="generate"
    )
    by_id = {r["id"]: r for r in records}
    assert list(by_id) == list(docs)  # every document, in order
    for name in ("plain", "twice", "flaky500", "dropped-connection", "garbage-body", "slow"):
        record = by_id[name]
        assert record["metadata"]["chunk_program"] == (
            "remove_lines(line_start=0, line_end=0)\nremove_lines(line_start=3, line_end=3)"
        ), name
        assert "MENU" not in record["text"] and record["text"].count("ordinary article") == 2
    assert by_id["spam"]["text"] == "" and by_id["spam"]["metadata"]["doc_program"] == "drop_doc()"
    for name, reason in (("always-failing", "HTTP 500"), ("bad-request", "HTTP 400")):
        record = by_id[name]
        assert record["text"] == docs[name]  # kept unrefined, never lost
        assert reason in record["metadata"]["prox"]["doc_info"]["failed"]
        assert reason in record["metadata"]["prox"]["chunk_info"]["failed"]
    assert stats["programmer_failures"] == 2
    assert stats["programmers"]["doc"]["cache_hits"] == 1  # "twice" repeats "plain"
    served = json.loads(urllib.request.urlopen(server.removesuffix("/v1") + "/stats").read())
    # one request per distinct prompt, plus the retries the faults forced
    assert (
        served["distinct_prompts"]
        == stats["programmers"]["doc"]["prompts"] + stats["programmers"]["chunk"]["prompts"] - 2
    )
    # each faulty document has a doc prompt and a chunk prompt carrying the marker
    retries = {"500x2": 2, "dropx1": 1, "garbagex2": 2, "slowx1": 1, "always500": 3}
    forced = served["distinct_prompts"] + 2 * sum(retries.values())
    # On a loaded machine a timeout can also cut a request before the server counts it, or
    # add a retry to a slow ordinary answer; the cache property above stays exact.
    assert forced - 2 <= served["requests"] <= forced + 4


def test_a_real_model_behind_the_api(tmp_path, tiny_model, request):
    from tiny_model import make_documents

    model = tiny_model(120)
    process, url = start_server("--model", str(model))
    try:
        pairs = make_documents(8, 5)
        records, _ = refine(
            tmp_path / "run", url, {str(i): t for i, (t, _) in enumerate(pairs)}, stages=("doc",)
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert [r["metadata"]["doc_program"] for r in records] == [
        "keep_doc()" if k else "drop_doc()" for _, k in pairs
    ]


def cli(inputs: Path, output: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    """`prox refine` through the openai backend, as a user runs it."""
    command = cli_command(inputs, output, url, *extra)
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def cli_command(inputs: Path, output: Path, url: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "proxkit.cli",
        "refine",
        str(inputs),
        "-o",
        str(output),
        "--doc-programmer",
        "scripted-refiner",
        "--chunk-programmer",
        "scripted-refiner",
        "--backend",
        "openai",
        "--api-base",
        url,
        "--tokenizer",
        str(LLAMA2),
        "--max-retries",
        "2",
        "-q",
        *extra,
    ]


def test_a_server_that_cannot_keep_a_promise_is_refused_at_start_up(server, tmp_path, llama2_dir):
    """The scripted server ignores grammars and log-probability requests, as many servers
    do: each promise the run makes is refused in one line before anything is written."""
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "a", "text": page()}) + "\n")
    grammar = cli(source, tmp_path / "out", server)
    assert grammar.returncode == 2
    [line] = grammar.stderr.strip().splitlines()
    assert line.startswith("error: --constrained: the server at ")
    for way in (
        "vllm_xargs: not read by the server",
        "structured_outputs: ignored",
        "ebnf: ignored",
    ):
        assert way in line
    assert "--no-constrained" in line
    scoring = cli(source, tmp_path / "out", server, "--no-constrained")
    assert scoring.returncode == 2
    [line] = scoring.stderr.strip().splitlines()
    assert "--doc-scoring forward" in line and "logprob_token_ids" in line
    assert line.endswith("use --doc-scoring generate")
    assert not list((tmp_path / "out").glob("part-*"))  # nothing written
    done = cli(source, tmp_path / "out", server, "--no-constrained", "--doc-scoring", "generate")
    assert done.returncode == 0, done.stderr


def test_a_server_killed_mid_run_stops_the_run_which_resumes_to_the_same_bytes(
    tmp_path, llama2_dir
):
    """Killed between units, the server leaves no document unrefined: the run stops with one
    line, and once the server is back the same command finishes it, byte for byte as a run
    that was never stopped."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for part in range(4):
        # The later files answer slowly, so the server can be killed while they are written.
        marker = "FAULT:slowx1" if part else ""
        lines = [
            json.dumps({"id": f"{part}.{i}", "text": page(f"{marker} {part}.{i}")})
            for i in range(3)
        ]
        (corpus / f"part{part}.jsonl").write_text("\n".join(lines) + "\n")
    options = ("--no-constrained", "--doc-scoring", "generate", "--request-timeout", "30")
    process, url = start_server()
    try:
        assert cli(corpus, tmp_path / "whole", url, *options).returncode == 0
        port = url.split(":")[2].split("/")[0]
        process.kill()
        process.wait(timeout=10)
        process, url = start_server("--port", port)  # the slow answers are slow again
        command = cli_command(corpus, tmp_path / "out", url, *options)
        run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        done = tmp_path / "out" / "_prox" / "done"
        deadline = time.monotonic() + 120
        while not (done.is_dir() and any(done.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.1)
        process.kill()
        process.wait(timeout=10)
        _, stderr = run.communicate(timeout=120)
        assert run.returncode == 1
        [line] = stderr.strip().splitlines()
        assert "does not answer" in line and "run the same command to resume" in line
        assert 1 <= len(list(done.iterdir())) < 4
        process, url = start_server("--port", port)
        resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
    finally:
        process.kill()
        process.wait(timeout=10)
    assert outputs(tmp_path / "out") == outputs(tmp_path / "whole")


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("part-*"))}
