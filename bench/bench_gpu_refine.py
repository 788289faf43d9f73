"""End-to-end throughput of `prox refine` with a refining model, both stages, on a GPU.

1. Corpus: the shipped example corpus (320 documentation pages, 0.77M tokens) in distinct
   copies (every line of copy k ends with " k", so no prompt repeats and the program cache
   cannot help), cut at `--raw-tokens` tokens of raw text (Llama-2 tokenizer): 20M tokens are
   26 copies.
2. Model: a Llama of the released 0.3B refining LM's shape (`--shape small` on a CPU), from
   random weights, fine-tuned inside the benchmark for `--train-steps` steps through the real
   `prox sft-data` and `prox train` code, on the programs the rule programmer writes for the
   example corpus (doc programs, and chunk programs cut chunk by chunk), so its programs look
   like a refiner's, not like a random model's. Doc decisions keep the share of documents the
   rules keep (`--doc-keep-fraction`, by default measured on the teacher's labels), so both
   stages carry a refiner's load however well the short training went.
3. `prox refine` (the real runner: reading, overlap, writing) over the corpus, once per
   `--generation` path, same model, same corpus, one run each.

Reported per path, from the run's own counters (`stats.json`):
- raw input tokens/s per device, and device-hours per billion raw tokens, against the paper's
  192 A100-hours per 60B tokens with its 0.7B refiner, scaled to this model's parameters;
- MFU over both stages: prefill, decode and LM-head FLOPs of the tokens the model really
  processed (prompts sent, tokens generated, attention over their contexts), against a
  same-run matmul peak (bf16 on a GPU, fp32 on a CPU);
- the share of wall time the model was busy (any model call in flight), and on NVIDIA GPUs the
  device's own utilization sampled through NVML;
- the output-length distribution per stage (tokens, end of sequence excluded).

    python bench/bench_gpu_refine.py --json bench/results/gpu_refine.json          # GPU, 0.3B
    python bench/bench_gpu_refine.py --shape small --raw-tokens 150000 --max-chunk-tokens 256 \
        --max-doc-tokens 512 --train-steps 300 --train-batch-size 8 --learning-rate 2e-3  # CPU
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_lm import matmul_peak
from benchlib import LLAMA2, build_corpus, print_table, train_rule_refiner
from benchlib import write_json as save_json

PAPER_A100_HOURS, PAPER_TOKENS, PAPER_PARAMETERS = 192, 60e9, 0.7e9


def model_flops(shape: dict[str, int], vocab: int, numbers: dict[str, Any]) -> float:
    """Matrix FLOPs of one stage's model work: linear layers on every prompt and generated
    token, causal attention over prompts (L^2/2 pairs) and over each generated token's
    context, and the LM head on each prompt's last position and each generated token."""
    h, f, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = shape["num_key_value_heads"] * h // shape["num_attention_heads"]
    linear = 2 * layers * (2 * h * h + 2 * h * kv + 3 * h * f)
    tokens = numbers.get("prompt_tokens", 0) + numbers.get("generated_tokens", 0)
    attention = (
        4
        * h
        * layers
        * (numbers.get("prompt_tokens_squared", 0) / 2 + numbers.get("generated_context", 0))
    )
    head = 2 * h * vocab * (numbers.get("model_prompts", 0) + numbers.get("generated_tokens", 0))
    return linear * tokens + attention + head


def percentile(lengths: dict[str, int], share: float) -> int:
    total = sum(lengths.values())
    seen = 0
    for length, count in sorted((int(k), v) for k, v in lengths.items()):
        seen += count
        if seen >= share * total:
            return length
    return 0


class Utilization:
    """The GPU's own busy percentage (NVML), sampled every 100 ms while a run lasts."""

    def __init__(self, device_index: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        self.samples: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.wait(0.1):
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)

    def mean(self) -> float | None:
        self.stop.set()
        self.thread.join()
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


