"""Benchmark `prox refine` with the rule programmer end to end: docs/s, MB/s and peak memory.

Runs the real CLI as a subprocess on the example corpus repeated to 1x and 4x a base size
(copies made distinct), polling the resident memory of the whole process tree (the runner
and its workers). Memory must stay flat as the input grows.

    python bench/bench_refine.py [--base-copies 4] [--workers 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import print_table, write_copies, write_json


def tree_rss_kib(root: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/status") as status:
                total += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
            with open(f"/proc/{pid}/task/{pid}/children") as children:
                stack += [int(c) for c in children.read().split()]
        except (OSError, StopIteration):
            continue
    return total


def run(input_path: Path, output: Path, workers: int, engine: str = "local") -> tuple[float, int]:
    command = [
        sys.executable,
        "-m",
        "proxkit.cli",
        "refine",
        str(input_path),
        "-o",
        str(output),
        "--workers",
        str(workers),
        "--overwrite",
        "-q",
        "--doc-programmer",
        "rules",
        "--chunk-programmer",
        "rules",
        "--engine",
        engine,
    ]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss_kib(process.pid))
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(process.stderr.read().decode())
    return elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--base-copies", type=int, default=4, help="copies of the example corpus in the 1x input"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--ray",
        action="store_true",
        help="also run --engine ray (a local Ray cluster) on each input",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (1, 4):
            input_path = Path(tmp) / f"in_{scale}x.jsonl.gz"
            documents, megabytes = write_copies(input_path, args.base_copies * scale)
            runs = [("local", w) for w in args.workers] + ([("ray", 0)] if args.ray else [])
            for engine, workers in runs:
                seconds, peak_kib = run(
                    input_path, Path(tmp) / f"out_{scale}_{engine}_{workers}", workers, engine
                )
                rows.append(
                    {
                        "input": f"{scale}x",
                        "engine": engine,
                        "workers": workers or "cluster",
                        "documents": documents,
                        "MB": round(megabytes, 2),
                        "seconds": round(seconds, 2),
                        "docs/s": round(documents / seconds, 1),
                        "MB/s": round(megabytes / seconds, 2),
                        "peak RSS MiB (all processes)": round(peak_kib / 1024, 1),
                    }
                )
    print(f"prox refine, rule programmer, {os.cpu_count()} CPUs (times include start-up)")
    print_table(rows, 12)
    by = {(r["input"], r["engine"], r["workers"]): r for r in rows}
    for workers in args.workers:
        small, large = by[("1x", "local", workers)], by[("4x", "local", workers)]
        ratio = large["peak RSS MiB (all processes)"] / small["peak RSS MiB (all processes)"]
        print(f"workers={workers}: peak memory 4x/1x input = {ratio:.2f}")
    if args.ray:
        for scale in ("1x", "4x"):
            ray_seconds = by[(scale, "ray", "cluster")]["seconds"]
            best_local = min(by[(scale, "local", w)]["seconds"] for w in args.workers)
            print(f"{scale}: ray / best local time = {ray_seconds / best_local:.2f}")
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
