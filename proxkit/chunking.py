"""Split documents into chunks of numbered lines under a token budget, as the reference does.

Every line is prefixed with its 0-based index over the whole document (`[000]`, 3-digit zero
padding, wider past 999). Lines are packed greedily while the sum of each prefixed line's token
count (counted as the reference does, with the BOS token the tokenizer adds to every line)
stays within the budget; a line over the budget is a chunk by itself. All lines of a batch of
documents are tokenized in one call to the Rust tokenizer, which runs on all cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from proxkit.linecount import LineCounter, WordTokens

DEFAULT_CHUNK_TOKENS = 1500


@dataclass(frozen=True)
class Chunk:
    """Numbered lines `first_line..last_line` of one document, joined by "\\n"."""

    text: str
    first_line: int
    last_line: int
    num_tokens: int


def number_lines(text: str) -> list[str]:
    """`[000]first line`, `[001]second line`, ... over the lines of `text`."""
    return [f"[{index:03d}]{line}" for index, line in enumerate(text.split("\n"))]


def chunk_content(numbered: str) -> str:
    """A chunk's text without its `[NNN]` line numbers: where normalize sources must occur."""
    return "\n".join(line.split("]", 1)[1] for line in numbered.split("\n"))


def pack(token_counts: Sequence[int], max_tokens: int = DEFAULT_CHUNK_TOKENS) -> list[range]:
    """The reference's greedy packing of line token counts into ranges of line indices."""
    ranges: list[range] = []
    start = 0
    total = 0
    for index, count in enumerate(token_counts):
        if total + count <= max_tokens:
            total += count
            continue
        if index > start:
            ranges.append(range(start, index))
        if count > max_tokens:
            ranges.append(range(index, index + 1))
            start, total = index + 1, 0
        else:
            start, total = index, count
    if start < len(token_counts):
        ranges.append(range(start, len(token_counts)))
    return ranges


class Chunker:
    """Chunks documents exactly as the reference does. Keeps a `LineCounter`, whose cache of
    word ids makes later batches faster; reuse one Chunker for a whole run (`words`: a cache
    shared with prompt building, `TokenizerInfo.words`)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_tokens: int = DEFAULT_CHUNK_TOKENS,
        words: WordTokens | None = None,
    ) -> None:
        self.max_tokens = max_tokens
        self.counter = LineCounter(tokenizer, words)

    def __call__(self, texts: Sequence[str]) -> list[list[Chunk]]:
        """Chunks for every document; an empty document has no chunks (the reference skips it)."""
        documents = [text.split("\n") if text else [] for text in texts]
        chunks: list[list[Chunk]] = []
        for lines, counts in zip(documents, self.counter.count(documents)):
            chunks.append(
                [
                    Chunk(
                        text="\n".join(f"[{i:03d}]{lines[i]}" for i in r),
                        first_line=r.start,
                        last_line=r.stop - 1,
                        num_tokens=sum(counts[r.start : r.stop]),
                    )
                    for r in pack(counts, self.max_tokens)
                ]
            )
        return chunks


def chunk_documents(
    texts: Sequence[str], tokenizer: Tokenizer, max_tokens: int = DEFAULT_CHUNK_TOKENS
) -> list[list[Chunk]]:
    """Chunks for every document (a one-off `Chunker`; keep a Chunker to reuse its cache)."""
    return Chunker(tokenizer, max_tokens)(texts)
