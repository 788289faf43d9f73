"""Benchmark `prox verify` (the auditor) against the `prox refine` run it checks.

For each output format, the real CLI refines the example corpus in distinct copies with the rule
programmer, then `prox verify` re-reads the inputs and every shard, re-executes every stored
program and compares every record. Both are timed as whole processes (start-up included, one
run each); the ratio says what an audit costs beside the run. Also reported: the problems
verify found (0 expected) and the records it checked.

    python bench/bench_verify.py [--copies 8] [--workers 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import print_table, write_copies, write_json

RULES = ("--doc-programmer", "rules", "--chunk-programmer", "rules")


def timed(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "proxkit.cli", *args], capture_output=True, text=True
    )
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--copies", type=int, default=8, help="copies of the example corpus")
    parser.add_argument("--workers", type=int, default=1, help="prox refine --workers")
    parser.add_argument("--formats", nargs="+", default=["jsonl.gz", "parquet"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl.gz"
        documents, megabytes = write_copies(corpus, args.copies)
        for fmt in args.formats:
            output = Path(tmp) / f"out-{fmt}"
            refine_s, refined = timed(
                "refine", str(corpus), "-o", str(output), *RULES, "--output-format", fmt,
                "--workers", str(args.workers), "-q",
            )  # fmt: skip
            if refined.returncode != 0:
                raise RuntimeError(refined.stderr)
            verify_s, verified = timed("verify", str(output))
            problems = sum(line.startswith("problem:") for line in verified.stderr.splitlines())
            checked = re.search(r"([\d,]+) output records", verified.stdout)
            rows.append(
                {
                    "format": fmt,
                    "documents": documents,
                    "MB": round(megabytes, 2),
                    "refine s": round(refine_s, 2),
                    "verify s": round(verify_s, 2),
                    "verify/refine": round(verify_s / refine_s, 2),
                    "records checked": checked.group(1) if checked else "?",
                    "problems": problems,
                }
            )
    print(
        f"prox refine (rules, --workers {args.workers}) and prox verify, {os.cpu_count()} CPUs, "
        "one run each, times include start-up"
    )
    print_table(rows, 14)
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
