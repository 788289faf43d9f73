"""`prox annotate`: a teacher LLM labels a sample of a corpus, the first step of distillation.

The sample is seeded and stratified by length (`sample`). Doc level: the teacher scores
educational value and format/readability on the rubric, and the scores map to `keep_doc()` or
`drop_doc()` by the configured minimums. Chunk level (documents not dropped): the document is
chunked exactly as the chunk stage does it, and for each chunk the teacher either writes the
program (`teacher_mode="program"`) or returns the chunk's text cleaned, from which the
deletion program is derived and its fidelity recorded (`"clean"`, `clean.py`). Every answer
is validated (`teacher`, `clean`); an invalid one is asked again once, with the reason, then
recorded as a failure. An answer cut by the token limit, or a request that failed for good, is
recorded at once (asking the same again would give the same). Each record keeps the
teacher's name, the rubric versions and every raw response. The output grows batch by batch,
so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from proxkit.chunking import DEFAULT_CHUNK_TOKENS, Chunk, Chunker, chunk_content
from proxkit.config import ConfigError, to_plain
from proxkit.io.readers import Document, Fields, Reject, list_files, read_inputs
from proxkit.io.rejects import RejectLog
from proxkit.options import LABELS, SAMPLE, SERVERS, option
from proxkit.program.ops import Program
from proxkit.programmers.base import STAGES
from proxkit.programmers.lm import Completion
from proxkit.programmers.openai import OpenAIClient, OpenAISettings
from proxkit.synth.clean import Derivation, read_clean_answer
from proxkit.synth.rubric import Rubric, load_rubric
from proxkit.synth.sample import sample_documents, stratum
from proxkit.synth.teacher import DocLabel, Invalid, read_chunk_answer, read_doc_answer
from proxkit.tokenizer import load_tokenizer

RETRY_MESSAGE = (
    "That answer cannot be used: {reason}. Answer again, following the instructions exactly."
)
TEACHER_MODES = ("program", "clean")
NOT_ASKED_AGAIN = ("request_failed", "truncated_by_limit")


@dataclass(frozen=True)
class AnnotateConfig:
    inputs: tuple[str, ...] = option(
        (),
        "Input files, folders, globs or fsspec URLs (.jsonl[.gz|.zst], .parquet).",
        argument=True,
    )
    output: str = option("", "Output folder.", short="-o", required=True)
    teacher_model: str = option("", "The teacher's model name on the server.")
    api_base: str | None = option(
        None,
        "The OpenAI-compatible server (with /v1/chat/completions), e.g. http://127.0.0.1:8000/v1.",
    )
    api_key_env: str = option(
        "OPENAI_API_KEY", "Environment variable holding the API key.", SERVERS
    )
    max_concurrency: int = option(16, "Requests in flight at once.", SERVERS)
    request_timeout: float = option(300.0, "Seconds per request.", SERVERS)
    max_retries: int = option(4, "Retries on 429/5xx/connection errors, with backoff.", SERVERS)
    tokenizer: str = option(
        "gair-prox/web-chunk-refining-lm",
        "The student model's tokenizer (folder or Hub id): chunks are cut as it will see them.",
        LABELS,
    )
    sample_size: int = option(1000, "Documents to annotate.", SAMPLE)
    seed: int = option(0, "Sampling seed.", SAMPLE)
    stages: tuple[str, ...] = option(STAGES, "Stages to annotate: doc, chunk or doc,chunk.")
    teacher_mode: str = option(
        "program",
        "Chunk level: 'program' (the teacher writes each chunk's program) or 'clean' (it "
        "returns the chunk cleaned; the deletion program is derived from the difference).",
    )
    deletion_only: bool = option(
        False,
        "Chunk programs may only delete: program mode refuses other operations; clean mode "
        "derives only deletions.",
    )
    doc_rubric: str = option("doc-v1", "Doc-level rubric: a name or a YAML file.", LABELS)
    chunk_rubric: str | None = option(
        None,
        "Chunk-level rubric: a name or a YAML file. Unset: chunk-v1, chunk-deletion-v1 with "
        "--deletion-only, clean-v1 with --teacher-mode clean.",
        LABELS,
    )
    min_educational_value: int = option(
        2, "Keep a document whose educational value is at or above this.", LABELS
    )
    min_format_readability: int = option(
        2, "Keep a document whose format/readability is at or above this.", LABELS
    )
    max_chunk_tokens: int = option(
        DEFAULT_CHUNK_TOKENS, "Token budget of a chunk of numbered lines.", LABELS
    )
    max_document_chars: int = option(
        30_000, "Characters of a document the teacher reads at doc level.", LABELS
    )
    doc_max_new_tokens: int = option(256, "Token limit of a doc-level answer.", SERVERS)
    chunk_max_new_tokens: int = option(1024, "Token limit of a chunk-level answer.", SERVERS)
    clean_max_new_tokens: int = option(
        4096, "Clean mode: token limit of a cleaned chunk (about as long as the chunk).", SERVERS
    )
    max_insertion: int = option(
        20,
        "Clean mode: an answer adding this many characters in a row rewrites, and is refused "
        "(RefineX's filter).",
        LABELS,
    )
    batch_size: int = option(64, "Documents per wave of requests, written together.", SAMPLE)
    text_field: str = option("text", "Record field holding the document text.", SAMPLE)
    id_field: str = option(
        "id", "Record field holding the id; a content hash is used where absent.", SAMPLE
    )
    overwrite: bool = option(False, "Replace the output.")

    def __post_init__(self) -> None:
        if not self.inputs or not self.output or not self.teacher_model:
            raise ConfigError("annotate needs inputs, an output folder and a teacher model")
        if not set(self.stages) <= set(STAGES) or not self.stages:
            raise ConfigError(f"stages must be a non-empty subset of {STAGES}")
        if self.sample_size < 1 or self.batch_size < 1:
            raise ConfigError("sample_size and batch_size must be >= 1")
        if self.teacher_mode not in TEACHER_MODES:
            raise ConfigError(f"teacher_mode must be one of {TEACHER_MODES}")
        if self.chunk_rubric is None:
            packaged = "clean-v1" if self.teacher_mode == "clean" else "chunk-v1"
            if self.teacher_mode == "program" and self.deletion_only:
                packaged = "chunk-deletion-v1"
            object.__setattr__(self, "chunk_rubric", packaged)

    def chunk_answers(self) -> tuple[str, ...]:
        """What the chunk rubric may ask for in this mode (`rubric.ANSWERS`)."""
        if self.teacher_mode == "clean":
            return ("cleaned_text",)
        return ("deletion_program",) if self.deletion_only else ("program", "deletion_program")


class AnnotationExists(RuntimeError):
    """An output folder made with another configuration."""


@dataclass(frozen=True)
class Answer:
    """A validated teacher answer (`value`), or why there is none (`error`), with every
    attempt's raw response."""

    value: Any
    error: Invalid | None
    attempts: tuple[dict[str, Any], ...]


