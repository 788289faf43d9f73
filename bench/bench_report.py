"""Benchmark `prox report` on large runs: time to build, file size, and time for a headless
Chromium to open the file (when Chromium and Playwright are installed).

The example corpus is refined once with the rule programmer; its output records are then
copied with distinct ids into shards of a run of --docs documents, which the report reads like
any run output. The report embeds a sample, so its size must not grow with the run.

    python bench/bench_report.py [--docs 1000 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import CORPUS, print_table, write_json


def make_run(base: Path, folder: Path, documents: int) -> None:
    with gzip.open(base / "part-00000-00000.jsonl.gz", "rt") as handle:
        records = [json.loads(line) for line in handle]
    folder.mkdir(parents=True)
    for name in ("config.yaml", "stats.json"):
        shutil.copy(base / name, folder / name)
    shard, written = 0, 0
    while written < documents:
        with gzip.open(folder / f"part-{shard:05d}.jsonl.gz", "wt", compresslevel=1) as out:
            for record in records[: documents - written]:
                out.write(json.dumps({**record, "id": f"{record['id']}#{shard}"}) + "\n")
                written += 1
        shard += 1


def open_seconds(path: Path) -> float | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if chromium is None:
        return None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        start = time.perf_counter()
        page.goto(path.as_uri(), wait_until="load")
        seconds = time.perf_counter() - start
        browser.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    prox = [sys.executable, "-m", "proxkit.cli"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            [*prox, "refine", str(CORPUS), "-o", str(base), "--doc-programmer", "rules",
             "--chunk-programmer", "rules", "--quiet"],
            check=True, capture_output=True,
        )  # fmt: skip
        for documents in args.docs:
            run = Path(tmp) / f"run{documents}"
            make_run(base, run, documents)
            start = time.perf_counter()
            subprocess.run([*prox, "report", str(run)], check=True, capture_output=True)
            build = time.perf_counter() - start
            report = run / "report.html"
            opened = open_seconds(report)
            rows.append(
                {
                    "documents": documents,
                    "build s": round(build, 1),
                    "docs/s": round(documents / build),
                    "report MB": round(report.stat().st_size / 1e6, 2),
                    "open in Chromium s": None if opened is None else round(opened, 2),
                }
            )
    print_table(rows, 20)
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
