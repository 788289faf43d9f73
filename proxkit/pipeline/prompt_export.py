"""`prox prompts`: write one record per model call with the exact prompt, so a user sees what
the refining model sees (and can send it to any server themselves)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from proxkit.chunking import chunk_documents
from proxkit.io.readers import Document, Fields, Reject, read_inputs
from proxkit.io.writers import RecordWriter
from proxkit.pipeline.records import original_text
from proxkit.prompts import Truncation, chunk_prompts, doc_prompts
from proxkit.tokenizer import TokenizerInfo

BATCH = 256


def prompt_records(
    documents: list[Document],
    stage: str,
    tokenizer: TokenizerInfo,
    max_chunk_tokens: int,
    max_doc_tokens: int,
    truncation: Truncation,
) -> Iterator[dict[str, Any]]:
    texts = [original_text(d) for d in documents]
    if stage == "doc":
        for document, prompt in zip(
            documents, doc_prompts(texts, tokenizer, max_doc_tokens, truncation)
        ):
            yield {
                "id": document.id,
                "stage": "doc",
                "chunk_index": 0,
                "prompt": prompt.text,
                "num_tokens": len(prompt.token_ids),
                "truncated": prompt.truncated,
            }
        return
    per_document = chunk_documents(texts, tokenizer.backend, max_chunk_tokens)
    flat = [chunk for chunks in per_document for chunk in chunks]
    prompts = iter(chunk_prompts(flat, tokenizer))
    for document, chunks in zip(documents, per_document):
        for index, (chunk, prompt) in enumerate(zip(chunks, prompts)):
            yield {
                "id": document.id,
                "stage": "chunk",
                "chunk_index": index,
                "first_line": chunk.first_line,
                "last_line": chunk.last_line,
                "prompt": prompt.text,
                "num_tokens": len(prompt.token_ids),
            }


def export_prompts(
    files: list[str],
    output: Path,
    stage: str,
    tokenizer: TokenizerInfo,
    fields: Fields,
    max_chunk_tokens: int,
    max_doc_tokens: int,
    truncation: Truncation,
    limit: int | None,
    on_reject: Any,
) -> int:
    """Write prompt records; returns how many were written. Rejects go to `on_reject`."""
    written = 0
    documents = (item for item in read_inputs(files, fields) if not _rejected(item, on_reject))
    documents = itertools.islice(documents, limit) if limit is not None else documents
    with RecordWriter(output) as writer:
        while batch := list(itertools.islice(documents, BATCH)):
            for record in prompt_records(
                batch, stage, tokenizer, max_chunk_tokens, max_doc_tokens, truncation
            ):
                writer.write(record)
                written += 1
    return written


def _rejected(item: Document | Reject, on_reject: Any) -> bool:
    if isinstance(item, Reject):
        on_reject(item)
        return True
    return False
