"""The engines that run a refining model, side by side in one run: the same trained model,
documents, batches and options (both stages, the grammar on, one-pass doc scoring).

- `transformers`: proxkit's decode loop over transformers (`programmers/hf.py`);
- `vllm`: vLLM's offline engine in this process (`programmers/vllm.py`; on CPU, vLLM's CPU
  build);
- `vllm-serve`: a `vllm serve` process on this machine, through `--backend openai`.
Each engine refines the same batches through `BatchProcessor` (what `prox refine` runs per
batch). Reported per engine: start-up seconds (loading, compiling, warming up; apart from
the work), work seconds, raw tokens/s (Llama-2 tokens of the input documents per work second),
generated tokens/s, the share of documents whose programs equal the transformers engine's,
and failures, rejects and grammar corrections. The model is a small-shape Llama fine-tuned
on the rule programmer's programs (`benchlib.train_rule_refiner`), or `--model`.

    python bench/bench_engines.py [--engines transformers vllm vllm-serve] [--documents 96]
        [--model FOLDER] [--json bench/results/engines.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_serve import start_server
from benchlib import LLAMA2, distinct_copies, example_records, print_table, write_json


def measure(name: str, config, documents, raw_tokens: int, batch_size: int) -> dict[str, Any]:
    from proxkit.pipeline.batch import build_processor, close_programmers, programmer_stats

    server = None
    start = time.perf_counter()
    if name == "vllm-serve":
        server, api_base = start_server(config.doc_programmer, config.kv_cache_gib)
        config = dataclasses.replace(config, backend="openai", api_base=api_base)
    else:
        config = dataclasses.replace(config, backend=name)
    processor = build_processor(config)
    startup = time.perf_counter() - start
    outputs = []
    try:
        start = time.perf_counter()
        for first in range(0, len(documents), batch_size):
            outputs.append(processor(documents[first : first + batch_size]))
        work = time.perf_counter() - start
        stats = programmer_stats(processor)
    finally:
        close_programmers(processor)
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    records = [r for output in outputs for r in output.records]
    generated = sum(stats.get(s, {}).get("generated_tokens", 0) for s in ("doc", "chunk"))
    failed = sum(output.stats.programmer_failures for output in outputs)
    reasons = sorted(
        {
            info["failed"]
            for r in records
            for info in (
                r["metadata"].get("prox", {}).get(f"{s}_info", {}) for s in ("doc", "chunk")
            )
            if "failed" in info
        }
    )
    return {
        "engine": name,
        "startup s": round(startup, 1),
        "work s": round(work, 1),
        "raw tok/s": round(raw_tokens / work),
        "generated tok/s": round(generated / work, 1),
        "programs": [
            (r["metadata"].get("doc_program"), r["metadata"].get("chunk_program")) for r in records
        ],
        "failed documents": failed,
        "rejects": sum(len(output.rejects) for output in outputs),
        "grammar corrections": stats.get("model", {}).get("steps_corrected_by_grammar", "-"),
        "why failed": reasons,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", nargs="+", default=["transformers", "vllm", "vllm-serve"])
    parser.add_argument("--documents", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", help="a refining model folder (default: train one)")
    parser.add_argument("--keep-model", type=Path, help="where to keep the model it trains")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--max-chunk-tokens", type=int, default=512)
    parser.add_argument("--max-doc-tokens", type=int, default=1024)
    parser.add_argument("--kv-cache-gib", type=int, default=2)
    parser.add_argument("--max-concurrency", type=int, default=32, help="vllm-serve's requests")
    parser.add_argument("--tokenizer", default=str(LLAMA2))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from proxkit.config import RefineConfig
    from proxkit.io.readers import Document
    from proxkit.testing import SMALL
    from proxkit.tokenizer import load_tokenizer

    records = distinct_copies(example_records(), 1 + args.documents // 320)[: args.documents]
    documents = [Document(r["id"], r["text"], r, "corpus", i) for i, r in enumerate(records)]
    tokenizer = load_tokenizer(args.tokenizer).backend
    raw_tokens = sum(
        len(e)
        for e in tokenizer.encode_batch_fast([d.text for d in documents], add_special_tokens=False)
    )
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from benchlib import train_rule_refiner

            start = time.perf_counter()
            train_rule_refiner(
                Path(tmp), args.tokenizer, SMALL, args.max_chunk_tokens, args.max_doc_tokens,
                max_steps=args.train_steps, batch_size=8, learning_rate=2e-3,
                warmup_fraction=0.05,
            )  # fmt: skip
            model = str(Path(tmp) / "refiner")
            print(f"trained the small-shape refiner in {time.perf_counter() - start:.0f} s")
            if args.keep_model:
                shutil.copytree(model, args.keep_model, dirs_exist_ok=True)
        config = RefineConfig(
            doc_programmer=model,
            chunk_programmer=model,
            max_chunk_tokens=args.max_chunk_tokens,
            max_doc_tokens=args.max_doc_tokens,
            chunk_max_new_tokens=64,
            doc_keep_fraction=0.6,
            dtype="float32",
            kv_cache_gib=args.kv_cache_gib,
            max_concurrency=args.max_concurrency,
        )
        rows = [
            measure(name, config, documents, raw_tokens, args.batch_size) for name in args.engines
        ]
    reference = rows[0]["programs"]
    for row in rows:
        same = sum(a == b for a, b in zip(row.pop("programs"), reference))
        row["same programs as " + rows[0]["engine"]] = f"{same}/{len(reference)}"
    print(f"{len(documents)} documents, {raw_tokens:,} raw tokens, {os.cpu_count()} cores")
    print_table([{k: v for k, v in row.items() if k != "why failed"} for row in rows], 22)
    for row in rows:
        for reason in row["why failed"]:
            print(f"{row['engine']}: a document failed: {reason}")
    write_json(args.json, {"documents": len(documents), "raw_tokens": raw_tokens, "runs": rows})


if __name__ == "__main__":
    main()
