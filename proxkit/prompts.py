"""Build the exact input of the refining models for both stages.

The released `gair-prox` models read the Llama-2 chat format with the system message below and
the document (doc level) or the `[doc]`-wrapped chunk (chunk level) as the user message. A
tokenizer that carries its own chat template is rendered with it instead, the way
`transformers` renders templates. Prompt text holds the BOS token as text, so it is tokenized
without adding special tokens again.

Doc-level prompts are limited to 2000 tokens. By default the template stays whole and the
document is cut; `truncation="reference"` instead cuts the whole tokenized prompt, as the
reference did (which loses the closing `[/INST]` on long documents).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from proxkit.chunking import Chunk
from proxkit.linecount import _WORDS, SPACE, WordTokens
from proxkit.tokenizer import TokenizerInfo

SYSTEM_MESSAGE = "You are a helpful, respectful and honest assistant."
DEFAULT_DOC_TOKENS = 2000
Truncation = Literal["document", "reference"]


@dataclass(frozen=True)
class Prompt:
    """One model call: the prompt text and its token ids (what the model actually reads)."""

    text: str
    token_ids: tuple[int, ...]
    truncated: bool = False
    user: str = (
        ""  # the user message inside the template, for chat APIs that template it themselves
    )


def llama2_chat(user: str, system: str = SYSTEM_MESSAGE, bos_token: str = "<s>") -> str:
    """The Llama-2 chat format for one system + user turn, generation prompt included."""
    content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{user}".strip()
    return f"{bos_token}[INST] {content} [/INST]"


@lru_cache(maxsize=8)
def compiled_template(source: str):
    """A Jinja template in a sandbox (templates come from model folders and users' files)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = raise_exception
    return environment.from_string(source)


def render_chat(tokenizer: TokenizerInfo, user: str, system: str = SYSTEM_MESSAGE) -> str:
    """Render one system + user turn with the tokenizer's template, else the Llama-2 format."""
    if tokenizer.chat_template is None:
        return llama2_chat(user, system, tokenizer.bos_token or "<s>")
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return compiled_template(tokenizer.chat_template).render(
        messages=messages,
        add_generation_prompt=True,
        bos_token=tokenizer.bos_token or "",
        eos_token=tokenizer.eos_token or "",
    )


def answer_text(tokenizer: TokenizerInfo, prompt: Prompt, answer: str) -> str:
    """What follows `prompt` when the model writes `answer`, end of turn included, exactly as
    the chat format renders an assistant turn (Llama-2: " answer </s>")."""
    if tokenizer.chat_template is None:
        return f" {answer.strip()} {tokenizer.eos_token or '</s>'}"
    messages = [
        {"role": "system", "content": SYSTEM_MESSAGE},
        {"role": "user", "content": prompt.user},
        {"role": "assistant", "content": answer},
    ]
    full = compiled_template(tokenizer.chat_template).render(
        messages=messages,
        add_generation_prompt=False,
        bos_token=tokenizer.bos_token or "",
        eos_token=tokenizer.eos_token or "",
    )
    if not full.startswith(prompt.text):
        raise ValueError("the chat template renders the answer turn without the prompt as prefix")
    return full[len(prompt.text) :]


def answer_ids(tokenizer: TokenizerInfo, prompt: Prompt, answer: str) -> tuple[int, ...]:
    """The token ids the model must produce after `prompt.token_ids` to write `answer`."""
    ids = tokenizer.backend.encode(
        prompt.text + answer_text(tokenizer, prompt, answer), add_special_tokens=False
    ).ids
    if tuple(ids[: len(prompt.token_ids)]) != prompt.token_ids:
        raise ValueError("the answer changes the tokenization of the prompt it follows")
    return tuple(ids[len(prompt.token_ids) :])


def wrap_chunk(chunk_text: str) -> str:
    return f"[doc]\n{chunk_text}\n[/doc]"


def doc_prompts(
    texts: Sequence[str],
    tokenizer: TokenizerInfo,
    max_tokens: int = DEFAULT_DOC_TOKENS,
    truncation: Truncation = "document",
) -> list[Prompt]:
    """Doc-level prompts for a batch of documents, each at most `max_tokens` tokens."""
    if truncation not in ("document", "reference"):
        raise ValueError(f"unknown truncation {truncation!r}; expected 'document' or 'reference'")
    words = WordPrompts.of(tokenizer) if truncation == "document" else None
    prompts = [words.doc(text, max_tokens) if words else None for text in texts]
    rest = [i for i, prompt in enumerate(prompts) if prompt is None]
    if rest:
        tokenized = tokenized_doc_prompts(
            [texts[i] for i in rest], tokenizer, max_tokens, truncation
        )
        for index, prompt in zip(rest, tokenized):
            prompts[index] = prompt
    return prompts  # type: ignore[return-value]


def tokenized_doc_prompts(
    texts: Sequence[str], tokenizer: TokenizerInfo, max_tokens: int, truncation: Truncation
) -> list[Prompt]:
    """`doc_prompts` by the tokenizer alone: every prompt tokenized whole, and a prompt over
    `max_tokens` cut by `_truncate_document` (the way for any tokenizer and template)."""
    rendered = [render_chat(tokenizer, text) for text in texts]
    encodings = tokenizer.backend.encode_batch_fast(rendered, add_special_tokens=False)
    prompts = []
    for text, prompt_text, encoding in zip(texts, rendered, encodings):
        if len(encoding) <= max_tokens:
            prompts.append(Prompt(prompt_text, tuple(encoding.ids), user=text))
        elif truncation == "reference":
            kept = encoding.ids[:max_tokens]
            decoded = tokenizer.backend.decode(kept, skip_special_tokens=False)
            prompts.append(Prompt(decoded, tuple(kept), truncated=True, user=text))
        else:
            prompts.append(_truncate_document(text, tokenizer, max_tokens, len(encoding)))
    return prompts


def _truncate_document(
    text: str, tokenizer: TokenizerInfo, max_tokens: int, full_length: int
) -> Prompt:
    """Cut the document at a token boundary so that the whole templated prompt fits: from the
    document's last token that the template leaves room for, back by the excess until the
    prompt, tokenized again, fits."""
    offsets = tokenizer.backend.encode(text, add_special_tokens=False).offsets
    keep = len(offsets) - (full_length - max_tokens)
    while True:
        cut = offsets[keep - 1][1] if keep > 0 else 0
        prompt_text = render_chat(tokenizer, text[:cut])
        ids = tokenizer.backend.encode(prompt_text, add_special_tokens=False).ids
        if len(ids) <= max_tokens or keep <= 0:
            return Prompt(prompt_text, tuple(ids), truncated=True, user=text[:cut])
        keep -= len(ids) - max_tokens


def chunk_prompts(chunks: Sequence[Chunk], tokenizer: TokenizerInfo) -> list[Prompt]:
    """Chunk-level prompts, one per chunk: word by word where `WordPrompts` applies, the rest
    tokenized in one batch."""
    users = [wrap_chunk(chunk.text) for chunk in chunks]
    rendered = [render_chat(tokenizer, user) for user in users]
    words = WordPrompts.of(tokenizer)
    ids = [words.encode(text) if words else None for text in rendered]
    rest = [i for i, found in enumerate(ids) if found is None]
    if rest:
        encodings = tokenizer.backend.encode_batch_fast(
            [rendered[i] for i in rest], add_special_tokens=False
        )
        for index, encoding in zip(rest, encodings):
            ids[index] = encoding.ids
    return [Prompt(t, tuple(i), user=u) for t, i, u in zip(rendered, ids, users)]  # type: ignore[arg-type]


def _is_space(char: str) -> bool:
    return char == " " or char == SPACE


def _spaces(text: str) -> str:
    return text.replace(" ", SPACE)


def _boundary_at(text: str, index: int) -> bool:
    """Whether a word of the normalized text starts at `index`: a space after a character
    that is not one."""
    return _is_space(text[index]) and not _is_space(text[index - 1])


def _first_boundary(text: str) -> int:
    """The first index > 0 where a word starts, or -1."""
    index = 1
    while True:
        found = [i for i in (text.find(" ", index), text.find(SPACE, index)) if i >= 0]
        if not found:
            return -1
        index = min(found)
        if _boundary_at(text, index):
            return index
        index += 1


def _last_boundary(text: str, end: int, low: int) -> int:
    """The last index in [max(low, 1), end] where a word starts, or -1."""
    low = max(low, 1)
    index = min(end, len(text) - 1)
    while index >= low:
        index = max(text.rfind(" ", low, index + 1), text.rfind(SPACE, low, index + 1))
        if index < 0:
            return -1
        if _boundary_at(text, index):
            return index
        index -= 1
    return -1


@dataclass(frozen=True)
class WordPrompts:
    """Prompt ids word by word, without tokenizing whole documents or tried prompts again.

    For the Llama-2 chat format and a tokenizer of Llama's shape (`linecount.WordTokens`), the
    ids of text are its words' ids in a row, and each distinct word is tokenized once. A doc
    prompt is BOS + `head` + the document with trailing whitespace stripped + `tail`; the
    prompt and the document alone share every word but those at the document's two ends. So
    whether a prompt fits follows from its first `max_tokens` tokens, and for a prompt that
    does not, the document's length as `_truncate_document` counts it from the words at its
    ends, the token where its cut falls from its first words, and each tried prompt's ids from
    those words' cached ids. Prompts, cuts and ids are those of `tokenized_doc_prompts`
    (tested against it); text holding special-token text, and the shapes the shortcut does not
    cover, give None and take that path.
    """

    tokenizer: TokenizerInfo
    words: WordTokens
    bos: str
    bos_id: int
    head: str  # the template before the document, BOS text excluded
    tail: str  # the template after it

    @staticmethod
    def of(tokenizer: TokenizerInfo) -> WordPrompts | None:
        """The shortcut for this tokenizer, or None where it cannot be proven to apply."""
        if tokenizer.chat_template is not None or not tokenizer.words.exact:
            return None
        words = tokenizer.words
        bos = tokenizer.bos_token or "<s>"
        bos_id = tokenizer.backend.token_to_id(bos)
        if bos_id is None or bos not in words.specials:
            return None
        marker = "\x01"
        head, tail = llama2_chat(marker, bos_token=bos).removeprefix(bos).split(marker)
        if words.has_special(head + tail) or _is_space(head[-1]) or not _is_space(tail[0]):
            return None
        return WordPrompts(tokenizer, words, bos, bos_id, head, tail)

    def encode(self, prompt_text: str) -> list[int] | None:
        """The ids of a rendered prompt: BOS, then the rest word by word."""
        rest = prompt_text.removeprefix(self.bos)
        if len(rest) == len(prompt_text) or self.words.has_special(rest):
            return None
        return [self.bos_id, *self.words.encode(rest)]

    def doc(self, text: str, max_tokens: int) -> Prompt | None:
        """The doc prompt of `text`, cut to `max_tokens` as `_truncate_document` cuts it."""
        if self.words.has_special(text):
            return None
        stripped = len(text.rstrip())
        first = _first_boundary(text)
        last = _last_boundary(text, stripped, first)
        if first < 0 or last < first:
            return None
        head = self.head + text[:first]
        head_ids = self.words.encode(head)
        scan = _Scan(self.words, text, first, last)
        # Read until the prompt without its tail holds more than `max_tokens` tokens.
        scan.read(max_tokens + 1 - 1 - len(head_ids) + len(scan.first_ends))
        if scan.starts[-1] >= last:  # every word before the tail was read: it may fit
            tail_ids = self.words.ids(_spaces(text[last:stripped] + self.tail))
            ids = [self.bos_id, *head_ids, *scan.ids_between(first, last), *tail_ids]
            if len(ids) <= max_tokens:
                return Prompt(render_chat(self.tokenizer, text), tuple(ids), user=text)
        # `_truncate_document`'s first cut: the document's length less what the template adds
        prompt_tail = self.words.ids(_spaces(text[last:stripped] + self.tail))
        document_tail = self.words.ids(_spaces(text[last:]))
        template = 1 + len(head_ids) - len(scan.first_ends) + len(prompt_tail) - len(document_tail)
        keep = max_tokens - template
        while 0 < keep <= scan.ends[-1]:
            cut = scan.end_of(keep - 1)
            user = text[:cut]
            end = len(user.rstrip())
            boundary = _last_boundary(text, end, first)
            if boundary < first:
                return None
            ids = [
                self.bos_id,
                *head_ids,
                *scan.ids_between(first, boundary),
                *self.words.ids(_spaces(text[boundary:end] + self.tail)),
            ]
            if len(ids) <= max_tokens:
                prompt_text = render_chat(self.tokenizer, user)
                return Prompt(prompt_text, tuple(ids), truncated=True, user=user)
            keep -= len(ids) - max_tokens
        return None


class _Scan:
    """A document's words (normalized) from its first word boundary on, with their ids, read
    as far as needed (reading stops once the words up to `last` are read)."""

    WINDOW = 8192  # characters read at a time

    def __init__(self, words: WordTokens, text: str, first: int, last: int) -> None:
        self.words = words
        self.last = last
        self.normalized = _spaces(text)
        # The first word is tokenized with the full tokenizer, whose offsets place the
        # prepended "▁" on the first character, as they do in the whole document.
        encoding = words.tokenizer.encode(text[:first], add_special_tokens=False)
        self.first_ends = [end for _, end in encoding.offsets]
        self.starts: list[int] = [first]  # text index where each word read starts, then next
        self.ends: list[int] = [len(self.first_ends)]  # tokens before each of these words
        self.pieces: list[str] = []

    def read(self, tokens: int) -> None:
        """Read words until those read hold `tokens` tokens or the word at `last` is next."""
        size = len(self.normalized)
        window = self.WINDOW
        while self.ends[-1] < tokens and self.starts[-1] < self.last:
            start = self.starts[-1]
            end = min(start + window, size)
            pieces = _WORDS.findall(self.normalized, start, end)
            if end < size:
                pieces.pop()  # it may go on past the window
                if not pieces:
                    window *= 2
                    continue
            counts = map(len, self.words.of_words(pieces))
            self.pieces += pieces
            self.starts += list(itertools.accumulate(map(len, pieces), initial=start))[1:]
            self.ends += list(itertools.accumulate(counts, initial=self.ends[-1]))[1:]

    def end_of(self, token: int) -> int:
        """Where the document's `token`-th token (one read) ends in the text (its offsets' end)."""
        if token < len(self.first_ends):
            return self.first_ends[token]
        word = bisect.bisect_right(self.ends, token) - 1
        bare = self.words.bare
        assert bare is not None
        offsets = bare.encode(self.pieces[word], add_special_tokens=False).offsets
        return self.starts[word] + offsets[token - self.ends[word]][1]

    def ids_between(self, start: int, end: int) -> list[int]:
        """The ids of the words read from text index `start` to `end` (both word starts)."""
        low = bisect.bisect_left(self.starts, start)
        high = bisect.bisect_left(self.starts, end)
        return list(itertools.chain.from_iterable(self.words.of_words(self.pieces[low:high])))