class Teacher:
    def __init__(self, config: AnnotateConfig) -> None:
        self.model = config.teacher_model
        self.client = OpenAIClient(OpenAISettings.from_config(config, api="chat"))

    def ask(
        self,
        conversations: Sequence[list[dict[str, str]]],
        readers: Sequence[Callable[[str], Any]],
        max_tokens: int,
    ) -> list[Answer]:
        """Each conversation once; an answer that does not validate is asked again once."""
        first = self._send(conversations, max_tokens)
        results = [_check(response, reader) for response, reader in zip(first, readers)]
        again = [
            i
            for i, (_, error) in enumerate(results)
            if error is not None and error.kind not in NOT_ASKED_AGAIN
        ]
        retried = self._send(
            [
                [
                    *conversations[i],
                    {"role": "assistant", "content": _text(first[i])},
                    {"role": "user", "content": RETRY_MESSAGE.format(reason=results[i][1].message)},
                ]
                for i in again
            ],
            max_tokens,
        )
        second = dict(zip(again, retried))
        answers = []
        for i, (value, error) in enumerate(results):
            attempts = [_attempt(first[i], error)]
            if i in second:
                value, error = _check(second[i], readers[i])
                attempts.append(_attempt(second[i], error))
            answers.append(Answer(value, error, tuple(attempts)))
        return answers

    def _send(
        self, conversations: Sequence[list[dict[str, str]]], max_tokens: int
    ) -> list[Completion | Exception]:
        if not conversations:
            return []
        payloads = [
            {"model": self.model, "messages": c, "max_tokens": max_tokens, "temperature": 0.0}
            for c in conversations
        ]
        return self.client.complete(payloads)


def _check(
    response: Completion | Exception, reader: Callable[[str], Any]
) -> tuple[Any, Invalid | None]:
    if isinstance(response, Exception):
        return None, Invalid("request_failed", str(response))
    if response.hit_limit:
        return None, Invalid("truncated_by_limit", "the answer was cut by the token limit")
    value = reader(response.text)
    return (None, value) if isinstance(value, Invalid) else (value, None)


def _text(response: Completion | Exception) -> str:
    return response.text if isinstance(response, Completion) else str(response)


