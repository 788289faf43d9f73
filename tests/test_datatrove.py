"""proxkit in datatrove pipelines, and datatrove's filters in proxkit (extra `[datatrove]`):
a real LocalPipelineExecutor run gives the records `prox refine` gives; the `datatrove`
programmer decides exactly as datatrove's filters run directly; proxkit's native rules decide
as those filters do, family by family; a failing filter rejects one document, not the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("datatrove")
pytest.importorskip("spacy")

from datatrove.data import Document as DatatroveDocument
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)

from proxkit.io.readers import Document
from proxkit.programmers import make_programmer

from conftest import example_records, read_jsonl, write_jsonl

PIPELINE_SCRIPT = """
import sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from proxkit.datatrove import ProxRefiner

if __name__ == "__main__":
    inputs, output, excluded, logs, dropped = sys.argv[1:]
    exclusion = JsonlWriter(excluded) if dropped == "exclude" else None
    LocalPipelineExecutor(
        [JsonlReader(inputs), ProxRefiner("rules", "rules", dropped=dropped,
         exclusion_writer=exclusion), JsonlWriter(output)],
        tasks=2, logging_dir=logs,
    ).run()
"""


def _remembered(split):
    """`split` (a datatrove text splitter) answering each (text, language) once."""
    from functools import lru_cache

    remembered = lru_cache(maxsize=None)(lambda text, language: tuple(split(text, language)))
    return lambda text, language: list(remembered(text, language))


pytestmark = pytest.mark.xdist_group("datatrove")  # one worker: the cache below serves them all


@pytest.fixture(scope="module", autouse=True)
def _tokenize_each_text_once():
    """spaCy gives a text the same tokens every time, and every family here tokenizes the
    whole corpus again: tokens are kept per text (handed out as copies)."""
    from datatrove.pipeline.filters import (
        c4_filters,
        fineweb_quality_filter,
        gopher_quality_filter,
        gopher_repetition_filter,
    )

    with pytest.MonkeyPatch.context() as patch:
        for module in (gopher_quality_filter, gopher_repetition_filter, fineweb_quality_filter):
            patch.setattr(module, "split_into_words", _remembered(module.split_into_words))
        patch.setattr(
            c4_filters, "split_into_sentences", _remembered(c4_filters.split_into_sentences)
        )
        yield


def documents() -> list[Document]:
    return [Document(r["id"], r["text"], r, "corpus", i) for i, r in enumerate(example_records())]


def run_datatrove(tmp_path: Path, dropped: str) -> tuple[list[dict], list[dict]]:
    inputs = tmp_path / "in"
    inputs.mkdir(exist_ok=True)
    records = example_records()
    for part in range(2):  # two files: each of the two tasks gets one
        write_jsonl(inputs / f"part{part}.jsonl", records[part * 160 : (part + 1) * 160])
    script = tmp_path / "pipeline.py"
    script.write_text(PIPELINE_SCRIPT)
    output, excluded = tmp_path / f"out-{dropped}", tmp_path / f"excluded-{dropped}"
    subprocess.run(
        [sys.executable, str(script), str(inputs), str(output), str(excluded),
         str(tmp_path / f"logs-{dropped}"), dropped],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    read = lambda folder: [r for p in sorted(folder.glob("*.jsonl.gz")) for r in read_jsonl(p)]  # noqa: E731
    return read(output), read(excluded) if excluded.exists() else []


@pytest.fixture(scope="module")
def prox_refined(example_output) -> dict[str, dict]:
    """What `prox refine --doc-programmer rules --chunk-programmer rules` wrote, by id."""
    return {r["id"]: r for p in example_output.glob("part-*") for r in read_jsonl(p)}


def test_a_datatrove_pipeline_with_the_prox_step_writes_what_prox_refine_writes(
    tmp_path, prox_refined
):
    written, _ = run_datatrove(tmp_path, "keep")
    assert sorted(r["id"] for r in written) == sorted(prox_refined)
    for record in written:
        expected = prox_refined[record["id"]]
        metadata = record["metadata"]
        assert record.get("text", "") == expected["text"]
        assert metadata["raw_content"] == expected["raw_content"]
        for key in ("doc_program", "chunk_program", "prox"):
            assert metadata.get(key) == expected["metadata"].get(key), key


def test_dropped_documents_can_go_to_datatrove_s_exclusion_writer(tmp_path, prox_refined):
    kept, excluded = run_datatrove(tmp_path, "exclude")
    dropped = {i for i, r in prox_refined.items() if r["text"] == ""}
    assert {r["id"] for r in excluded} == dropped and dropped
    assert {r["id"] for r in kept} == set(prox_refined) - dropped
    logs = json.loads((tmp_path / "logs-exclude" / "stats.json").read_text())
    step = next(s for s in logs if "ProX" in s["name"])
    assert step["stats"]["dropped"]["total"] == len(dropped)


FINEWEB_SEQUENCE = [
    ("gopher_repetition", GopherRepetitionFilter),
    ("gopher_quality", GopherQualityFilter),
    ("c4_fineweb", lambda: C4QualityFilter(filter_no_terminal_punct=False)),
    ("fineweb", FineWebQualityFilter),
]


def datatrove_decisions(filters: list) -> list[tuple[str, str | None] | None]:
    """Per document: None when kept, else (filter, reason), running the filters directly."""
    built = [(name, make()) for name, make in filters]
    decisions = []
    for record in example_records():
        document = DatatroveDocument(text=record["text"], id=record["id"])
        for name, step in built:
            result = step.filter(document)
            keep, reason = result if isinstance(result, tuple) else (result, None)
            if not keep:
                decisions.append((name, reason))
                break
        else:
            decisions.append(None)
    return decisions


def test_the_datatrove_programmer_decides_as_datatrove_s_filters():
    written = make_programmer("datatrove").write("doc", documents())
    got = [
        None if w.program == "keep_doc()" else (w.info["filter"], w.info["reason"]) for w in written
    ]
    assert got == datatrove_decisions(FINEWEB_SEQUENCE)
    assert 0 < sum(d is None for d in got) < len(got)


def test_the_datatrove_programmer_removes_the_lines_c4_removes():
    text = "A sentence that ends well.\nMenu\nAnother good line of text here.\nPlease enable javascript now."
    (written,) = make_programmer("datatrove:c4").write("chunk", [Document("d", text, {}, "m", 1)])
    assert (
        written.program
        == "remove_lines(line_start=1, line_end=1)\nremove_lines(line_start=3, line_end=3)"
    )


@pytest.mark.parametrize(
    ("family", "filters"),
    [
        ("gopher_quality", [("q", GopherQualityFilter)]),
        ("gopher_repetition", [("r", GopherRepetitionFilter)]),
        ("c4", [("c4", C4QualityFilter)]),
        ("fineweb", [("f", FineWebQualityFilter)]),
        ("fineweb_pipeline", FINEWEB_SEQUENCE),
    ],
)
def test_native_rules_agree_with_datatrove(family, filters):
    """On the shipped corpus, every decision; bench/bench_rules.py also measures other pages."""
    written = make_programmer(f"rules:{family}").write("doc", documents())
    ours = [w.program == "keep_doc()" for w in written]
    theirs = [d is None for d in datatrove_decisions(filters)]
    assert ours == theirs


def test_a_filter_that_raises_rejects_that_document_only(tmp_path, monkeypatch):
    records = [{"id": str(i), "text": r["text"]} for i, r in enumerate(example_records()[:5])]
    records[2]["text"] = "EXPLODE " + records[2]["text"]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    sitecustomize = tmp_path / "hook" / "sitecustomize.py"
    sitecustomize.parent.mkdir()
    sitecustomize.write_text(
        "from datatrove.pipeline.filters import GopherRepetitionFilter\n"
        "original = GopherRepetitionFilter.filter\n"
        "def filter(self, doc):\n"
        "    if doc.text.startswith('EXPLODE'):\n"
        "        raise ZeroDivisionError('division by zero')\n"
        "    return original(self, doc)\n"
        "GopherRepetitionFilter.filter = filter\n"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(sitecustomize.parent)}
    result = subprocess.run(
        [sys.executable, "-m", "proxkit.cli", "refine", str(source), "-o", str(tmp_path / "out"),
         "--doc-programmer", "datatrove", "--stages", "doc", "--workers", "1", "-q"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (reject,) = read_jsonl(tmp_path / "out" / "rejects-00000.jsonl")
    assert reject["id"] == "2"
    assert (
        "datatrove filter gopher_repetition failed on document 2: ZeroDivisionError"
        in reject["reason"]
    )
    written = [r for p in (tmp_path / "out").glob("part-*") for r in read_jsonl(p)]
    assert sorted(r["id"] for r in written) == ["0", "1", "3", "4"]


def test_without_datatrove_the_error_names_the_extra(tmp_path):
    blocker = tmp_path / "datatrove"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('No module named datatrove')")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello"}])
    result = subprocess.run(
        [sys.executable, "-m", "proxkit.cli", "refine", str(source), "-o", str(tmp_path / "o"),
         "--doc-programmer", "datatrove", "--stages", "doc"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "pip install 'proxkit[datatrove]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    step = subprocess.run(
        [sys.executable, "-c", "import proxkit.datatrove"], capture_output=True, text=True, env=env
    )
    assert "proxkit.datatrove needs datatrove: pip install 'proxkit[datatrove]'" in step.stderr
