"""End-to-end `prox refine` with a refining model, both stages: the GPU check.

Built to run on a lent GPU machine as it is, in one call, inside a time budget
(`bench/gpu/check.sh`; the README says how), and on a CPU with `--device cpu --shape tiny`.
Every phase adds to the JSON file as it ends, so a run cut short still leaves its figures.

1. Environment: versions, device, free memory, and the modules that are missing.
2. Peak: the device's datasheet bf16 dense peak (by its name) and a matmul peak measured in
   this run (bf16 on a GPU, fp32 on a CPU).
3. Corpus: the shipped example corpus (320 documentation pages, 0.77M tokens) in distinct
   copies (no prompt repeats, so the program cache cannot help), cut at `--raw-tokens`.
4. Model: a Llama of the released 0.3B refining LM's shape (`--shape small`/`tiny` on a CPU),
   from random weights, fine-tuned here for `--train-steps` steps through the real
   `prox sft-data` and `prox train` code on the programs the rule programmer writes for the
   example corpus, so its programs have a refiner's lengths. Doc decisions keep the share of
   documents the rules keep (`--doc-keep-fraction`), so both stages carry a refiner's load.
5. Decode loop against `generate`: chunk prompts of the corpus in batches of
   `--reference-batch` (the backend's dtype: bf16 on a GPU), each batch decoded by proxkit's
   loop (ended rows leave the batch, the grammar checks the model's choice first) and by
   transformers' `generate` (the grammar as a mask of every disallowed token at every step,
   `proxkit.testing.generate_reference`), without and with the grammar, batch after batch up
   to `--reference-rows` prompts or `--reference-seconds`: the share of identical outputs (on
   a CPU in fp32 they must all be; in bf16 a batch that shrinks runs other kernels, whose
   rounding can turn a near tie), and how many outputs the grammar changed.
6. Warm-up: each run refines `--warmup-docs` documents first (kernels, allocator, caches);
   its speed sizes the measured runs so that all of them fit the time budget.
7. Runs: `prox refine` (the real runner: reading, prompt workers, overlap, writing), same
   model, same documents, once per `--runs`: `transformers` (the grammar on, the default),
   `unconstrained` (`--no-constrained`), and `vllm` where it is installed on a GPU.

Reported per run, from the run's own counters (`stats.json`) and the device:
- raw input tokens/s, device-hours per billion raw tokens, and beside them the paper's
  192 A100-hours per 60B tokens (its 0.7B refiner) with the hardware ratio stated: this
  device's datasheet peak over the A100's (312 TFLOP/s bf16 dense). No scaling by parameters:
  both refiners are named with their sizes;
- MFU against the datasheet peak and against the same-run matmul peak: matrix FLOPs of the
  tokens the model really processed (prompts sent, tokens generated, attention over their
  contexts) per second of the run;
- GPU busy from kernel time: the union of CUDA kernel and copy intervals that torch.profiler
  records over a window of `--sample-seconds` in the middle of the run, over the window; the
  share of wall time a model call was open is reported apart, and NVML's utilization where
  pynvml is installed;
- failures (documents left unrefined), rejects, decode steps the grammar corrected, batches
  whose prompts the model's process built because a prompt worker failed, batches split out
  of memory, outputs at the token limit, the share of row-steps that wrote a token (rows that
  ended wait for the batch to compact), and the batch limits used;
- across runs: the share of documents whose doc and chunk programs are identical (between
  `transformers` and `unconstrained`: where the grammar changed no program).

    bash bench/gpu/check.sh                                     # on the lent GPU machine
    python bench/bench_gpu_refine.py --json bench/results/gpu_refine.json   # any GPU machine
    python bench/bench_gpu_refine.py --device cpu --shape tiny --raw-tokens 20000 \\
        --train-steps 20 --max-chunk-tokens 256 --max-doc-tokens 512 --warmup-docs 4
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import threading
import time
import traceback
from itertools import combinations
from pathlib import Path
from typing import Any

from bench_lm import matmul_peak
from benchlib import LLAMA2, build_corpus, print_table, train_rule_refiner

PAPER_A100_HOURS, PAPER_TOKENS, PAPER_PARAMETERS = 192, 60e9, 0.7e9
A100_BF16_TFLOPS = 312
# Datasheet bf16 dense tensor-core peaks (TFLOP/s), by a part of the device name.
DATASHEET_BF16_TFLOPS = (
    ("H200", 989),
    ("H100 PCIe", 756),
    ("H100 NVL", 835),
    ("H100", 989),  # SXM
    ("A100", 312),
    ("L40S", 362),
    ("L4", 121),
)
MODULES = ("accelerate", "zstandard", "pynvml", "pyarrow", "typer", "rich", "vllm")
# The measured runs: RefineConfig values over the shared ones.
RUNS: dict[str, dict[str, Any]] = {
    "transformers": {"backend": "transformers"},
    "unconstrained": {"backend": "transformers", "constrained": False},
    "vllm": {"backend": "vllm"},
}


def datasheet_peak(device_name: str) -> float | None:
    for part, tflops in DATASHEET_BF16_TFLOPS:
        if part in device_name:
            return tflops * 1e12
    return None


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


def covered(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of (start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


class KernelClock:
    """GPU busy from kernel time: after `delay` seconds, torch.profiler records CUDA kernels
    and copies for `seconds` (CUPTI records the device's activity whichever thread launched
    it); once the run is over, busy = the union of their intervals over the window. The trace
    is read only then, so the run measured does not pay for it."""

    def __init__(self, delay: float, seconds: float) -> None:
        self.delay, self.seconds = delay, seconds
        self.profiler: Any = None
        self.window = 0.0
        self.error: str | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        if self.stop.wait(self.delay):
            self.error = "the run ended before the sampling window"
            return
        try:
            from torch.profiler import ProfilerActivity, profile

            profiler = profile(activities=[ProfilerActivity.CUDA])
            profiler.start()
            start = time.perf_counter()
            self.stop.wait(self.seconds)
            profiler.stop()
            self.window, self.profiler = time.perf_counter() - start, profiler
        except Exception as exc:  # a profiler that cannot start must not lose the run
            self.error = f"{type(exc).__name__}: {exc}"

    def finish(self) -> dict[str, Any]:
        self.stop.set()
        self.thread.join()
        if self.profiler is None:
            return {"error": self.error}
        try:
            intervals = device_intervals(self.profiler)
        except Exception as exc:
            return {"error": f"reading the trace: {type(exc).__name__}: {exc}"}
        return {
            "window_seconds": round(self.window, 3),
            "kernels": len(intervals),
            "gpu_busy_kernel_time": round(covered(intervals) / 1e6 / self.window, 4),
        }


def device_intervals(profiler: Any) -> list[tuple[float, float]]:
    """(start, end) in microseconds of every CUDA activity the profiler recorded: from the raw
    trace where this torch has it (fast), else from its parsed events."""
    results = getattr(profiler.profiler, "kineto_results", None)
    if results is not None and hasattr(results, "events"):
        return [
            (event.start_ns() / 1e3, event.end_ns() / 1e3)
            for event in results.events()
            if event.device_type().name == "CUDA"
        ]
    return [
        (event.time_range.start, event.time_range.end)
        for event in profiler.events()
        if event.device_type.name == "CUDA"
    ]


class Utilization:
    """NVML's utilization (the share of time any kernel ran), sampled every 100 ms."""

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


