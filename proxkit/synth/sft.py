"""`prox sft-data`: annotations become supervised fine-tuning examples in the exact chat format
of the refining models.

Prompts come from the builders inference uses (`doc_prompts`, `Chunker`, `chunk_prompts`), so
training and inference cannot drift: each annotated chunk must be the chunk the student will be
shown, and annotations chunked with another tokenizer or chunk size are refused. The answer is
the program's canonical text, rendered as the chat format renders an assistant turn, and stored
as token ids next to the prompt's. Each document goes wholly to train or to validation (a
seeded hash of its id); the validation documents' annotations are also written to
`heldout.jsonl`, for `prox evaluate`. With `deletion_only`, a chunk program keeps only its
deletions (`ops.is_deletion`), so the student learns what a deletion-only run applies; the
operations left out are counted in the manifest (a program left empty becomes `keep_doc()`).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxkit.chunking import DEFAULT_CHUNK_TOKENS, Chunker
from proxkit.config import ConfigError
from proxkit.io.writers import fresh_folder
from proxkit.options import option
from proxkit.program.ops import Program, is_deletion
from proxkit.program.parser import parse
from proxkit.programmers.base import STAGES
from proxkit.prompts import DEFAULT_DOC_TOKENS, answer_ids, answer_text, chunk_prompts, doc_prompts
from proxkit.seeded import priority
from proxkit.tokenizer import TokenizerInfo, load_tokenizer

SPLITS = ("train", "validation")


@dataclass(frozen=True)
class SFTConfig:
    annotations: str = option("", "A prox annotate folder or annotations file.", argument=True)
    output: str = option("", "Output folder.", short="-o", required=True)
    tokenizer: str = option(
        "gair-prox/web-chunk-refining-lm", "The student model's tokenizer (folder or Hub id)."
    )
    validation_fraction: float = option(0.1, "Share of documents held out.")
    seed: int = option(0, "Split seed.")
    stages: tuple[str, ...] = option(STAGES, "Stages to make examples of: doc, chunk or doc,chunk.")
    max_doc_tokens: int = option(DEFAULT_DOC_TOKENS, "Token limit of a doc-level prompt.")
    max_chunk_tokens: int = option(
        DEFAULT_CHUNK_TOKENS, "Token budget of a chunk (the annotations' own)."
    )
    deletion_only: bool = option(
        False, "Chunk programs keep only their deletions; the operations left out are counted."
    )
    overwrite: bool = option(False, "Replace the output.")

    def __post_init__(self) -> None:
        if not self.annotations or not self.output:
            raise ConfigError("sft-data needs annotations and an output folder")
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError("validation_fraction must be in [0, 1)")


def split_of(doc_id: str, seed: int, validation_fraction: float) -> str:
    share = priority(seed, doc_id, salt="split") / 2**64
    return "validation" if share < validation_fraction else "train"


def read_annotations(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, record) per line; a line that is not a usable record gives its reason."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, f"not JSON: {exc}"
                continue
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                yield number, "not an annotation record (no text)"
            elif "id" not in record:
                yield number, "not an annotation record (no id)"
            else:
                yield number, record


def annotations_file(path: str) -> Path:
    given = Path(path)
    return given / "annotations.jsonl" if given.is_dir() else given


def _example(doc_id: str, stage: str, index: int | None, prompt, answer: str, tokenizer) -> dict:
    return {
        "id": f"{doc_id}/{stage}" + ("" if index is None else f"-{index}"),
        "doc_id": doc_id,
        "stage": stage,
        "prompt": prompt.text,
        "completion": answer_text(tokenizer, prompt, answer),
        "prompt_ids": list(prompt.token_ids),
        "completion_ids": list(answer_ids(tokenizer, prompt, answer)),
    }


def examples_of(
    record: dict[str, Any], tokenizer: TokenizerInfo, chunker: Chunker, config: SFTConfig
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The training examples of one annotated document, and what was left out and why."""
    examples: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    doc_id = str(record["id"])
    doc = record.get("doc")
    if "doc" in config.stages and doc:
        if doc.get("ok") and doc.get("program") in ("keep_doc()", "drop_doc()"):
            prompt = doc_prompts([record["text"]], tokenizer, config.max_doc_tokens)[0]
            examples.append(_example(doc_id, "doc", None, prompt, doc["program"], tokenizer))
        else:
            skipped["doc: teacher failed"] += 1
    annotated = record.get("chunks") or []
    if "chunk" in config.stages and annotated:
        chunks = chunker([record["text"]])[0]
        seen = [(c["text"], c["first_line"], c["last_line"]) for c in annotated]
        if seen != [(c.text, c.first_line, c.last_line) for c in chunks]:
            skipped["chunk: chunked with another tokenizer or chunk size"] += len(annotated)
            return examples, skipped
        prompts = chunk_prompts(chunks, tokenizer)
        for index, (entry, prompt) in enumerate(zip(annotated, prompts)):
            if entry.get("ok") and isinstance(entry.get("program"), str):
                program = entry["program"]
                if config.deletion_only:
                    program, left_out = deletions_of(program)
                    if left_out:
                        skipped["chunk: non-deletion operations left out"] += left_out
                examples.append(_example(doc_id, "chunk", index, prompt, program, tokenizer))
            else:
                skipped["chunk: teacher failed"] += 1
    return examples, skipped


def deletions_of(program_text: str) -> tuple[str, int]:
    """The program with only its deletions, canonical; and how many operations it lost."""
    operations = parse(program_text).operations
    kept = tuple(op for op in operations if is_deletion(op))
    return Program(kept).to_text() or "keep_doc()", len(operations) - len(kept)


def write_sft_data(config: SFTConfig) -> dict[str, Any]:
    source = annotations_file(config.annotations)
    if not source.is_file():
        raise FileNotFoundError(f"no annotations at {source}")
    out = fresh_folder(config.output, config.overwrite)
    tokenizer = load_tokenizer(config.tokenizer)
    chunker = Chunker(tokenizer.backend, config.max_chunk_tokens)
    counts: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    documents = {split: 0 for split in SPLITS}
    files = {split: (out / f"{split}.jsonl").open("w", encoding="utf-8") for split in SPLITS}
    heldout = (out / "heldout.jsonl").open("w", encoding="utf-8")
    rejected = 0
    try:
        for number, record in read_annotations(source):
            if isinstance(record, str):
                rejected += 1
                print(f"skipped {source}:{number}: {record}", file=sys.stderr)
                continue
            split = split_of(str(record["id"]), config.seed, config.validation_fraction)
            examples, left_out = examples_of(record, tokenizer, chunker, config)
            skipped.update(left_out)
            documents[split] += 1
            for example in examples:
                files[split].write(json.dumps(example, ensure_ascii=False) + "\n")
                counts[f"{split} {example['stage']}"] += 1
            if split == "validation":
                heldout.write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        for handle in (*files.values(), heldout):
            handle.close()
    manifest = {
        "annotations": str(source),
        "tokenizer": config.tokenizer,
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "validation_fraction": config.validation_fraction,
        "seed": config.seed,
        "max_doc_tokens": config.max_doc_tokens,
        "max_chunk_tokens": config.max_chunk_tokens,
        "deletion_only": config.deletion_only,
        "documents": documents,
        "examples": dict(sorted(counts.items())),
        "left_out": dict(sorted(skipped.items())),
        "unreadable_annotation_lines": rejected,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
