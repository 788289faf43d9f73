"""Language-model programmers: what every model backend shares.

A backend (transformers, vLLM, an OpenAI-compatible server) only has to turn prompts into
completions, and, for the one-pass doc level, give next-token log-probabilities. This module
builds the exact prompts (`proxkit.prompts`), chunks documents (`proxkit.chunking`), sends each
distinct prompt once (boilerplate chunks recur across a crawl), joins the per-chunk programs of
a document with "\\n" as the reference does, and turns doc-level scores into programs.

Chunk programs are generated in the background where the backend can (`submit`): a runner
hands over the next batch's prompts while the model still works on the last ones. Every stage
counts the model's work (prompts and their tokens, generated tokens, outputs that hit the token
limit) for the summary and for throughput and MFU figures.

Doc level in one forward pass: the answer is `keep_doc()` or `drop_doc()`, so instead of
generating, the backend returns the log-probabilities of the two answers' first differing
token after the prompt; `keep_score` = p(keep) / (p(keep) + p(drop)). With the default
threshold of 0.5 this picks the program greedy decoding would write.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxkit.chunking import Chunk, Chunker, chunk_content
from proxkit.io.readers import Document
from proxkit.programmers.base import STAGES, BackendCannot, Pending, Stage, Written
from proxkit.programmers.grammar import ProgramGrammar, complete_lines
from proxkit.prompts import Prompt, Truncation, answer_text, chunk_prompts, doc_prompts
from proxkit.tokenizer import TokenizerInfo, load_tokenizer

KEEP, DROP = "keep_doc()", "drop_doc()"
ANSWER_CONTEXT = 64


@dataclass(frozen=True)
class Completion:
    """What a model wrote for one prompt."""

    text: str
    tokens: int = 0  # generated tokens, end of sequence excluded
    hit_limit: bool = False  # stopped by the token limit, not by the model


Completions = Callable[[], list["Completion | Exception"]]


class Backend(Protocol):
    """What a model backend provides. It may also offer `submit(prompts, max_new_tokens,
    grammars=None) -> Completions`, which returns before the completions are done, and
    `stats()` with backend-wide counters."""

    name: str
    tokenizer: TokenizerInfo

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int) -> list[Completion]:
        """Greedy completions, in input order; a failed request is raised as GenerationError
        or returned as an exception instance in its slot."""
        ...

    def next_token_logprobs(
        self, prompts: Sequence[Prompt], candidates: Sequence[int]
    ) -> list[list[float]]:
        """For each prompt, the log-probability of each candidate token id as the next token."""
        ...


class GenerationError(RuntimeError):
    """A model call that failed for good (after retries); the document is kept unrefined."""


@dataclass(frozen=True)
class DocScoring:
    """How the doc level decides: `forward` (one pass, scores) or `generate` (greedy text).

    `keep_threshold`: drop when keep_score < this. `keep_fraction`: instead keep the best
    scoring fraction of each batch (a streaming approximation of a corpus-wide quantile).
    """

    method: str = "forward"
    keep_threshold: float = 0.5
    keep_fraction: float | None = None


@dataclass
class ModelWork:
    """The work one stage gave the model: prompts and their tokens (attention over a prompt
    costs its length squared), and for generation the tokens written, the context each was
    written in, their lengths, and how many outputs hit the token limit."""

    prompts: int = 0
    prompt_tokens: int = 0
    prompt_tokens_squared: int = 0
    generated_tokens: int = 0
    generated_context: int = 0
    at_token_limit: int = 0
    output_tokens: Counter = field(default_factory=Counter)  # length -> outputs

    def add_prompts(self, prompts: Sequence[Prompt]) -> None:
        self.prompts += len(prompts)
        for prompt in prompts:
            length = len(prompt.token_ids)
            self.prompt_tokens += length
            self.prompt_tokens_squared += length * length

    def add_completion(self, completion: Completion, prompt_tokens: int) -> None:
        n = completion.tokens
        self.generated_tokens += n
        self.generated_context += n * prompt_tokens + n * (n - 1) // 2
        self.at_token_limit += completion.hit_limit
        self.output_tokens[n] += 1


@dataclass
class ProgramCache:
    """Results (completions, keep scores) of prompts already seen, bounded; counts hits."""

    max_entries: int = 100_000
    entries: dict[str, Any] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0

    def split(self, prompts: Sequence[Prompt]) -> tuple[list[str | None], list[int]]:
        """Known completions (None where unknown) and the indices of distinct unknown prompts."""
        known: list[Any] = []
        first_seen: dict[str, int] = {}
        todo: list[int] = []
        for index, prompt in enumerate(prompts):
            cached = self.entries.get(prompt.text)
            known.append(cached)
            if cached is not None:
                self.hits += 1
            elif prompt.text in first_seen:
                self.hits += 1  # the same prompt twice in one batch is sent once
            else:
                first_seen[prompt.text] = index
                todo.append(index)
                self.misses += 1
        return known, todo

    def store(self, prompt: Prompt, result: Any) -> None:
        if len(self.entries) >= self.max_entries:
            self.entries.clear()
        self.entries[prompt.text] = result


def answer_separator(tokenizer: TokenizerInfo) -> str:
    """What the chat format puts between the prompt and the answer (Llama-2: a space), read
    from the assistant turn that training renders (`prompts.answer_text`)."""
    probe = doc_prompts(["x"], tokenizer)[0]
    continuation = answer_text(tokenizer, probe, KEEP)
    return continuation[: continuation.index(KEEP)]


def answer_tokens(
    tokenizer: TokenizerInfo, prompt_text: str, separator: str = " "
) -> tuple[list[int], int, int]:
    """(shared prefix, keep token, drop token): where the two answers first differ after the
    prompt, tokenized as the model sees them (after `separator`, as training renders them)."""
    encode = tokenizer.backend.encode
    base = encode(prompt_text, add_special_tokens=False).ids
    keep = encode(f"{prompt_text}{separator}{KEEP}", add_special_tokens=False).ids[len(base) :]
    drop = encode(f"{prompt_text}{separator}{DROP}", add_special_tokens=False).ids[len(base) :]
    for index, (k, d) in enumerate(zip(keep, drop)):
        if k != d:
            return keep[:index], k, d
    raise ValueError("keep_doc() and drop_doc() tokenize identically")


ChunkInputs = tuple[list[Chunk], list[Prompt]]  # one document's chunks and their prompts


def chunk_inputs(
    texts: Sequence[str], tokenizer: TokenizerInfo, chunker: Chunker
) -> list[ChunkInputs]:
    """Each document's chunks and chunk prompts (the prompts tokenized in one batch)."""
    per_document = chunker(texts)
    prompts = iter(chunk_prompts([c for chunks in per_document for c in chunks], tokenizer))
    return [(chunks, list(itertools.islice(prompts, len(chunks)))) for chunks in per_document]