def environment(torch: Any, device: str) -> dict[str, Any]:
    import transformers

    found = {m: importlib.util.find_spec(m) is not None for m in MODULES}
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_cores": os.cpu_count(),
        "modules_missing": sorted(m for m, present in found.items() if not present),
    }
    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info()
        info |= {
            "device": torch.cuda.get_device_name(),
            "device_memory_gib": round(total / 2**30, 1),
            "device_free_gib": round(free / 2**30, 1),
        }
    else:
        info["device"] = f"cpu ({os.cpu_count()} cores)"
    return info


def programs(output: Path) -> dict[str, tuple[Any, Any]]:
    """Each output record's (doc program, chunk program), by id."""
    found = {}
    for path in sorted(output.glob("part-*.jsonl")):
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                metadata = record.get("metadata", {})
                found[str(record["id"])] = (
                    metadata.get("doc_program"),
                    metadata.get("chunk_program"),
                )
    return found


def identical_programs(outputs: dict[str, Path]) -> dict[str, Any]:
    """For each pair of runs: the share of documents with the same doc and chunk programs."""
    read = {label: programs(folder) for label, folder in outputs.items()}
    rates = {}
    for a, b in combinations(read, 2):
        shared = read[a].keys() & read[b].keys()
        same_doc = sum(read[a][i][0] == read[b][i][0] for i in shared)
        same = sum(read[a][i] == read[b][i] for i in shared)
        rates[f"{a} vs {b}"] = {
            "documents": len(shared),
            "identical_doc_programs": round(same_doc / max(len(shared), 1), 4),
            "identical_programs": round(same / max(len(shared), 1), 4),
        }
    return rates


