"""Prompt ids word by word (`WordPrompts`, `linecount.WordTokens`) are exactly the ids of the
tokenizer path: every doc prompt, cut or not, and every chunk prompt, on the real Llama-2
tokenizer, for hostile text and any token budget."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxkit.chunking import chunk_documents
from proxkit.prompts import (
    WordPrompts,
    chunk_prompts,
    doc_prompts,
    render_chat,
    tokenized_doc_prompts,
)
from proxkit.tokenizer import load_tokenizer

PIECES = [
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    "▁",
    "a",
    "Word",
    "words",
    "12",
    "[",
    "]",
    "<s>",
    "</s>",
    "é",
    "日本",
    "😀",
    "\u3000",
    "\xa0",
    "x" * 40,
    "http://a.b/c?d=1",
    ".",
    "'",
    "\r",
    "[/INST]",
]
hostile_text = st.lists(st.sampled_from(PIECES), max_size=120).map("".join)
# Long documents with a few hostile pieces, so budgets cut them at every kind of place.
long_text = st.lists(
    st.one_of(st.sampled_from(PIECES), st.sampled_from(["the ", "cat ", "sat\n", "on a mat. "])),
    min_size=50,
    max_size=400,
).map("".join)


@functools.lru_cache(maxsize=1)
def _tokenizer(path: str):
    return load_tokenizer(path)


def test_the_shortcut_applies_to_the_released_models_tokenizer(llama2_dir):
    tokenizer = _tokenizer(str(llama2_dir))
    assert tokenizer.words.exact and WordPrompts.of(tokenizer) is not None


def test_other_tokenizers_take_the_tokenizer_path(tiny_tokenizer_dir):
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    assert not tokenizer.words.exact and WordPrompts.of(tokenizer) is None
    texts = ["short", "word " * 300]
    assert doc_prompts(texts, tokenizer, 50) == tokenized_doc_prompts(
        texts, tokenizer, 50, "document"
    )


@given(st.lists(st.one_of(hostile_text, long_text), min_size=1, max_size=6), st.integers(1, 400))
@settings(max_examples=300, deadline=None)
def test_doc_prompts_equal_the_tokenizer_path(llama2_dir, texts, max_tokens):
    tokenizer = _tokenizer(str(llama2_dir))
    expected = tokenized_doc_prompts(texts, tokenizer, max_tokens, "document")
    assert doc_prompts(texts, tokenizer, max_tokens) == expected


@given(hostile_text)
@settings(max_examples=300, deadline=None)
def test_word_ids_equal_the_tokenizer(llama2_dir, text):
    tokenizer = _tokenizer(str(llama2_dir))
    if not tokenizer.words.has_special(text):
        expected = tokenizer.backend.encode(text, add_special_tokens=False).ids
        assert tokenizer.words.encode(text) == expected
    rendered = render_chat(tokenizer, text)
    found = WordPrompts.of(tokenizer).encode(rendered)  # type: ignore[union-attr]
    assert (
        found is None or found == tokenizer.backend.encode(rendered, add_special_tokens=False).ids
    )


@given(st.lists(hostile_text, min_size=1, max_size=30).map("\n".join), st.integers(20, 200))
@settings(max_examples=60, deadline=None)  # each example is many chunks: 0.4 s
def test_chunk_prompts_equal_the_tokenizer(llama2_dir, text, max_chunk_tokens):
    tokenizer = _tokenizer(str(llama2_dir))
    chunks = chunk_documents([text], tokenizer.backend, max_chunk_tokens)[0]
    for prompt in chunk_prompts(chunks, tokenizer):
        assert (
            list(prompt.token_ids)
            == tokenizer.backend.encode(prompt.text, add_special_tokens=False).ids
        )


@pytest.mark.parametrize("max_tokens", [2000, 700, 60])
def test_the_example_corpus_gets_the_tokenizer_paths_prompts(llama2_dir, max_tokens):
    from conftest import example_records

    tokenizer = _tokenizer(str(llama2_dir))
    texts = [record["text"] for record in example_records()]
    fast = doc_prompts(texts, tokenizer, max_tokens)
    assert fast == tokenized_doc_prompts(texts, tokenizer, max_tokens, "document")
    shortcut = WordPrompts.of(tokenizer)
    assert sum(shortcut.doc(text, max_tokens) is None for text in texts) <= 5  # type: ignore[union-attr]
    assert sum(prompt.truncated for prompt in fast) > 100
