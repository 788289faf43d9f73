"""What the benchmark scripts share: the Llama-2 tokenizer beside the checkout, the example
corpus, annotations written by the rule programmer as if it were the teacher, a printed table
of result rows, and the optional JSON file."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LLAMA2 = REPO.parent / "shared" / "tokenizers" / "llama2"
CORPUS = REPO / "examples" / "web_docs.jsonl.gz"


def example_records() -> list[dict[str, Any]]:
    with gzip.open(CORPUS, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def distinct_copies(records: list[dict[str, Any]], copies: int) -> list[dict[str, Any]]:
    """The records `copies` times; copy k > 0 ends every line with " k", so no copy's lines
    (hence chunks and prompts) repeat another's, and no program cache can help."""
    return [
        {
            **record,
            "id": f"{record['id']}#{k}",
            "text": record["text"] if k == 0 else record["text"].replace("\n", f" {k}\n"),
        }
        for k in range(copies)
        for record in records
    ]


def build_corpus(path: Path, raw_tokens: int, tokenizer) -> tuple[int, int]:
    """Distinct copies of the example corpus as JSONL (gzipped when `path` ends in .gz), cut
    once `raw_tokens` tokens of text are written: (documents, raw tokens of those written)."""
    base = example_records()
    per_copy = sum(
        len(e)
        for e in tokenizer.encode_batch_fast([r["text"] for r in base], add_special_tokens=False)
    )
    records = distinct_copies(base, max(1, math.ceil(raw_tokens / per_copy)))
    opener = gzip.open if path.suffix == ".gz" else open
    written = counted = 0
    with opener(path, "wt", encoding="utf-8") as out:
        for start in range(0, len(records), 256):
            batch = records[start : start + 256]
            texts = [r["text"] for r in batch]
            for record, encoding in zip(
                batch, tokenizer.encode_batch_fast(texts, add_special_tokens=False)
            ):
                if counted >= raw_tokens:
                    return written, counted
                out.write(json.dumps(record) + "\n")
                written, counted = written + 1, counted + len(encoding)
    return written, counted


def write_copies(path: Path, copies: int) -> tuple[int, float]:
    """`distinct_copies` of the example corpus as gzipped JSONL: (documents, megabytes of text)."""
    records = distinct_copies(example_records(), copies)
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
    return len(records), sum(len(r["text"].encode("utf-8")) for r in records) / 1e6


def per_chunk(program: str, chunks: list) -> list[str]:
    """A whole-document chunk program cut into the programs of its chunks: each line range
    clipped to the chunk's lines, each normalization given to the chunks that hold its source."""
    from proxkit.chunking import chunk_content
    from proxkit.program import Normalize, RemoveLines, parse
    from proxkit.program.ops import operation_to_text

    operations = parse(program).operations
    programs = []
    for chunk in chunks:
        content = chunk_content(chunk.text)
        lines = []
        for op in operations:
            if isinstance(op, Normalize) and op.source in content:
                lines.append(operation_to_text(op))
            elif isinstance(op, RemoveLines):
                start, end = max(op.start, chunk.first_line), min(op.end, chunk.last_line)
                if start <= end:
                    lines.append(operation_to_text(RemoveLines(start, end)))
        programs.append("\n".join(lines) or "keep_doc()")
    return programs


def rule_annotations(
    path: Path, records: list[dict[str, Any]], tokenizer_dir: str, max_chunk_tokens: int = 1500
) -> None:
    """Annotation records in `prox annotate`'s format, with the rule programmer as the teacher:
    its doc program, and for kept documents its chunk program cut chunk by chunk."""
    from proxkit.chunking import Chunker
    from proxkit.io.readers import Document
    from proxkit.programmers import make_programmer
    from proxkit.tokenizer import load_tokenizer

    documents = [Document(r["id"], r["text"], r, "corpus", i) for i, r in enumerate(records)]
    rules = make_programmer("rules")
    doc_programs = rules.write("doc", documents)
    chunk_programs = rules.write("chunk", documents)
    chunker = Chunker(load_tokenizer(tokenizer_dir).backend, max_chunk_tokens)
    chunks = chunker([d.text for d in documents])
    ok = {"ok": True, "attempts": [], "error": None}
    with path.open("w", encoding="utf-8") as out:
        for document, doc, chunk, document_chunks in zip(
            documents, doc_programs, chunk_programs, chunks
        ):
            kept = doc.program == "keep_doc()"
            programs = per_chunk(chunk.program or "keep_doc()", document_chunks)
            chunk_records = [
                {**ok, "first_line": c.first_line, "last_line": c.last_line, "text": c.text,
                 "program": p}
                for c, p in zip(document_chunks, programs)
            ] if kept else []  # fmt: skip
            record = {
                "id": document.id,
                "text": document.text,
                "doc": {**ok, "program": doc.program},
                "chunks": chunk_records,
            }
            out.write(json.dumps(record) + "\n")


def print_table(rows: list[dict[str, Any]], width: int) -> None:
    header = list(rows[0])
    print("  ".join(f"{h:>{width}}" for h in header))
    for row in rows:
        print("  ".join(f"{row[h]!s:>{width}}" for h in header))


def write_json(path: Path | None, data: Any) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))


def train_rule_refiner(
    folder: Path,
    tokenizer_dir: str,
    shape: dict[str, int],
    max_chunk_tokens: int = 1500,
    max_doc_tokens: int = 2000,
    **options: Any,
) -> dict[str, Any]:
    """A random-weight Llama of `shape` fine-tuned by the real `prox sft-data` and `prox train`
    on the rule programmer's programs for the example corpus (`rule_annotations`). Leaves
    `annotations.jsonl`, `sft/`, `base/` and `refiner/` in `folder`; returns `training.json`."""
    from proxkit.synth.sft import SFTConfig, write_sft_data
    from proxkit.testing import random_llama
    from proxkit.train.trainer import TrainConfig, train

    rule_annotations(
        folder / "annotations.jsonl", example_records(), tokenizer_dir, max_chunk_tokens
    )
    write_sft_data(
        SFTConfig(
            str(folder / "annotations.jsonl"), str(folder / "sft"), tokenizer_dir, 0.05,
            max_doc_tokens=max_doc_tokens, max_chunk_tokens=max_chunk_tokens,
        )
    )  # fmt: skip
    random_llama(folder / "base", Path(tokenizer_dir), **shape)
    config = TrainConfig(
        str(folder / "sft"), str(folder / "base"), str(folder / "refiner"), **options
    )
    return train(config, progress=False)


def page_records(folders: list[Path]) -> list[dict[str, Any]]:
    """Records from the HTML pages (.html, .html.gz) under `folders`, sorted by path, turned into
    text as the example corpus was (`examples/build_corpus.py`): one line per block, navigation
    and footers included, as a crawl's text extraction gives it."""
    spec = importlib.util.spec_from_file_location(
        "build_corpus", REPO / "examples" / "build_corpus.py"
    )
    build_corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_corpus)
    records = []
    for folder in folders:
        for path in sorted(folder.rglob("*.htm*")):
            data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            text = build_corpus.html_to_text(data.decode("utf-8", "replace"))
            if text:
                records.append({"id": f"{folder.name}/{path.name}", "text": text})
    return records