def _attempt(response: Completion | Exception, error: Invalid | None) -> dict[str, Any]:
    return {
        "response": None if isinstance(response, Exception) else response.text,
        "error": None if error is None else f"{error.kind}: {error.message}",
    }


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Outcome counts over annotation records: what the teacher labelled and what failed."""
    doc: Counter[str] = Counter()
    chunk: Counter[str] = Counter()
    for record in records:
        for counter, entries in (
            (doc, [record["doc"]] if record.get("doc") else []),
            (chunk, record.get("chunks") or []),
        ):
            for entry in entries:
                if entry["ok"]:
                    counter["ok"] += 1
                    if counter is doc:
                        counter[entry["program"]] += 1
                    if len(entry["attempts"]) > 1:
                        counter["fixed on retry"] += 1
                else:
                    counter[f"failed: {entry['error']}"] += 1
        if record.get("chunks_skipped"):
            chunk["documents skipped (dropped at doc level)"] += 1
    summary = {
        "documents": len(records),
        "doc": dict(sorted(doc.items())),
        "chunk": dict(sorted(chunk.items())),
    }
    derived = [
        entry["derivation"]
        for record in records
        for entry in record.get("chunks") or []
        if entry.get("derivation")
    ]
    if derived:
        summary["clean"] = clean_summary(derived)
    return summary


def clean_summary(derived: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How much of the teachers' cleaning the derived programs reproduce, over chunks.

    RefineX discarded answers with fewer than 10 deleted characters; here a chunk with nothing
    to delete is a `keep_doc()` example the student needs, so they are kept and only counted.
    Its other filter (an insertion of 20+ characters) refuses the answer: `max_insertion`."""
    deleted = sum(d["deleted_chars"] for d in derived)
    reproduced = sum(d["reproduced_chars"] for d in derived)
    inexpressible: Counter[str] = Counter()
    for d in derived:
        inexpressible.update(d["inexpressible_chars"])
    return {
        "chunks": len(derived),
        "derived exactly": sum(d["exact"] for d in derived),
        "fidelity (characters)": round(reproduced / deleted, 6) if deleted else 1.0,
        "teacher deleted characters": deleted,
        **{f"inexpressible {kind} characters": n for kind, n in sorted(inexpressible.items())},
        "under 10 deleted characters (kept)": sum(d["deleted_chars"] < 10 for d in derived),
    }


class Annotator:
    def __init__(self, config: AnnotateConfig, teacher: Teacher) -> None:
        self.config = config
        self.teacher = teacher
        self.doc_rubric: Rubric = load_rubric(config.doc_rubric)
        self.chunk_rubric: Rubric = load_rubric(config.chunk_rubric)  # type: ignore[arg-type]
        self.doc_rubric.check_answers(("scores",))
        self.chunk_rubric.check_answers(config.chunk_answers())
        self.chunker = Chunker(load_tokenizer(config.tokenizer).backend, config.max_chunk_tokens)

    def annotate(self, documents: Sequence[Document]) -> list[dict[str, Any]]:
        config = self.config
        records = [self._record(d) for d in documents]
        if "doc" in config.stages:
            answers = self.teacher.ask(
                [
                    self.doc_rubric.messages(document=d.text[: config.max_document_chars])
                    for d in documents
                ],
                [read_doc_answer] * len(documents),
                config.doc_max_new_tokens,
            )
            for record, answer in zip(records, answers):
                record["doc"] = self._doc_annotation(answer)
        chosen = [
            i for i, r in enumerate(records) if r.get("doc", {}).get("program") != "drop_doc()"
        ]
        if "chunk" in config.stages:
            chunks = self.chunker([documents[i].text for i in chosen])
            flat = [(i, c) for i, cs in zip(chosen, chunks) for c in cs]
            answers = self.teacher.ask(
                [self._chunk_request(c) for _, c in flat],
                [self._chunk_reader(c) for _, c in flat],
                config.clean_max_new_tokens
                if config.teacher_mode == "clean"
                else config.chunk_max_new_tokens,
            )
            for i in chosen:
                records[i]["chunks"] = []
            for (i, chunk), answer in zip(flat, answers):
                records[i]["chunks"].append(_chunk_annotation(chunk, answer))
            for record in records:
                if "chunks" not in record:
                    record["chunks"] = None
                    record["chunks_skipped"] = "dropped at doc level"
        return records

    def _chunk_request(self, chunk: Chunk) -> list[dict[str, str]]:
        return self.chunk_rubric.messages(
            chunk=chunk.text,
            text=chunk_content(chunk.text),
            first_line=chunk.first_line,
            last_line=chunk.last_line,
        )

    def _chunk_reader(self, chunk: Chunk) -> Callable[[str], Any]:
        config = self.config
        if config.teacher_mode == "clean":
            return lambda text: read_clean_answer(text, chunk, config.max_insertion)
        return lambda text: read_chunk_answer(text, chunk, config.deletion_only)

    def _record(self, document: Document) -> dict[str, Any]:
        return {
            "id": document.id,
            "source": document.source,
            "position": document.position,
            "text": document.text,
            "stratum": stratum(document.text),
            "teacher": {
                "model": self.config.teacher_model,
                "doc_rubric": self.doc_rubric.version,
                "chunk_rubric": self.chunk_rubric.version,
            },
        }

    def _doc_annotation(self, answer: Answer) -> dict[str, Any]:
        label: DocLabel | None = answer.value
        minimums = {
            "educational_value": self.config.min_educational_value,
            "format_readability": self.config.min_format_readability,
        }
        return {
            "ok": label is not None,
            "program": None if label is None else label.program(*minimums.values()),  # type: ignore[arg-type]
            "scores": None
            if label is None
            else {
                "educational_value": label.educational_value,
                "format_readability": label.format_readability,
            },
            "reason": None if label is None else label.reason,
            "minimums": minimums,
            "error": None if answer.error is None else answer.error.kind,
            "attempts": list(answer.attempts),
        }


