"""The run report (HTML) and `prox inspect`: counts, diffs checked against the stored programs,
a real headless Chromium opening the file, and a size that does not grow with the corpus."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from proxkit.config import RefineConfig
from proxkit.io.readers import Fields
from proxkit.pipeline.run import run
from proxkit.program.executor import Thresholds, execute_chunk
from proxkit.report.collect import collect, read_records
from proxkit.report.diff import document_view
from proxkit.report.html import render

pytest.importorskip("matplotlib")

PAGE = "Menu | Home\nA first real sentence of the article text.\nA second line&nbsp;with more words in it.\nShare this page"
STORED = [  # (doc program, chunk program): every outcome, and programs with errors
    (
        "keep_doc()",
        "remove_lines(line_start=0, line_end=0)\nremove_lines(line_start=3, line_end=3)",
    ),
    (
        "keep_doc()",
        'normalize(source_str="&nbsp;", target_str=" ")\nremove_lines(line_start=0, line_end=0)',
    ),
    ("drop_doc()", "keep_doc()"),
    ("keep_doc()", "keep_doc()"),
    ("keep_doc()", "remove_lines(line_start=0, line_end=0)\nremove_lines(line_start=1,"),
    ("keep_doc()", "remove_lines(line_start=0, line_end=9)"),
    (
        "keep_doc()",
        'normalize(source_str="first", target_str="1st")\nnormalize(source_str="1st real", target_str="genuine")',
    ),
]


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stored")
    source = folder / "in.jsonl"
    with source.open("w") as handle:
        for i in range(35):
            doc, chunk = STORED[i % len(STORED)]
            record = {
                "id": f"d{i:02d}",
                "text": PAGE + f"\nLine {i} with several words of text.",
                "url": f"https://site{i % 3}.example/p{i}",
            }
            record["metadata"] = {"doc_program": doc, "chunk_program": chunk}
            handle.write(json.dumps(record) + "\n")
    config = RefineConfig(
        inputs=(str(source),), output=str(folder / "out"), doc_programmer="stored",
        chunk_programmer="stored", workers=1, thresholds=Thresholds(short_doc_words=3),
    )  # fmt: skip
    run(config, progress=False)
    return folder / "out"


@pytest.fixture(scope="module")
def example_run(example_output) -> Path:
    return example_output


def check_view_against_program(record: dict, config: RefineConfig) -> None:
    view = document_view(record)
    program = record["metadata"].get("chunk_program")
    outcome = record["metadata"]["prox"].get("chunk", {}).get("outcome")
    if program is None or view.dropped_at == "doc":
        return
    result = execute_chunk(record["raw_content"], program, config.mode, config.thresholds)
    assert {line.number for line in view.lines if line.removed} == {
        n for start, end in result.removed_lines for n in range(start, end + 1)
    }
    if outcome in ("refined", "unchanged"):
        assert view.kept_text() == record["text"] == result.text
    normalized = {s.normalized_from for line in view.lines for s in line.segments}
    assert normalized - {None} <= {source for source, _, count in result.normalizations if count}


def test_report_of_the_example_corpus(example_run, tmp_path):
    stats = json.loads((example_run / "stats.json").read_text())
    data = collect(str(example_run), per_category=20)
    assert data.documents == stats["documents"] == 320
    assert data.categories["dropped"] == stats["dropped"]
    assert data.categories["refined"] == stats["refined"]
    assert sum(data.removed_per_doc.values()) == 320
    assert sum(c for _, c in data.removed_lines.items()) <= stats["lines_removed"]
    assert sum(data.normalizations.values()) == stats["normalizations"]
    assert sum(g[0] for g in data.groups.values()) == 320  # grouped by the domain of `url`
    assert data.groups and not any("/" in name for name in data.groups)
    config = RefineConfig.load(example_run / "config.yaml")
    by_id = {
        r["id"]: r
        for r in read_records(
            str(example_run),
            data.config and Fields(),
        )
    }
    assert 0 < len(data.sample) <= 60
    for view in data.sample:
        check_view_against_program(by_id[view.id], config)
    html = render(data)
    assert html.count('<details class="doc"') == len(data.sample)
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # nothing from the network
    assert f'<td>documents</td><td class="n">{320:,}</td>' in html


def test_every_stored_program_shows_as_its_diff(stored_run):
    config = RefineConfig.load(stored_run / "config.yaml")
    records = list(read_records(str(stored_run), Fields()))
    assert len(records) == 35
    for record in records:
        check_view_against_program(record, config)
    first = document_view(records[0])
    assert [line.removed for line in first.lines] == [True, False, False, True, False]
    normalized = document_view(records[1]).lines[2]
    assert [(s.text, s.normalized_from) for s in normalized.segments] == [
        ("A second line", None),
        (" ", "&nbsp;"),
        ("with more words in it.", None),
    ]
    overlapping = document_view(records[6])  # "1st real" spans a replacement: shown plain
    assert not overlapping.highlighted
    assert overlapping.kept_text() == records[6]["text"]
    data = collect(str(stored_run), per_category=50)
    assert data.categories == {"dropped": 10, "refined": 20, "unchanged": 5}
    assert sum(v.has_errors for v in data.sample) == 10  # a syntax error; a clipped range
    assert len(data.sample) == 35


def run_prox(*args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "COLUMNS": "200"}  # programs on one line in the panels
    return subprocess.run(
        [sys.executable, "-m", "proxkit.cli", *args],
        capture_output=True,
        text=True,
        env=environment,
    )


def test_inspect_shows_diffs_in_the_terminal(stored_run):
    result = run_prox("inspect", str(stored_run), "--id", "d00", "--no-pager")
    assert result.returncode == 0, result.stderr
    assert (
        "Menu | Home" in result.stdout and "remove_lines(line_start=0, line_end=0)" in result.stdout
    )
    dropped = run_prox("inspect", str(stored_run), "--dropped", "--limit", "2", "--no-pager")
    assert "dropped at doc level" in dropped.stdout and "dropped at chunk level" in dropped.stdout
    assert dropped.stdout.count("╭") == 2
    errors = run_prox("inspect", str(stored_run), "--errors", "--limit", "0", "--no-pager")
    assert errors.stdout.count("╭") == 10
    missing = run_prox("inspect", str(stored_run), "--id", "nope", "--no-pager")
    assert missing.returncode == 1 and "no document with id nope" in missing.stderr


def test_the_report_size_follows_the_sample_not_the_corpus(example_run, tmp_path):
    small = tmp_path / "small.html"
    result = run_prox("report", str(example_run), "--sample", "3", "--html", str(small))
    assert result.returncode == 0, result.stderr
    assert small.read_text().count('<details class="doc"') <= 9
    assert small.stat().st_size < 400_000


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian package 'chromium')")
def test_the_report_in_headless_chromium(stored_run, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    report = tmp_path / "report.html"
    assert run_prox("report", str(stored_run), "--html", str(report)).returncode == 0
    messages = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.on(
            "console", lambda m: messages.append(m.text) if m.type in ("error", "warning") else None
        )
        page.on("pageerror", lambda e: messages.append(str(e)))
        page.on(
            "request",
            lambda r: (
                messages.append(f"request {r.url}")
                if not r.url.startswith(("file:", "data:"))
                else None
            ),
        )
        page.goto(report.as_uri())
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        visible = lambda: page.locator("details.doc:not([hidden])")  # noqa: E731
        assert visible().count() == 35
        for name, expected in (
            ("dropped", 10),
            ("refined", 20),
            ("unchanged", 5),
            ("errors", 10),
            ("all", 35),
        ):
            page.click(f"button[data-filter={name}]")
            assert visible().count() == expected, name
            assert page.locator("#shown").text_content() == str(expected)
        page.click("button[data-filter=dropped]")
        assert set(visible().evaluate_all("ds => ds.map(d => d.dataset.category)")) == {"dropped"}
        browser.close()
    assert messages == []
    assert (tmp_path / "report.png").stat().st_size > 10_000


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory) -> Path:
    """Records as real crawls hold them: URLs Python's parser refuses, ids of every JSON type."""
    folder = tmp_path_factory.mktemp("odd")
    urls = [
        "http://[::1/x",
        "http://exa\uff03mple.com/page",
        "https://ｅｘａｍｐｌｅ．com/a",
        "no url",
    ]
    ids = [42, True, {"a": 1}, 1.5]
    with (folder / "in.jsonl").open("w") as handle:
        for record_id, url in zip(ids, urls):
            record = {"id": record_id, "text": PAGE, "url": url}
            record["metadata"] = {"doc_program": "keep_doc()", "chunk_program": "keep_doc()"}
            handle.write(json.dumps(record) + "\n")
    config = RefineConfig(
        inputs=(str(folder / "in.jsonl"),), output=str(folder / "out"), doc_programmer="stored",
        chunk_programmer="stored", workers=1,
    )  # fmt: skip
    run(config, progress=False)
    return folder / "out"