def teacher_profile(sft: Path) -> dict[str, Any]:
    """What the refiner is taught: the kept share of doc labels and chunk answer lengths."""
    kept = dropped = 0
    lengths: dict[str, int] = {}
    with (sft / "train.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            example = json.loads(line)
            if example["stage"] == "doc":
                kept += "keep_doc" in example["completion"]
                dropped += "drop_doc" in example["completion"]
            else:
                n = str(len(example["completion_ids"]) - 1)  # end of turn excluded
                lengths[n] = lengths.get(n, 0) + 1
    return {
        "kept_fraction": kept / max(kept + dropped, 1),
        "chunk_answer_tokens": {q: percentile(lengths, v) for q, v in (("p50", 0.5), ("p90", 0.9))}
        | {"max": max((int(k) for k in lengths), default=0)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=["0.3b", "small"], default="0.3b")
    parser.add_argument("--raw-tokens", type=float, default=20e6)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--train-batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--generation", nargs="+", default=["continuous", "static"])
    parser.add_argument("--batch-size", type=int, default=512, help="documents per batch")
    parser.add_argument("--batch-tokens", type=int, default=65536)
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--max-chunk-tokens", type=int, default=1500)
    parser.add_argument("--max-doc-tokens", type=int, default=2000)
    parser.add_argument(
        "--doc-keep-fraction",
        type=float,
        help="keep this share of each batch at doc level (default: the rules' share)",
    )
    parser.add_argument("--tokenizer", default=str(LLAMA2))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch
    import transformers

    from proxkit.config import RefineConfig
    from proxkit.pipeline.run import run
    from proxkit.testing import REFINING_LM_0_3B, SMALL
    from proxkit.tokenizer import load_tokenizer

    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    shape = REFINING_LM_0_3B if args.shape == "0.3b" else SMALL
    peak = matmul_peak(torch, device, torch.bfloat16 if on_gpu else torch.float32) * 1e9
    tokenizer = load_tokenizer(args.tokenizer)
    hardware = torch.cuda.get_device_name() if on_gpu else f"cpu ({os.cpu_count()} cores)"
    results: dict[str, Any] = {
        "device": hardware,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "shape": args.shape,
        "matmul_peak_tflops": round(peak / 1e12, 2),
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        documents, raw_tokens = build_corpus(
            folder / "corpus.jsonl", int(args.raw_tokens), tokenizer.backend
        )
        start = time.perf_counter()
        training = train_rule_refiner(
            folder, args.tokenizer, shape, args.max_chunk_tokens, args.max_doc_tokens,
            max_steps=args.train_steps, batch_size=args.train_batch_size,
            learning_rate=args.learning_rate, warmup_fraction=0.05,
            logging_steps=max(args.train_steps // 5, 1),
        )  # fmt: skip
        teacher = teacher_profile(folder / "sft")
        keep_fraction = args.doc_keep_fraction or round(teacher["kept_fraction"], 3)
        results |= {
            "documents": documents,
            "raw_tokens": raw_tokens,
            "train_seconds": round(time.perf_counter() - start, 1),
            "validation_loss": [
                training["validation_loss_before"],
                training["validation_loss_after"],
            ],
            "teacher": teacher,
            "doc_keep_fraction": keep_fraction,
        }
        import safetensors.torch

        weights = safetensors.torch.load_file(str(folder / "refiner" / "model.safetensors"))
        parameters = sum(t.numel() for t in weights.values())
        del weights
        for generation in args.generation:
            config = RefineConfig(
                inputs=(str(folder / "corpus.jsonl"),),
                output=str(folder / f"out-{generation}"),
                doc_programmer=str(folder / "refiner"),
                chunk_programmer=str(folder / "refiner"),
                generation=generation,
                batch_size=args.batch_size,
                batch_tokens=args.batch_tokens,
                max_batch_size=args.max_batch_size,
                max_chunk_tokens=args.max_chunk_tokens,
                max_doc_tokens=args.max_doc_tokens,
                doc_keep_fraction=keep_fraction,
                output_format="jsonl",
            )
            utilization = (
                Utilization(torch.cuda.current_device()) if on_gpu and _has_nvml() else None
            )
            start = time.perf_counter()
            stats = run(config, progress=True)
            wall = time.perf_counter() - start
            gpu_busy = utilization.mean() if utilization else None
            stages = stats.programmers
            flops = sum(model_flops(shape, 32000, stages.get(s, {})) for s in ("doc", "chunk"))
            per_second = raw_tokens / wall
            hours_per_billion = 1e9 / per_second / 3600
            paper = PAPER_A100_HOURS / (PAPER_TOKENS / 1e9) * parameters / PAPER_PARAMETERS
            lengths = {}
            for stage in ("doc", "chunk"):
                counts = stages.get(stage, {}).get("output_tokens")
                if counts:
                    outputs = sum(counts.values())
                    lengths[stage] = {
                        "outputs": outputs,
                        "p50": percentile(counts, 0.5),
                        "p90": percentile(counts, 0.9),
                        "p99": percentile(counts, 0.99),
                        "max": max(int(k) for k in counts),
                        "at_token_limit": stages[stage]["outputs_at_token_limit"] / outputs,
                        "redone_under_grammar": stages[stage]["regenerated_under_grammar"],
                        "histogram": counts,
                    }
            results["runs"][generation] = {
                "wall_seconds": round(wall, 1),
                "raw_tokens_per_second": round(per_second),
                "device_hours_per_billion_raw_tokens": round(hours_per_billion, 3),
                "paper_a100_hours_per_billion_scaled": round(paper, 3),
                "ratio_to_paper": round(hours_per_billion / paper, 3),
                "mfu": round(flops / wall / peak, 4),
                "model_busy_share": round(stages["model"]["busy_seconds"] / wall, 3),
                "gpu_utilization_nvml": round(gpu_busy, 3) if gpu_busy is not None else None,
                "kept_fraction": round(stats.kept / stats.documents, 4),
                "refined_fraction": round(stats.refined / stats.documents, 4),
                "doc_prompt_tokens": stages.get("doc", {}).get("prompt_tokens"),
                "chunk_prompt_tokens": stages.get("chunk", {}).get("prompt_tokens"),
                "chunk_generated_tokens": stages.get("chunk", {}).get("generated_tokens"),
                "output_lengths": lengths,
            }
    results["parameters"] = parameters
    print(
        f"prox refine, both stages, {args.shape} shape ({parameters / 1e6:.0f}M parameters) on "
        f"{hardware}; {documents:,} documents, {raw_tokens:,} raw tokens; matmul peak "
        f"{results['matmul_peak_tflops']} TFLOP/s; trained {results['train_seconds']} s "
        f"(validation loss {training['validation_loss_before']:.2f} -> {training['validation_loss_after']:.2f}); "
        f"the teacher keeps {teacher['kept_fraction']:.1%} and writes chunk programs of "
        f"{teacher['chunk_answer_tokens']} tokens"
    )
    rows = []
    for generation, numbers in results["runs"].items():
        chunk = numbers["output_lengths"].get("chunk", {})
        rows.append(
            {
                "generation": generation,
                "wall s": numbers["wall_seconds"],
                "raw tok/s": numbers["raw_tokens_per_second"],
                "h / 1B tok": numbers["device_hours_per_billion_raw_tokens"],
                "vs paper": numbers["ratio_to_paper"],
                "MFU": numbers["mfu"],
                "busy": numbers["model_busy_share"],
                "GPU util": numbers["gpu_utilization_nvml"],
                "kept": numbers["kept_fraction"],
                "chunk p50/p90/max": f"{chunk.get('p50')}/{chunk.get('p90')}/{chunk.get('max')}",
                "at limit": round(chunk.get("at_token_limit", 0), 4),
            }
        )
    print_table(rows, 12)
    if len(results["runs"]) > 1 and "static" in results["runs"]:
        for generation, numbers in results["runs"].items():
            if generation != "static":
                speedup = (
                    numbers["raw_tokens_per_second"]
                    / results["runs"]["static"]["raw_tokens_per_second"]
                )
                print(f"{generation} / static raw tokens per second: {speedup:.2f}x")
    save_json(args.json, results)


def _has_nvml() -> bool:
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
