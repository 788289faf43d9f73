"""Benchmark a model programmer on a model of the released 0.3B refining LM's shape.

Shape: Llama, 24 layers, hidden 1280, 16 heads, 1 KV head, MLP 2048, vocabulary 32000 (random
weights: speed does not depend on them). Reports, in one run on the same prompts:
- the fp32 matrix-multiply peak of this machine (torch, all threads), the reference;
- prefill tokens/s and achieved GFLOP/s of the model's forward pass, as a fraction of that peak;
- doc level: one forward pass (keep score) against greedy generation of the answer as a
  trained model writes it (" keep_doc() </s>": 6 tokens with the Llama-2 tokenizer).

    python bench/bench_lm.py [--docs 16] [--doc-tokens 512] [--device cpu] [--json out.json]
    python bench/bench_lm.py --device cuda --compile --docs 512 --batch-tokens 131072 --max-batch-size 512
    python bench/bench_lm.py --device cuda --backend vllm --docs 512

On a GPU the peak is bf16 and the model runs in bf16; "fraction of matmul peak" is then the MFU
against that same-run peak.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from benchlib import LLAMA2, print_table, write_json

from proxkit.programmers.hf import HFSettings, TransformersBackend


def matmul_peak(torch, device: str, dtype) -> float:
    """Best GFLOP/s of square and model-shaped products."""
    on_gpu = device.startswith("cuda")
    shapes = [(2048, 2048, 2048), (4096, 1280, 2048), (4096, 2048, 1280), (4096, 1280, 1280)]
    if on_gpu:  # a GPU reaches its peak only on large products
        shapes += [(8192, 8192, 8192), (16384, 1280, 2048)]
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        repeats = 20 if on_gpu else 5
        if on_gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        if on_gpu:
            torch.cuda.synchronize()
        best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9)
    return best


def forward_flops(tokens: int, sequence: int, batch: int) -> float:
    """Matrix-multiply FLOPs of a prefill: linear layers on every token, attention scores and
    values over the causal half of each sequence, and the LM head on the last position only."""
    h, f, layers, heads, kv = 1280, 2048, 24, 16, 1
    head_dim = h // heads
    linear = h * h + 2 * h * kv * head_dim + h * h + 3 * h * f  # q, k, v, o, gate/up/down
    attention = 2 * sequence * h / 2  # QK^T and AV per token, causal
    return 2 * tokens * layers * (linear + attention) + 2 * batch * h * 32000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument(
        "--doc-tokens",
        type=int,
        nargs="+",
        default=[128, 512],
        help="document lengths in tokens (about)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokenizer", default=str(LLAMA2))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=HFSettings.batch_tokens)
    parser.add_argument("--max-batch-size", type=int, default=HFSettings.max_batch_size)
    parser.add_argument("--compile", action="store_true", help="torch.compile one-pass scoring")
    parser.add_argument(
        "--backend",
        choices=["transformers", "vllm"],
        default="transformers",
        help="vllm: the same measurements through proxkit's vLLM backend (GPU, extra [vllm])",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    from proxkit.io.readers import Document
    from proxkit.programmers.lm import DocScoring, LMProgrammer
    from proxkit.prompts import answer_ids, doc_prompts
    from proxkit.testing import REFINING_LM_0_3B, random_llama

    torch.manual_seed(0)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    with tempfile.TemporaryDirectory() as folder:
        random_llama(Path(folder), Path(args.tokenizer), **REFINING_LM_0_3B)
        if args.backend == "vllm":
            from proxkit.programmers.vllm import VLLMBackend

            backend = VLLMBackend(folder, dtype=str(dtype).split(".")[1])
        else:
            backend = TransformersBackend(
                folder,
                HFSettings(
                    device=args.device,
                    dtype=str(dtype).split(".")[1],
                    batch_tokens=args.batch_tokens,
                    max_batch_size=args.max_batch_size,
                    compile=args.compile,
                ),
            )

        vocabulary = [
            "the",
            "data",
            "of",
            "a",
            "web",
            "page",
            "with",
            "words",
            "in",
            "sentences",
            "and",
            "some",
            "more",
            "text",
            "about",
            "river",
            "valley",
            "towns",
        ]
        rng = random.Random(0)  # distinct documents: the program cache must not help either path
        # What a trained model generates before it stops: its answer turn, end of turn included.
        probe = doc_prompts(["x"], backend.tokenizer)[0]
        answer = len(answer_ids(backend.tokenizer, probe, "keep_doc()"))
        peak = matmul_peak(torch, args.device, dtype)

        def best(function) -> float:
            """Best of several runs after a warm-up: this machine's timings are noisy."""
            function()
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                function()
                times.append(time.perf_counter() - start)
            return min(times)

        rows = []
        for length in args.doc_tokens:
            texts = [
                " ".join(rng.choice(vocabulary) for _ in range(int(length * 0.8)))
                for _ in range(args.docs)
            ]
            documents = [Document(str(i), t, {}, "bench", i) for i, t in enumerate(texts)]
            prompts = doc_prompts(texts, backend.tokenizer)
            tokens = sum(len(p.token_ids) for p in prompts)
            longest = max(len(p.token_ids) for p in prompts)
            prefill = best(lambda prompts=prompts: backend.next_token_logprobs(prompts, [1, 2]))
            achieved = forward_flops(tokens, longest, len(prompts)) / prefill / 1e9
            # Fresh programmers per run: neither may answer from its program cache.
            one_pass = best(
                lambda d=documents: LMProgrammer(backend, DocScoring("forward")).write("doc", d)
            )
            generate = best(
                lambda d=documents: LMProgrammer(
                    backend, DocScoring("generate"), doc_max_new_tokens=answer
                ).write("doc", d)
            )
            rows.append(
                {
                    "prompt tokens (mean)": round(tokens / len(prompts)),
                    "prefill tokens/s": round(tokens / prefill, 1),
                    "prefill GFLOP/s": round(achieved, 1),
                    "fraction of matmul peak": round(achieved / peak, 3),
                    "one-pass s": round(one_pass, 3),
                    f"generate s ({answer} tokens)": round(generate, 3),
                    "one-pass speed-up": round(generate / one_pass, 2),
                }
            )

    hardware = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"{args.backend} on {args.device} ({hardware}), {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {args.docs} documents "
        f"per length; matmul peak {peak:.1f} GFLOP/s"
    )
    print_table(rows, 24)
    write_json(
        args.json,
        {
            "backend": args.backend,
            "device": hardware,
            "matmul_peak_gflops": peak,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
