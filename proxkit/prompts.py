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

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from proxkit.chunking import Chunk
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
    """Cut the document at a token boundary so that the whole templated prompt fits."""
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
    """Chunk-level prompts, one per chunk, tokenized in one batch."""
    users = [wrap_chunk(chunk.text) for chunk in chunks]
    rendered = [render_chat(tokenizer, user) for user in users]
    encodings = tokenizer.backend.encode_batch_fast(rendered, add_special_tokens=False)
    return [Prompt(t, tuple(e.ids), user=u) for t, e, u in zip(rendered, encodings, users)]