def test_the_report_reads_urls_python_refuses(odd_run, tmp_path):
    data = collect(str(odd_run))
    assert sorted(data.groups) == sorted(
        ["[::1", "exa\uff03mple.com", "ｅｘａｍｐｌｅ．com", "no url"]
    )
    result = run_prox("report", str(odd_run), "--html", str(tmp_path / "r.html"))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


def test_inspect_finds_ids_by_their_json_text(odd_run):
    for wanted in ("42", "true", '{"a": 1}', "1.5"):
        result = run_prox("inspect", str(odd_run), "--id", wanted, "--no-pager")
        assert result.returncode == 0, (wanted, result.stderr)
        assert result.stdout.count("╭") == 1
    python_text = run_prox("inspect", str(odd_run), "--id", "True", "--no-pager")
    assert python_text.returncode == 1 and "no document with id True" in python_text.stderr


def test_a_report_that_cannot_be_written_is_one_clear_line(odd_run, tmp_path):
    readonly = tmp_path / "readonly"
    shutil.copytree(odd_run, readonly)
    bound = subprocess.run(["mount", "--bind", str(readonly), str(readonly)], capture_output=True)
    if bound.returncode != 0:
        pytest.skip("a read-only output needs a read-only bind mount (root)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(readonly)], check=True)
        result = run_prox("report", str(readonly))
    finally:
        subprocess.run(["umount", str(readonly)], check=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert f"cannot write the report to {readonly / 'report.html'}" in line
    assert "Read-only file system" in line and "--html" in line