def first_difference(a: list[int], b: list[int]) -> int:
    """The first position where two token rows differ (the shorter's length if one is the
    other's start)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def agreement(ours: list[list[int]], theirs: list[list[int]]) -> dict[str, Any]:
    """How far two decodings of the same prompts agree, token for token."""
    differing = [first_difference(a, b) for a, b in zip(ours, theirs) if a != b]
    return {
        "identical_outputs": round(1 - len(differing) / max(len(ours), 1), 4),
        "differing_outputs": len(differing),
        "first_difference_p50": sorted(differing)[len(differing) // 2] if differing else None,
    }


def decode_check(
    model_dir: Path,
    device: str,
    texts: list[str],
    rows: int,
    batch_rows: int,
    max_chunk_tokens: int,
    limit: int,
    seconds: float,
) -> dict[str, Any]:
    """Section 5 of the module docstring: proxkit's decode loop against transformers'
    `generate` on the same batches of at most `batch_rows` chunk prompts, without and with
    the grammar, batch after batch until `rows` prompts or `seconds` (the reference lists
    every allowed token of every row at every step in Python: slow on long outputs)."""
    from proxkit.chunking import Chunker, chunk_content
    from proxkit.programmers.grammar import ProgramGrammar
    from proxkit.programmers.hf import HFSettings, TransformersBackend, _batches
    from proxkit.programmers.lm import chunk_inputs
    from proxkit.testing import generate_reference

    model = TransformersBackend(str(model_dir), HFSettings(device=device))
    tokenizer = model.tokenizer
    inputs = chunk_inputs(
        texts, tokenizer, Chunker(tokenizer.backend, max_chunk_tokens, tokenizer.words)
    )
    chunks = [chunk for document, _ in inputs for chunk in document][:rows]
    prompts = [prompt for _, document in inputs for prompt in document][:rows]
    grammars = [
        ProgramGrammar("chunk", c.first_line, c.last_line, chunk_content(c.text)) for c in chunks
    ]
    decoders = {
        "decode_loop": model._decode,
        "generate": lambda batch, new, chosen: generate_reference(model, batch, new, chosen),
    }
    model._decode(prompts[:1], 2, None)  # first-call costs (threads, kernels) out of the timing
    outputs: dict[tuple[str, bool], list[list[int]]] = {
        (name, constrained): [] for name in decoders for constrained in (False, True)
    }
    spent = dict.fromkeys(outputs, 0.0)
    started, compared = time.perf_counter(), 0
    for batch in _batches(prompts, model.settings.batch_tokens, min(batch_rows, len(prompts))):
        if compared and time.perf_counter() - started > seconds:
            break
        for name, constrained in outputs:
            chosen = [grammars[i] for i in batch] if constrained else None
            start = time.perf_counter()
            outputs[name, constrained] += decoders[name]([prompts[i] for i in batch], limit, chosen)
            spent[name, constrained] += time.perf_counter() - start
        compared += len(batch)
    changed = agreement(outputs["decode_loop", False], outputs["decode_loop", True])
    return {
        "prompts": compared,
        "dtype": str(model.model.dtype).removeprefix("torch."),
        "max_new_tokens": limit,
        "without_grammar": agreement(outputs["decode_loop", False], outputs["generate", False]),
        "with_grammar": agreement(outputs["decode_loop", True], outputs["generate", True]),
        "outputs_the_grammar_changed": changed["differing_outputs"],
        "steps_corrected_by_grammar": model.stats()["steps_corrected_by_grammar"],
        "compactions": model.counters["compactions"],
        "seconds": {
            name + (" with grammar" if constrained else ""): round(value, 2)
            for (name, constrained), value in spent.items()
        },
    }


def run_summary(
    stats: Any, wall: float, raw_tokens: int, shape: dict, peaks: dict, parameters: int
) -> dict[str, Any]:
    stages = stats.programmers
    model = stages.get("model", {})
    flops = sum(model_flops(shape, 32000, stages.get(s, {})) for s in ("doc", "chunk"))
    per_second = raw_tokens / wall
    hours_per_billion = 1e9 / per_second / 3600
    lengths, written = {}, 0
    for stage in ("doc", "chunk"):
        counts = stages.get(stage, {}).get("output_tokens")
        if counts:
            outputs = sum(counts.values())
            at_limit = stages[stage]["outputs_at_token_limit"]
            lengths[stage] = {
                "outputs": outputs,
                "p50": percentile(counts, 0.5),
                "p90": percentile(counts, 0.9),
                "max": max(int(k) for k in counts),
                "at_token_limit": at_limit,
            }
            # a row writes each of its tokens, and its end of sequence unless cut at the limit
            written += stages[stage]["generated_tokens"] + outputs - at_limit
    row_steps = model.get("row_steps")
    datasheet = peaks.get("datasheet")
    summary = {
        "documents": stats.documents,
        "wall_seconds": round(wall, 2),
        "raw_tokens": raw_tokens,
        "raw_tokens_per_second": round(per_second),
        "device_hours_per_billion_raw_tokens": round(hours_per_billion, 4),
        "mfu_vs_datasheet_peak": round(flops / wall / datasheet, 4) if datasheet else None,
        "mfu_vs_same_run_matmul_peak": round(flops / wall / peaks["same_run"], 4),
        "model_call_open_share": (
            round(model["busy_seconds"] / wall, 3) if "busy_seconds" in model else None
        ),
        "failures": stats.programmer_failures,
        "rejected": stats.rejected,
        "steps_corrected_by_grammar": model.get("steps_corrected_by_grammar"),
        "prompt_worker_fallbacks": stats.prompt_worker_fallbacks,
        "oom_splits": model.get("oom_splits"),
        "refused_requests": model.get("refused_requests"),
        "engine": model.get("engine", "transformers"),
        "decode_steps": model.get("decode_steps"),
        "row_steps_writing_share": round(written / row_steps, 4) if row_steps else None,
        "compactions": model.get("compactions"),
        "batch_tokens": model.get("batch_tokens"),
        "max_batch_size": model.get("max_batch_size"),
        "kept_fraction": round(stats.kept / max(stats.documents, 1), 4),
        "refined_fraction": round(stats.refined / max(stats.documents, 1), 4),
        "output_lengths": lengths,
        "programmers": stages,
    }
    if datasheet:
        ratio = datasheet / (A100_BF16_TFLOPS * 1e12)
        summary["paper"] = {
            "a100_hours_per_billion_raw_tokens": round(PAPER_A100_HOURS / PAPER_TOKENS * 1e9, 3),
            "paper_refiner_parameters": PAPER_PARAMETERS,
            "this_refiner_parameters": parameters,
            "hardware_ratio_vs_a100": round(ratio, 3),
            "a100_equivalent_hours_per_billion_raw_tokens": round(hours_per_billion * ratio, 4),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto: cuda when available")
    parser.add_argument("--shape", choices=["0.3b", "small", "tiny"], default="0.3b")
    parser.add_argument("--raw-tokens", type=float, default=20e6)
    parser.add_argument("--time-budget", type=float, help="seconds for everything; runs shrink")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--train-batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument(
        "--runs",
        nargs="+",
        choices=sorted(RUNS),
        help="default: transformers, unconstrained, and vllm where it is installed on a GPU",
    )
    parser.add_argument("--reference-rows", type=int, default=64, help="0: no decode check")
    parser.add_argument("--reference-batch", type=int, default=16, help="rows per batch")
    parser.add_argument("--reference-seconds", type=float, default=60, help="no batch after")
    parser.add_argument("--chunk-max-new-tokens", type=int, default=256)
    parser.add_argument("--prompt-workers", type=int, help="default: prox refine's")
    parser.add_argument("--warmup-docs", type=int, default=64)
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="0: no kernel trace")
    parser.add_argument("--batch-size", type=int, default=512, help="documents per batch")
    parser.add_argument("--batch-tokens", type=int, default=0, help="0: from free memory")
    parser.add_argument("--max-batch-size", type=int, default=0, help="0: from free memory")
    parser.add_argument("--max-chunk-tokens", type=int, default=1500)
    parser.add_argument("--max-doc-tokens", type=int, default=2000)
    parser.add_argument("--doc-keep-fraction", type=float, help="default: the rules' share")
    parser.add_argument("--tokenizer", default=str(LLAMA2))
    parser.add_argument("--work", type=Path, help="a folder for the corpus, model and outputs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {"settings": vars(args) | {"json": str(args.json), "work": None}}
    started = time.perf_counter()

    def save(phase: str) -> None:
        results["phases_done"] = [*results.get("phases_done", []), phase]
        results["elapsed_seconds"] = round(time.perf_counter() - started, 1)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"[{results['elapsed_seconds']:7.1f} s] {phase}", file=sys.stderr)

    try:
        check(args, results, save, started)
    except Exception as exc:  # the JSON says where and why the check stopped
        results["error"] = {"after": results.get("phases_done", [None])[-1], "error": repr(exc)}
        results["error"]["traceback"] = traceback.format_exc().splitlines()[-12:]
        save("failed")
        raise SystemExit(f"error: {exc!r}") from exc
    print_summary(results)


def check(args: argparse.Namespace, results: dict[str, Any], save: Any, started: float) -> None:
    """The phases of the module docstring, each saved as it ends."""
    import gc
    import tempfile

    import torch

    from proxkit.config import RefineConfig
    from proxkit.pipeline.overlap import prompt_workers
    from proxkit.pipeline.run import run
    from proxkit.testing import REFINING_LM_0_3B, SMALL, TINY
    from proxkit.tokenizer import load_tokenizer

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_gpu = device.startswith("cuda")
    shape = {"0.3b": REFINING_LM_0_3B, "small": SMALL, "tiny": TINY}[args.shape]
    results["environment"] = environment(torch, device)
    save("environment")
    same_run = matmul_peak(torch, device, torch.bfloat16 if on_gpu else torch.float32) * 1e9
    name = results["environment"]["device"]
    peaks = {"same_run": same_run, "datasheet": datasheet_peak(name) if on_gpu else None}
    results["peak_tflops"] = {k: v / 1e12 if v else None for k, v in peaks.items()}
    save("peak")

    tokenizer = load_tokenizer(args.tokenizer)
    work = args.work or Path(tempfile.mkdtemp(prefix="prox-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    documents, raw_tokens = build_corpus(
        work / "corpus.jsonl", int(args.raw_tokens), tokenizer.backend
    )
    results["corpus"] = {"documents": documents, "raw_tokens": raw_tokens}
    save("corpus")

    start = time.perf_counter()
    training = train_rule_refiner(
        work, args.tokenizer, shape, args.max_chunk_tokens, args.max_doc_tokens,
        max_steps=args.train_steps, batch_size=args.train_batch_size,
        learning_rate=args.learning_rate, warmup_fraction=0.05,
        logging_steps=max(args.train_steps // 5, 1),
    )  # fmt: skip
    teacher = teacher_profile(work / "sft")
    keep_fraction = args.doc_keep_fraction or round(teacher["kept_fraction"], 3)
    import safetensors.torch

    weights = safetensors.torch.load_file(str(work / "refiner" / "model.safetensors"))
    parameters = sum(t.numel() for t in weights.values())
    del weights
    results["training"] = {
        "seconds": round(time.perf_counter() - start, 1),
        "parameters": parameters,
        "validation_loss": [training["validation_loss_before"], training["validation_loss_after"]],
        "teacher": teacher,
        "doc_keep_fraction": keep_fraction,
    }
    save("training")

    if args.reference_rows:
        results["decode_loop_vs_generate"] = decode_check(
            work / "refiner", device, _texts(work / "corpus.jsonl", args.reference_rows),
            args.reference_rows, args.reference_batch, args.max_chunk_tokens,
            args.chunk_max_new_tokens, args.reference_seconds,
        )  # fmt: skip
        gc.collect()  # its model leaves the device before the runs size their batches
        if on_gpu:
            torch.cuda.empty_cache()
        save("decode loop vs generate")

    def config(name: str, output: str, limit: int | None) -> RefineConfig:
        return RefineConfig(
            inputs=(str(work / "corpus.jsonl"),),
            output=str(work / output),
            doc_programmer=str(work / "refiner"),
            chunk_programmer=str(work / "refiner"),
            device=device,
            batch_size=args.batch_size,
            prompt_workers=args.prompt_workers,
            batch_tokens=args.batch_tokens,
            max_batch_size=args.max_batch_size,
            max_chunk_tokens=args.max_chunk_tokens,
            max_doc_tokens=args.max_doc_tokens,
            chunk_max_new_tokens=args.chunk_max_new_tokens,
            doc_keep_fraction=keep_fraction,
            output_format="jsonl",
            limit=limit,
            overwrite=True,
            **RUNS[name],
        )

    labels = args.runs or ["transformers", "unconstrained"] + ["vllm"] * (on_gpu and _has("vllm"))
    results["warmup"], results["runs"], speeds, loads = {}, {}, {}, {}
    for label in labels:
        try:
            start = time.perf_counter()
            run(config(label, f"warmup-{label}", args.warmup_docs), progress=False)
            warm = time.perf_counter() - start
            # The start-up alone, after the warm-up: an engine's second start reuses what the
            # first compiled (vLLM's compile cache), as the measured run's will.
            start = time.perf_counter()
            run(config(label, f"warmup-{label}", 0), progress=False)
            loads[label] = time.perf_counter() - start
        except Exception as exc:  # one run failing must not lose the others
            results["warmup"][label] = {"error": f"{type(exc).__name__}: {exc}"}
            save(f"warm-up {label} (failed)")
            continue
        seconds = max(warm - loads[label], 0.0)
        speeds[label] = args.warmup_docs / max(seconds, 1e-3)
        results["warmup"][label] = {
            "model_load_seconds": round(loads[label], 2),
            "seconds_after_load": round(seconds, 2),
            "docs_per_second": round(speeds[label], 2),
        }
        save(f"warm-up {label}")

    outputs: dict[str, Path] = {}
    limit = documents
    if args.time_budget and speeds:
        # Every run refines the same documents: as many as the slowest fits in its share.
        left = args.time_budget - (time.perf_counter() - started) - 30
        share = max(left, 0) / len(speeds)
        limit = max(1, min(documents, int(min(speeds.values()) * share * 0.8)))
    results["measured_documents"] = limit
    for label in speeds:
        raw = _raw_tokens(work / "corpus.jsonl", limit, tokenizer.backend)
        expected = loads[label] + limit / speeds[label]
        sample = on_gpu and args.sample_seconds > 0
        sampler = KernelClock(min(loads[label] + 10, expected / 3), args.sample_seconds) if sample else None  # fmt: skip
        nvml = Utilization(torch.cuda.current_device()) if on_gpu and _has("pynvml") else None
        start = time.perf_counter()
        try:
            stats = run(config(label, f"out-{label}", limit), progress=False)
        except Exception as exc:
            results["runs"][label] = {"error": f"{type(exc).__name__}: {exc}"}
            save(f"run {label} (failed)")
            continue
        wall = time.perf_counter() - start
        summary = run_summary(stats, wall, raw, shape, peaks, parameters)
        summary["model_load_seconds"] = round(loads[label], 2)
        summary["prompt_workers"] = prompt_workers(args.prompt_workers, device)
        after_load = wall - loads[label]  # None where the start-up varied more than the work
        summary["raw_tokens_per_second_after_load"] = (
            round(raw / after_load) if after_load > 0.1 * wall else None
        )
        summary["kernel_time"] = (
            sampler.finish() if sampler else {"error": "no CUDA device" if not on_gpu else "off"}
        )
        summary["gpu_utilization_nvml"] = nvml.mean() if nvml else None
        results["runs"][label] = summary
        outputs[label] = work / f"out-{label}"
        save(f"run {label}")
    if len(outputs) > 1:
        results["identical_programs"] = identical_programs(outputs)
        save("comparison")


def _texts(corpus: Path, documents: int) -> list[str]:
    """The texts of the first `documents` documents of the corpus."""
    with corpus.open(encoding="utf-8") as handle:
        return [json.loads(line)["text"] for _, line in zip(range(documents), handle)]


def _raw_tokens(corpus: Path, documents: int, tokenizer: Any) -> int:
    """Raw tokens of the first `documents` documents of the corpus."""
    texts = _texts(corpus, documents)
    return sum(len(e) for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False))


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def print_summary(results: dict[str, Any]) -> None:
    environment, training = results["environment"], results["training"]
    print(
        f"prox refine, both stages, {results['settings']['shape']} shape "
        f"({training['parameters'] / 1e6:.0f}M parameters) on {environment['device']}; "
        f"{results['measured_documents']:,} documents per run; peaks (TFLOP/s): "
        f"{results['peak_tflops']}; trained {training['seconds']} s "
        f"(validation loss {training['validation_loss'][0]:.2f} -> "
        f"{training['validation_loss'][1]:.2f})"
    )
    rows = []
    for label, run in results["runs"].items():
        if "error" in run:
            rows.append({"run": label, "raw tok/s": run["error"][:60]})
            continue
        chunk = run["output_lengths"].get("chunk", {})
        rows.append(
            {
                "run": label,
                "raw tok/s": run["raw_tokens_per_second"],
                "h / 1B tok": run["device_hours_per_billion_raw_tokens"],
                "MFU sheet": run["mfu_vs_datasheet_peak"],
                "MFU run": run["mfu_vs_same_run_matmul_peak"],
                "kernel busy": run["kernel_time"].get("gpu_busy_kernel_time"),
                "call open": run["model_call_open_share"],
                "fail/rej": f"{run['failures']}/{run['rejected']}",
                "corrected": run["steps_corrected_by_grammar"],
                "rows writing": run["row_steps_writing_share"],
                "OOM splits": run["oom_splits"],
                "chunk p50/p90": f"{chunk.get('p50')}/{chunk.get('p90')}",
            }
        )
    if rows:
        print_table(rows, 12)
    for pair, rate in results.get("identical_programs", {}).items():
        print(f"identical programs, {pair}: {rate['identical_programs']:.1%}")
    check = results.get("decode_loop_vs_generate")
    if check:
        print(
            f"decode loop vs generate ({check['prompts']} chunk prompts, {check['dtype']}): "
            f"identical {check['without_grammar']['identical_outputs']:.1%} without the grammar, "
            f"{check['with_grammar']['identical_outputs']:.1%} with it; the grammar changed "
            f"{check['outputs_the_grammar_changed']} outputs"
        )


if __name__ == "__main__":
    main()