@dataclass(frozen=True)
class PromptBuilder:
    """A batch's model inputs for the stages one model writes, from the documents' texts
    alone: a picklable value, so a runner can build them in worker processes, ahead of the
    model and away from its thread and interpreter lock (`pipeline/overlap.py`). What it
    builds is what `LMProgrammer` builds for itself without one."""

    tokenizer: str  # loaded by name where the inputs are built...
    fingerprint: str  # ... and checked to be the model's
    stages: tuple[Stage, ...]
    max_doc_tokens: int
    doc_truncation: Truncation
    max_chunk_tokens: int

    def __call__(self, texts: Sequence[str]) -> dict[Stage, list]:
        tokenizer, chunker = _builder_tools(self.tokenizer, self.fingerprint, self.max_chunk_tokens)
        built: dict[Stage, list] = {}
        if "doc" in self.stages:
            built["doc"] = doc_prompts(texts, tokenizer, self.max_doc_tokens, self.doc_truncation)
        if "chunk" in self.stages:
            built["chunk"] = chunk_inputs(texts, tokenizer, chunker)
        return built


@functools.lru_cache(maxsize=2)
def _builder_tools(tokenizer: str, fingerprint: str, max_chunk_tokens: int):
    """The tokenizer and chunker of a worker process, loaded once (their caches then serve
    every batch the process builds)."""
    loaded = load_tokenizer(tokenizer)
    if loaded.fingerprint() != fingerprint:
        raise RuntimeError(f"tokenizer {tokenizer!r} loads differently here than the model's")
    return loaded, Chunker(loaded.backend, max_chunk_tokens, loaded.words)


