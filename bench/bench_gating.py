"""Quality-gated chunk refining: the chunk stage's model time with and without a keep-score band.

A tiny Llama (random weights, `proxkit.testing.TINY` unless `--shape small`) is fine-tuned
inside the benchmark on the rule programmer's programs for the example corpus (the real
`prox sft-data` and `prox train` code, `benchlib.train_rule_refiner`), so its keep scores and
chunk programs have a refiner's shape. It refines the example corpus once with both stages
and no band, and once with `--chunk-score-range 0,HI`, HI the median keep score of the
documents the doc stage keeps (the best half of each batch, `--doc-keep-fraction 0.5`), so
that the band sends half of them to the chunk stage. The
chunk stage runs on a second copy of the model, whose backend's busy seconds are the chunk
stage's model time alone. The summary's own estimate of the time saved is shown beside it.

    python bench/bench_gating.py --json bench/results/gating.json   # CPU, a few minutes
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import LLAMA2, example_records, print_table, train_rule_refiner, write_json


def refine(folder: Path, name: str, corpus: Path, models: tuple[Path, Path], **options: Any):
    from proxkit.config import RefineConfig
    from proxkit.pipeline.run import run

    config = RefineConfig(
        inputs=(str(corpus),),
        output=str(folder / name),
        doc_programmer=str(models[0]),
        chunk_programmer=str(models[1]),
        backend="transformers",  # the tiny shape: vLLM's CPU attention takes heads of 32 or more
        device="cpu",
        output_format="jsonl",
        **options,
    )
    started = time.perf_counter()
    stats = run(config, progress=False)
    return stats, time.perf_counter() - started, folder / name / "part-00000-00000.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=160)
    parser.add_argument("--shape", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--max-chunk-tokens", type=int, default=512)
    parser.add_argument("--max-doc-tokens", type=int, default=512)
    parser.add_argument("--chunk-max-new-tokens", type=int, default=48)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from proxkit.pipeline.stats import RunStats
    from proxkit.testing import SMALL, TINY

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        training = train_rule_refiner(
            folder, str(LLAMA2), TINY if args.shape == "tiny" else SMALL, args.max_chunk_tokens,
            args.max_doc_tokens, max_steps=args.train_steps, batch_size=8, learning_rate=3e-3,
        )  # fmt: skip
        doc_model = folder / "refiner"
        chunk_model = shutil.copytree(doc_model, folder / "chunk-refiner")
        corpus = folder / "corpus.jsonl"
        records = example_records()[: args.docs]
        corpus.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        models = (doc_model, chunk_model)
        common = {
            "max_chunk_tokens": args.max_chunk_tokens,
            "max_doc_tokens": args.max_doc_tokens,
            "chunk_max_new_tokens": args.chunk_max_new_tokens,
            "batch_size": 32,
            "doc_keep_fraction": 0.5,  # as the rules keep about half; a short training's
            # scores may all fall on one side of 0.5
        }
        _, _, scored = refine(folder, "scores", corpus, models, stages=("doc",), **common)
        kept = [
            json.loads(line)["metadata"]["prox"]["doc_info"]["keep_score"]
            for line in scored.open(encoding="utf-8")
            if json.loads(line)["text"]
        ]
        high = statistics.median(kept)
        rows, runs = [], {}
        for name, band in (("all kept documents", None), (f"band 0,{high:.4f}", (0.0, high))):
            stats, seconds, _ = refine(
                folder, name.split()[0], corpus, models, chunk_score_range=band, **common
            )
            chunk = stats.programmers["chunk"]
            model_seconds = stats.programmers["model"]["busy_seconds"]
            lines = dict(RunStats.summary_lines(stats))
            runs[name] = {
                "documents kept": stats.kept,
                "chunk stage documents": sum(
                    count
                    for outcome, count in stats.outcomes.items()
                    if outcome.startswith("chunk:") and not outcome.endswith("_score_band")
                ),
                "above the band": stats.outcomes.get("chunk:above_score_band", 0),
                "chunk prompts": chunk["prompts"],
                "chunk model seconds": round(model_seconds, 2),
                "run seconds": round(seconds, 2),
                "estimated saving": lines.get("chunk stage time saved (estimated)", "-"),
            }
            rows.append(
                {"run": name, **{k: v for k, v in runs[name].items() if k != "estimated saving"}}
            )
        base, gated = runs.values()
        ratio = gated["chunk model seconds"] / base["chunk model seconds"]
        print_table(rows, 22)
        print(
            f"\nchunk stage model time with the band: {ratio:.2f}x (documents to the chunk stage "
            f"{gated['chunk stage documents']} of {base['chunk stage documents']}); the summary "
            f"estimated: {gated['estimated saving']}; trained {training['steps']} steps, "
            f"validation loss {training['validation_loss_before']:.2f} -> "
            f"{training['validation_loss_after']:.2f}"
        )
        write_json(
            args.json, {"runs": runs, "chunk_model_time_ratio": round(ratio, 3), "band_high": high}
        )


if __name__ == "__main__":
    main()
