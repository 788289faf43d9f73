"""`prox refine` end to end, as a user runs it: the shipped corpus, a real subprocess."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import EXAMPLE_CORPUS, read_jsonl, write_jsonl

CORPUS = EXAMPLE_CORPUS
RULES = ("--doc-programmer", "rules", "--chunk-programmer", "rules")


def prox(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "proxkit.cli", *args], capture_output=True, text=True, timeout=300
    )


def records(folder: Path) -> list[dict]:
    return [r for shard in sorted(folder.glob("part-*")) for r in read_jsonl(shard)]


@pytest.fixture(scope="module")
def refined(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("refine") / "out"
    result = prox(
        "refine",
        *RULES,
        str(CORPUS),
        "-o",
        str(out),
        "--limit",
        "40",
        "--workers",
        "2",
        "--batch-size",
        "16",
        "-q",
    )
    assert result.returncode == 0, result.stderr
    assert "documents in" in result.stdout and "stats.json" in result.stdout
    return out


def test_exact_counts_on_a_fixed_input(refined):
    stats = json.loads((refined / "stats.json").read_text())
    assert {
        k: stats[k]
        for k in (
            "documents",
            "kept",
            "dropped",
            "refined",
            "rejected",
            "lines_removed",
            "normalizations",
        )
    } == {
        "documents": 40,
        "kept": 7,
        "dropped": 33,
        "refined": 7,
        "rejected": 0,
        "lines_removed": 543,
        "normalizations": 108,
    }
    # Gopher's rules as datatrove runs them (tests/test_datatrove.py checks every decision):
    # the C-API reference pages at the start are mostly code, too few tokens hold a letter.
    assert stats["drop_reasons"] == {
        "doc:gopher_alphabetic_words": 28,
        "doc:gopher_duplicate_5grams": 3,
        "doc:gopher_duplicate_lines": 2,
    }
    assert (stats["chars_before"], stats["chars_after"]) == (323441, 44747)


def test_every_input_record_is_in_the_output_in_order(refined):
    with gzip.open(CORPUS, "rt") as handle:
        inputs = [json.loads(line) for _, line in zip(range(40), handle)]
    out = records(refined)
    assert [r["id"] for r in out] == [r["id"] for r in inputs]
    for original, record in zip(inputs, out):
        assert record["raw_content"] == original["text"]
        assert record["url"] == original["url"]  # other fields pass through
        if record["metadata"]["doc_program"] == "drop_doc()":
            assert record["text"] == ""
            assert record["metadata"]["prox"]["doc_info"]["rules"]


def test_execute_on_the_output_reproduces_it(refined, tmp_path):
    result = prox("execute", str(refined), "-o", str(tmp_path / "again"), "-q")
    assert result.returncode == 0, result.stderr
    assert records(tmp_path / "again") == records(refined)


def test_existing_output_is_refused_unless_overwrite(refined):
    result = prox("refine", *RULES, str(CORPUS), "-o", str(refined), "--limit", "5", "-q")
    assert result.returncode == 2 and "--overwrite" in result.stderr


def test_one_and_two_workers_write_the_same_bytes(tmp_path):
    for workers in ("1", "2"):
        result = prox(
            "refine",
            *RULES,
            str(CORPUS),
            "-o",
            str(tmp_path / workers),
            "--limit",
            "60",
            "--workers",
            workers,
            "--batch-size",
            "8",
            "-q",
        )
        assert result.returncode == 0, result.stderr
    one, two = (
        gzip.decompress((tmp_path / w / "part-00000-00000.jsonl.gz").read_bytes())
        for w in ("1", "2")
    )
    assert one == two


def test_yaml_config_with_flags_on_top(tmp_path):
    config = tmp_path / "prox.yaml"
    config.write_text(
        "doc_programmer: rules:gopher_quality\n"
        "chunk_programmer: rules:c4_lines\n"
        "stages: [chunk]\n"
        "thresholds:\n  short_doc_words: 5\n"
        "output_format: parquet\n"
        "limit: 100\n"
    )
    result = prox(
        "refine",
        str(CORPUS),
        "-o",
        str(tmp_path / "out"),
        "--config",
        str(config),
        "--limit",
        "10",
        "-q",
    )
    assert result.returncode == 0, result.stderr
    table = pq.read_table(tmp_path / "out" / "part-00000-00000.parquet").to_pylist()
    assert len(table) == 10  # the flag overrides the file's limit
    metadata = [json.loads(r["metadata"]) for r in table]
    assert all("doc_program" not in m and "chunk_program" in m for m in metadata)  # doc stage off
    saved = (tmp_path / "out" / "config.yaml").read_text()
    assert "short_doc_words: 5" in saved and "rules:c4_lines" in saved


def test_bad_inputs_are_reported_and_the_run_goes_on(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_jsonl(
        inputs / "a.jsonl", [{"id": "ok", "text": "A short but fine document."}, {"id": "bad"}]
    )
    payload = gzip.compress(b'{"id": "x", "text": "y"}\n' * 5000)
    (inputs / "b.jsonl.gz").write_bytes(payload[: len(payload) // 3])
    result = prox("refine", *RULES, str(inputs), "-o", str(tmp_path / "out"), "-q")
    assert result.returncode == 0, result.stderr
    assert "b.jsonl.gz: file unreadable after line" in result.stderr
    assert "a.jsonl:2: record has no 'text' field" in result.stderr
    rejects = [
        r for path in sorted((tmp_path / "out").glob("rejects-*.jsonl")) for r in read_jsonl(path)
    ]
    assert [(Path(r["source"]).name, r["position"]) for r in rejects] == [
        ("a.jsonl", 2),
        ("b.jsonl.gz", None),
    ]


def test_unusable_inputs_and_options_fail_clearly(tmp_path):
    missing = prox("refine", str(tmp_path / "nothing.jsonl"), "-o", str(tmp_path / "o"))
    assert missing.returncode == 2 and "no input files match" in missing.stderr
    unknown = prox("refine", str(CORPUS), "-o", str(tmp_path / "o2"), "--doc-programmer", "gpt-9")
    assert unknown.returncode == 2 and "unknown programmer 'gpt-9'" in unknown.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text("treshold: 3\n")
    bad_config = prox("refine", str(CORPUS), "-o", str(tmp_path / "o3"), "--config", str(typo))
    assert (
        bad_config.returncode == 2 and "unknown configuration keys: treshold" in bad_config.stderr
    )
    (tmp_path / "only_bad.jsonl").write_text("not json\n")
    nothing_read = prox(
        "refine", *RULES, str(tmp_path / "only_bad.jsonl"), "-o", str(tmp_path / "o4"), "-q"
    )
    assert nothing_read.returncode == 1 and "no document could be read" in nothing_read.stderr
    offline = prox("refine", str(CORPUS), "-o", str(tmp_path / "o5"), "-q")  # the default models
    assert offline.returncode == 2
    assert "could not load model 'gair-prox/web-doc-refining-lm'" in offline.stderr
    assert "--doc-programmer rules" in offline.stderr


def test_token_counts_with_a_tokenizer(tmp_path, llama2_dir):
    from tokenizers import Tokenizer

    result = prox(
        "refine",
        *RULES,
        str(CORPUS),
        "-o",
        str(tmp_path / "out"),
        "--limit",
        "12",
        "-q",
        "--tokenizer",
        str(llama2_dir),
    )
    assert result.returncode == 0, result.stderr
    assert "tokens before -> after" in result.stdout
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    tokenizer = Tokenizer.from_file(str(llama2_dir / "tokenizer.json"))
    out = records(tmp_path / "out")
    count = lambda texts: sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in texts)  # noqa: E731
    assert stats["tokens_before"] == count(r["raw_content"] for r in out)
    assert stats["tokens_after"] == count(r["text"] for r in out)