def _chunk_annotation(chunk: Chunk, answer: Answer) -> dict[str, Any]:
    """A chunk's annotation; in clean mode with the teacher's text and the derivation."""
    value: Program | Derivation | None = answer.value
    entry: dict[str, Any] = {
        "first_line": chunk.first_line,
        "last_line": chunk.last_line,
        "text": chunk.text,
        "ok": value is not None,
        "program": None,
        "error": None if answer.error is None else answer.error.kind,
        "attempts": list(answer.attempts),
    }
    if isinstance(value, Derivation):
        entry.update(program=value.program_text, cleaned=value.cleaned)
        entry["derivation"] = value.to_json()
    elif value is not None:
        entry["program"] = value.to_text()
    return entry


def prepare(config: AnnotateConfig) -> set[str]:
    """Create or resume the output folder; the ids already annotated."""
    out = Path(config.output)
    saved = out / "config.yaml"
    current = {k: v for k, v in to_plain(config).items() if k != "overwrite"}
    if out.exists() and config.overwrite:
        shutil.rmtree(out)
    elif saved.exists():
        previous = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
        # A setting added since the folder was made reads as its default there.
        defaults = {f.name: f.default for f in fields(AnnotateConfig)}
        differs = sorted(
            k
            for k in current.keys() | previous.keys()
            if current.get(k) != previous.get(k, defaults.get(k))
        )
        if differs:
            raise AnnotationExists(
                f"{out} holds annotations made with other settings ({', '.join(differs)}); "
                "use another folder, or --overwrite to start again"
            )
    elif out.exists() and any(out.iterdir()):
        raise AnnotationExists(f"{out} exists and is not an annotation folder; use --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(yaml.safe_dump(current, sort_keys=False), encoding="utf-8")
    return _complete_ids(out / "annotations.jsonl")


def _complete_ids(path: Path) -> set[str]:
    """Ids of the complete records; a last line cut by a kill is removed."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as handle:
            handle.truncate(end)
    return {json.loads(line)["id"] for line in data[:end].split(b"\n") if line.strip()}


def run_annotate(config: AnnotateConfig, progress: bool = True) -> dict[str, Any]:
    done = prepare(config)
    out = Path(config.output)
    annotator = Annotator(config, Teacher(config))
    for rubric in (annotator.doc_rubric, annotator.chunk_rubric):
        (out / "rubrics").mkdir(exist_ok=True)
        shutil.copy(rubric.path, out / "rubrics" / f"{rubric.version}.yaml")
    counts = Counter()
    rejects = RejectLog(out / "rejects.jsonl")

    def readable():
        fields = Fields(config.text_field, config.id_field)
        for item in read_inputs(list_files(list(config.inputs)), fields):
            if isinstance(item, Reject):
                rejects.add(item)
                continue
            counts["read"] += 1
            yield item

    try:
        sample = sample_documents(readable(), config.sample_size, config.seed)
    finally:
        rejects.close()
    todo = [d for d in sample.documents if d.id not in done]
    bar = tqdm(total=len(todo), desc="annotate", unit="doc", disable=not progress, file=sys.stderr)
    path = out / "annotations.jsonl"
    with path.open("a", encoding="utf-8") as handle:
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start : start + config.batch_size]
            for record in annotator.annotate(batch):
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(batch))
    bar.close()
    with path.open(encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    summary = {
        "teacher": config.teacher_model,
        "rubrics": [annotator.doc_rubric.version, annotator.chunk_rubric.version],
        "documents_read": counts["read"],
        "rejected_records": rejects.count,
        "strata": {"population": sample.populations, "sampled": sample.allocation},
        "annotated_now": len(todo),
        "already_done": len(sample.documents) - len(todo),
        **summarize(records),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