class LMProgrammer:
    """A programmer backed by a language model (see `Backend`)."""

    parallel = False  # holds a model: runs in the main process, batches go to the backend

    def __init__(
        self,
        backend: Backend,
        doc_scoring: DocScoring = DocScoring(),
        max_chunk_tokens: int = 1500,
        max_doc_tokens: int = 2000,
        doc_truncation: Truncation = "document",
        doc_max_new_tokens: int = 16,
        chunk_max_new_tokens: int = 256,
        cache_entries: int = 100_000,
        constrained: bool = True,
        deletion_only: bool = False,
    ) -> None:
        self.backend = backend
        self.name = backend.name
        self.tokenizer = backend.tokenizer
        self.doc_scoring = doc_scoring
        self.max_doc_tokens = max_doc_tokens
        self.doc_truncation = doc_truncation
        self.doc_max_new_tokens = doc_max_new_tokens
        self.chunk_max_new_tokens = chunk_max_new_tokens
        self.max_chunk_tokens = max_chunk_tokens
        self.chunker = Chunker(self.tokenizer.backend, max_chunk_tokens, self.tokenizer.words)
        # One cache per stage: a model serving both stages reports each stage's hit rate.
        self.caches = {stage: ProgramCache(cache_entries) for stage in STAGES}
        self.work = {stage: ModelWork() for stage in STAGES}
        self.constrained = constrained
        self.deletion_only = deletion_only  # the grammar then allows deletions only
        if constrained and not getattr(backend, "supports_grammars", False):
            raise BackendCannot(
                f"--constrained: the backend of {backend.name!r} cannot keep generation inside "
                "the grammar; use another backend or --no-constrained"
            )
        if doc_scoring.method == "forward" and not hasattr(backend, "next_token_logprobs"):
            raise BackendCannot(
                f"--doc-scoring forward: the backend of {backend.name!r} gives no next-token "
                "log-probabilities; use --doc-scoring generate"
            )
        self.answers: dict[str, tuple[list[int], int, int]] = {}
        self.separator = answer_separator(self.tokenizer)

    def write(self, stage: Stage, documents: Sequence[Document]) -> list[Written]:
        return self.submit(stage, documents)()

    def submit(
        self, stage: Stage, documents: Sequence[Document], prepared: list | None = None
    ) -> Pending:
        """Start a batch; the model may still be writing when this returns. `prepared`: the
        documents' inputs for this stage from `prompt_builder`, if a runner built them."""
        if stage == "doc":
            return self._doc(documents, prepared)
        return self._chunk(documents, prepared)

    def prompt_builder(self, stages: Sequence[Stage]) -> PromptBuilder:
        """What builds this programmer's inputs for `stages` elsewhere (see PromptBuilder)."""
        return PromptBuilder(
            self.tokenizer.name,
            self.tokenizer_fingerprint,
            tuple(stages),
            self.max_doc_tokens,
            self.doc_truncation,
            self.max_chunk_tokens,
        )

    @functools.cached_property
    def tokenizer_fingerprint(self) -> str:
        return self.tokenizer.fingerprint()

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def _submit(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int,
        grammars: Sequence[ProgramGrammar] | None,
    ) -> Completions:
        extra = (grammars,) if grammars is not None else ()
        submit = getattr(self.backend, "submit", None)
        if submit is not None:
            return submit(prompts, max_new_tokens, *extra)
        done = self.backend.generate(prompts, max_new_tokens, *extra)  # type: ignore[call-arg]
        return lambda: done

    def _complete(
        self,
        stage: Stage,
        prompts: Sequence[Prompt],
        max_new_tokens: int,
        grammars: Sequence[ProgramGrammar],
    ) -> Callable[[], list[str | Exception]]:
        """Completions through the cache, sent now and collected when the result is called;
        failures come back as exceptions in their slot."""
        cache, work = self.caches[stage], self.work[stage]
        known, todo = cache.split(prompts)
        sent = [prompts[i] for i in todo]
        chosen = [grammars[i] for i in todo] if self.constrained else None
        pending = self._submit(sent, max_new_tokens, chosen) if todo else None
        work.add_prompts(sent)

        def result() -> list[str | Exception]:
            completions = pending() if pending is not None else []
            for position, (index, completion) in enumerate(zip(todo, completions)):
                if isinstance(completion, Exception):
                    known[index] = completion
                    continue
                work.add_completion(completion, len(prompts[index].token_ids))
                text = completion.text
                if chosen is not None:
                    text = complete_lines(chosen[position], text)
                text = text.strip(" ")
                cache.store(prompts[index], text)
                known[index] = text
            by_text = {prompts[i].text: known[i] for i in todo}
            return [k if k is not None else by_text[p.text] for k, p in zip(known, prompts)]

        return result

    def _doc(self, documents: Sequence[Document], prepared: list[Prompt] | None) -> Pending:
        prompts = prepared or doc_prompts(
            [d.text for d in documents], self.tokenizer, self.max_doc_tokens, self.doc_truncation
        )
        truncated = [p.truncated for p in prompts]
        if self.doc_scoring.method == "generate":
            grammars = [ProgramGrammar("doc")] * len(prompts)
            outputs = self._complete("doc", prompts, self.doc_max_new_tokens, grammars)
            return lambda: [
                _written(o, {"truncated_prompt": t} if t else {})
                for o, t in zip(outputs(), truncated)
            ]
        scores = self._keep_scores(prompts)
        drop = self._drops(scores)
        written = [
            Written(
                DROP if dropped else KEEP,
                {"keep_score": round(score, 6), **({"truncated_prompt": True} if t else {})},
            )
            for score, dropped, t in zip(scores, drop, truncated)
        ]
        return lambda: written

    def _keep_scores(self, prompts: Sequence[Prompt]) -> list[float]:
        """Keep scores through the cache: each distinct prompt is scored once."""
        known, todo = self.caches["doc"].split(prompts)
        if todo:
            sent = [prompts[i] for i in todo]
            self.work["doc"].add_prompts(sent)
            for index, score in zip(todo, self._score(sent)):
                self.caches["doc"].store(prompts[index], score)
                known[index] = score
        by_text = {prompts[i].text: known[i] for i in todo}
        return [k if k is not None else by_text[p.text] for k, p in zip(known, prompts)]

    def _score(self, prompts: Sequence[Prompt]) -> list[float]:
        # Prompts sharing the answers' tokenization are scored together; with Llama's
        # tokenizer every prompt ends in "[/INST]" and shares one (prefix, keep, drop).
        groups: dict[tuple[tuple[int, ...], int, int], list[int]] = {}
        for index, prompt in enumerate(prompts):
            tail = prompt.text[-ANSWER_CONTEXT:]  # only the prompt's end decides the answer tokens
            if tail not in self.answers:
                self.answers[tail] = answer_tokens(self.tokenizer, tail, self.separator)
            prefix, keep, drop = self.answers[tail]
            groups.setdefault((tuple(prefix), keep, drop), []).append(index)
        results: dict[int, float] = {}
        for (prefix, keep, drop), indices in groups.items():
            extended = [
                dataclasses.replace(prompts[i], token_ids=prompts[i].token_ids + prefix)
                for i in indices
            ]
            for index, (keep_lp, drop_lp) in zip(
                indices, self.backend.next_token_logprobs(extended, [keep, drop])
            ):
                results[index] = 1.0 / (1.0 + math.exp(drop_lp - keep_lp))
        return [results[i] for i in range(len(prompts))]

    def _drops(self, scores: list[float]) -> list[bool]:
        fraction = self.doc_scoring.keep_fraction
        if fraction is None:
            return [score < self.doc_scoring.keep_threshold for score in scores]
        keep_count = round(fraction * len(scores))
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        kept = set(order[:keep_count])
        return [i not in kept for i in range(len(scores))]

    def _chunk(self, documents: Sequence[Document], prepared: list[ChunkInputs] | None) -> Pending:
        inputs = prepared or chunk_inputs([d.text for d in documents], self.tokenizer, self.chunker)
        flat = [chunk for chunks, _ in inputs for chunk in chunks]
        grammars = [
            ProgramGrammar(
                "chunk", c.first_line, c.last_line, chunk_content(c.text), self.deletion_only
            )
            for c in flat
        ]
        prompts = [prompt for _, document_prompts in inputs for prompt in document_prompts]
        pending = self._complete("chunk", prompts, self.chunk_max_new_tokens, grammars)

        def result() -> list[Written]:
            outputs = iter(pending())
            written = []
            for chunks, _ in inputs:
                results = [next(outputs) for _ in chunks]
                failures = [str(r) for r in results if isinstance(r, Exception)]
                if failures:
                    # Nothing is guessed: the document stays unrefined and says why.
                    written.append(
                        Written(None, {"failed": failures[0], "failed_chunks": len(failures)})
                    )
                else:
                    written.append(Written("\n".join(results), {"chunks": len(chunks)}))  # type: ignore[arg-type]
            return written

        return result

    def stats(self, stage: Stage) -> dict[str, Any]:
        cache, work = self.caches[stage], self.work[stage]
        total = cache.hits + cache.misses
        numbers: dict[str, Any] = {
            "prompts": total,
            "cache_hits": cache.hits,
            "cache_hit_rate": round(cache.hits / total, 4) if total else 0.0,
            "model_prompts": work.prompts,
            "prompt_tokens": work.prompt_tokens,
            "prompt_tokens_squared": work.prompt_tokens_squared,
        }
        if work.output_tokens:
            numbers |= {
                "generated_tokens": work.generated_tokens,
                "generated_context": work.generated_context,
                "outputs_at_token_limit": work.at_token_limit,
                "output_tokens": dict(sorted(work.output_tokens.items())),
            }
        return numbers

    def backend_stats(self) -> dict[str, Any]:
        stats = getattr(self.backend, "stats", None)
        return stats() if stats is not None else {}


def _written(output: str | Exception, info: dict[str, Any]) -> Written:
    if isinstance(output, Exception):
        return Written(None, {**info, "failed": str(output)})
    return Written(output, info)
