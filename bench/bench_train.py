"""Benchmark `prox train`: training tokens/s and MFU of full fine-tuning on sft-data examples.

The examples come from the shipped example corpus through the real `prox sft-data` code:
doc-level labels from the rule programmer, every chunk labelled `keep_doc()` (the labels do not
change the speed). The model has the released 0.3B refining LM's shape with random weights
(`--shape small` for a quick CPU run). Tokens counted are the examples' own tokens, padding
excluded; MFU counts 6 x parameters FLOPs per token against a same-run matmul peak (bf16 on a
GPU, fp32 on a CPU).

    python bench/bench_train.py --steps 30 --batch-size 16            # on a GPU
    python bench/bench_train.py --shape small --steps 5 --batch-size 4  # on a CPU
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
from pathlib import Path

from bench_lm import matmul_peak
from benchlib import LLAMA2, REPO, write_json

CORPUS = REPO / "examples" / "web_docs.jsonl.gz"


def annotations(path: Path, tokenizer_dir: str) -> None:
    """Annotation records in `prox annotate`'s format, labelled by rules instead of a teacher."""
    from proxkit.chunking import Chunker
    from proxkit.io.readers import Document
    from proxkit.programmers import make_programmer
    from proxkit.tokenizer import load_tokenizer

    with gzip.open(CORPUS, "rt", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    documents = [Document(r["id"], r["text"], r, "corpus", i) for i, r in enumerate(records)]
    programs = make_programmer("rules").write("doc", documents)
    chunks = Chunker(load_tokenizer(tokenizer_dir).backend)([d.text for d in documents])
    ok = {"ok": True, "attempts": [], "error": None}
    with path.open("w", encoding="utf-8") as out:
        for document, written, document_chunks in zip(documents, programs, chunks):
            chunk_records = [
                {**ok, "first_line": c.first_line, "last_line": c.last_line, "text": c.text,
                 "program": "keep_doc()"}
                for c in document_chunks
            ]  # fmt: skip
            record = {
                "id": document.id,
                "text": document.text,
                "doc": {**ok, "program": written.program},
                "chunks": chunk_records,
            }
            out.write(json.dumps(record) + "\n")


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

    from proxkit.synth.sft import SFTConfig, write_sft_data
    from proxkit.testing import REFINING_LM_0_3B, SMALL, random_llama
    from proxkit.train.trainer import TrainConfig, read_examples, train

    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    peak = matmul_peak(torch, device, torch.bfloat16 if on_gpu else torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        annotations(folder / "annotations.jsonl", args.tokenizer)
        write_sft_data(
            SFTConfig(str(folder / "annotations.jsonl"), str(folder / "sft"), args.tokenizer, 0.05)
        )
        examples, _ = read_examples(folder / "sft" / "train.jsonl", args.max_length)
        mean_tokens = sum(len(e["input_ids"]) for e in examples) / len(examples)
        shape = REFINING_LM_0_3B if args.shape == "0.3b" else SMALL
        model = random_llama(folder / "base", Path(args.tokenizer), **shape)
        parameters = sum(p.numel() for p in model.parameters())
        del model
        report = train(
            TrainConfig(
                str(folder / "sft"), str(folder / "base"), str(folder / "out"),
                max_steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
                learning_rate=1e-4, logging_steps=max(args.steps // 3, 1),
            ),
            progress=False,
        )  # fmt: skip
    tokens = args.steps * args.batch_size * mean_tokens
    seconds = report["train_seconds"]
    achieved = 6 * parameters * tokens / seconds / 1e9
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
