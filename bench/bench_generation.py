"""Static batches against continuous batching, as concurrency grows, on the same prompts.

A random-weight Llama (`--shape small` or the released 0.3B refining LM's shape) generates
`--new-tokens` tokens for N prompts of `--prompt-tokens` tokens (random weights never end early,
so every output has the same length: the case most favourable to static batches; the
end-to-end benchmark, bench_gpu_refine.py, has realistic lengths). Reported per N and path:
seconds and generated tokens per second, one run each after a warm-up, plus the attention
implementation continuous batching ran with: without flash attention, transformers' continuous
batching attends each step's tokens to every cached token of the batch under one dense mask,
so its step cost grows with the square of the batch.

    python bench/bench_generation.py [--shape small] [--concurrency 8 32 64] [--device cuda]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from benchlib import LLAMA2, print_table, write_json


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=["0.3b", "small"], default="small")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tokenizer", default=str(LLAMA2))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    from proxkit.programmers.hf import HFSettings, TransformersBackend
    from proxkit.prompts import Prompt
    from proxkit.testing import REFINING_LM_0_3B, SMALL, random_llama

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        random_llama(
            Path(folder),
            Path(args.tokenizer),
            **(SMALL if args.shape == "small" else REFINING_LM_0_3B),
        )
        most = max(args.concurrency)
        backends = {
            path: TransformersBackend(
                folder, HFSettings(device=args.device, generation=path, max_batch_size=most)
            )
            for path in ("static", "continuous")
        }
        rng = random.Random(0)
        for count in args.concurrency:
            prompts = [
                Prompt("", (1, *(rng.randrange(3, 32000) for _ in range(args.prompt_tokens))))
                for _ in range(count)
            ]
            row: dict = {"prompts": count}
            for path, backend in backends.items():
                backend.generate(prompts[:2], 4)  # warm-up (and the manager's start)
                if backend.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                outputs = backend.generate(prompts, args.new_tokens)
                if backend.device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                row[f"{path} s"] = round(seconds, 2)
                row[f"{path} tok/s"] = round(sum(o.tokens for o in outputs) / seconds, 1)
            row["continuous / static"] = round(row["continuous tok/s"] / row["static tok/s"], 2)
            rows.append(row)
        continuous = backends["continuous"]
        attention = continuous.model.config._attn_implementation
        device = continuous.device
        for backend in backends.values():
            backend.close()
    hardware = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(
        f"{args.shape} shape on {device} ({hardware}), {torch.get_num_threads()} threads; "
        f"{args.prompt_tokens}-token prompts, {args.new_tokens} new tokens each; "
        f"attention: {attention}"
    )
    print_table(rows, 16)
    write_json(args.json, {"device": hardware, "attention": attention, "rows": rows})


if __name__ == "__main__":
    main()
