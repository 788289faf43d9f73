"""Benchmark `prox train`: training tokens/s and MFU of full fine-tuning on sft-data examples.

The examples come from the shipped example corpus through the real `prox sft-data` code,
labelled by the rule programmer as the teacher (`benchlib.train_rule_refiner`). The model has
the released 0.3B refining LM's shape with random weights (`--shape small` for a quick CPU run).
Tokens counted are the examples' own tokens, padding excluded; MFU counts the FLOPs training
does, 6 per parameter and token for the decoder layers, and 6 per LM-head parameter for the
answer tokens alone (where `prox train` runs the head), against a same-run matmul peak (bf16 on
a GPU, fp32 on a CPU).

    python bench/bench_train.py --steps 30 --batch-size 16            # on a GPU
    python bench/bench_train.py --shape small --steps 5 --batch-size 4  # on a CPU
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench_lm import matmul_peak
from benchlib import LLAMA2, train_rule_refiner, write_json


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=["0.3b", "small"], default="0.3b")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--tokenizer", default=str(LLAMA2))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    from proxkit.testing import REFINING_LM_0_3B, SMALL
    from proxkit.train.trainer import IGNORE, read_examples

    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    peak = matmul_peak(torch, device, torch.bfloat16 if on_gpu else torch.float32)
    shape = REFINING_LM_0_3B if args.shape == "0.3b" else SMALL
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        report = train_rule_refiner(
            folder, args.tokenizer, shape,
            max_steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
            learning_rate=1e-4, logging_steps=max(args.steps // 3, 1),
        )  # fmt: skip
        examples, _ = read_examples(folder / "sft" / "train.jsonl", args.max_length)
    mean_tokens = sum(len(e["input_ids"]) for e in examples) / len(examples)
    mean_answer = sum(sum(t != IGNORE for t in e["labels"]) for e in examples) / len(examples)
    h, f, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = shape["num_key_value_heads"] * h // shape["num_attention_heads"]
    decoder = layers * (2 * h * h + 2 * h * kv + 3 * h * f)
    head = h * 32000
    parameters = decoder + 2 * head
    sequences = args.steps * args.batch_size
    tokens = sequences * mean_tokens
    seconds = report["train_seconds"]
    flops = 6 * (decoder * tokens + head * sequences * mean_answer)
    achieved = flops / seconds / 1e9
    row = {
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "precision": report["precision"],
        "parameters (M)": round(parameters / 1e6, 1),
        "examples": report["train_examples"],
        "mean tokens per example": round(mean_tokens),
        "steps x batch": f"{args.steps} x {args.batch_size}",
        "train s": round(seconds, 1),
        "tokens/s": round(tokens / seconds),
        "GFLOP/s": round(achieved, 1),
        "MFU vs same-run peak": round(achieved / peak, 3),
        "validation loss before -> after": f"{report['validation_loss_before']:.3f} -> {report['validation_loss_after']:.3f}",
    }
    for key, value in row.items():
        print(f"{key:>32}  {value}")
    write_json(args.json, {"matmul_peak_gflops": peak, **row})


if __name__ == "__main__":
    main()
