"""Benchmark the core on the same documents in one run: chunker and executor throughput.

Chunker, against (a) the reference's way (the transformers tokenizer called once per line) and
(b) the raw speed of the Rust tokenizer's batch encode over the same numbered lines (the
limit). Executor, strict and reference modes, on one core. Record cleaning (what no writer can
carry is replaced on reading, `proxkit.io.encodable`), against refining the same records with
the rule programmer, both stages, on one core: the share the check adds to a rules run.

    python bench/bench_core.py [--copies 4] [--tokenizer ../shared/tokenizers/llama2] [--json out.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

from benchlib import LLAMA2, REPO, write_json


def best_of(repeats: int, function: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def load_texts(path: Path, copies: int) -> list[str]:
    """The corpus `copies` times; every non-empty line of copy k > 0 gets a marker word, so
    copies are distinct documents (no line repeats across copies that did not repeat before)."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    out = list(texts)
    for k in range(1, copies):
        out += [
            "\n".join(f"{line} copy{k}" if line else line for line in t.split("\n")) for t in texts
        ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, default=REPO / "examples" / "web_docs.jsonl.gz")
    parser.add_argument("--copies", type=int, default=4, help="repeat the corpus this many times")
    parser.add_argument("--tokenizer", default=str(LLAMA2))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="documents per chunker call")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from proxkit.chunking import Chunker, number_lines
    from proxkit.program import execute_chunk
    from proxkit.tokenizer import load_tokenizer

    texts = load_texts(args.input, args.copies)
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    tokenizer = load_tokenizer(args.tokenizer).backend
    reference_tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    numbered = [line for text in texts for line in number_lines(text)]

    def proxkit_chunker() -> None:
        chunker = Chunker(tokenizer)  # fresh per repeat: its line cache starts empty
        for start in range(0, len(texts), args.batch):
            chunker(texts[start : start + args.batch])

    def naive_chunker() -> None:  # the reference: one tokenizer.encode per numbered line
        for text in texts:
            total = 0
            for line in number_lines(text):
                count = len(reference_tokenizer.encode(line))
                total = count if total + count > 1500 else total + count

    def raw_batch_encode() -> None:
        tokenizer.encode_batch_fast(numbered, add_special_tokens=True)

    programs = [
        "remove_lines(line_start=0, line_end=24)\n"
        'normalize(source_str="¶", target_str="")\n'
        f"remove_lines(line_start={max(0, len(t.split(chr(10))) - 20)}, line_end={len(t.split(chr(10))) - 1})"
        for t in texts
    ]

    def executor(mode: str) -> Callable[[], None]:
        def run() -> None:
            for text, program in zip(texts, programs):
                execute_chunk(text, program, mode=mode)  # type: ignore[arg-type]

        return run

    from proxkit.io.encodable import clean_record
    from proxkit.io.readers import Document
    from proxkit.pipeline.batch import BatchProcessor
    from proxkit.programmers.rules import RulesProgrammer

    records = [
        {"id": str(i), "text": t, "url": f"https://example.org/{i}"} for i, t in enumerate(texts)
    ]
    documents = [Document(r["id"], r["text"], r, "bench", i) for i, r in enumerate(records)]
    rules = BatchProcessor(RulesProgrammer(), RulesProgrammer())

    def cleaning() -> None:
        for record in records:
            clean_record(record)

    def rules_refine() -> None:
        for start in range(0, len(documents), args.batch):
            rules(documents[start : start + args.batch])

    timings = {
        "record cleaning (1 core)": best_of(args.repeats, cleaning),
        "rules, both stages (1 core)": best_of(1, rules_refine),
        "chunker (proxkit, batched)": best_of(args.repeats, proxkit_chunker),
        "chunker (a: reference, 1 call per line)": best_of(1, naive_chunker),
        "tokenizer batch encode (b: the limit)": best_of(args.repeats, raw_batch_encode),
        "executor strict (1 core)": best_of(args.repeats, executor("strict")),
        "executor reference (1 core)": best_of(args.repeats, executor("reference")),
    }
    rows = {
        name: {
            "seconds": round(s, 4),
            "MB/s": round(megabytes / s, 2),
            "docs/s": round(len(texts) / s, 1),
        }
        for name, s in timings.items()
    }
    ours = timings["chunker (proxkit, batched)"]
    ratios = {
        "chunker speedup vs (a) reference": round(
            timings["chunker (a: reference, 1 call per line)"] / ours, 2
        ),
        "chunker fraction of (b) raw encode": round(
            timings["tokenizer batch encode (b: the limit)"] / ours, 3
        ),
        "record cleaning / rules run": round(
            timings["record cleaning (1 core)"] / timings["rules, both stages (1 core)"], 4
        ),
    }
    width = max(map(len, rows))
    distinct = len({line for text in texts for line in text.split("\n")})
    print(
        f"{len(texts)} documents, {megabytes:.2f} MB, {len(numbered):,} lines "
        f"({distinct / len(numbered):.0%} distinct contents), {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}"
    )
    print(f"{'':{width}}  {'seconds':>9}  {'MB/s':>9}  {'docs/s':>10}")
    for name, row in rows.items():
        print(f"{name:{width}}  {row['seconds']:9.3f}  {row['MB/s']:9.2f}  {row['docs/s']:10.1f}")
    for name, value in ratios.items():
        print(f"{name}: {value}")
    write_json(
        args.json, {"documents": len(texts), "megabytes": megabytes, "rows": rows, "ratios": ratios}
    )


if __name__ == "__main__":
    main()
