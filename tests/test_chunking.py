"""Chunking: the reference's numbering and greedy packing, exact on the real Llama-2 tokenizer."""

from __future__ import annotations

import functools

from hypothesis import given, settings
from hypothesis import strategies as st

from proxkit.chunking import chunk_documents, number_lines, pack
from proxkit.tokenizer import load_tokenizer


def naive_reference_chunks(text: str, encode, max_tokens: int) -> list[str]:
    """The reference rule with one tokenizer call per line, restated for comparison."""
    if not text:
        return []  # the reference sends no chunk for an empty document
    chunks, current, total = [], [], 0
    for index, line in enumerate(text.split("\n")):
        numbered = f"[{index:03d}]{line}"
        count = len(encode(numbered))
        if total + count <= max_tokens:
            current.append(numbered)
            total += count
            continue
        if current:
            chunks.append("\n".join(current))
        current, total = [numbered], count
        if count > max_tokens:
            chunks.append("\n".join(current))
            current, total = [], 0
    if current:
        chunks.append("\n".join(current))
    return chunks


def test_numbering_is_three_digits_then_wider():
    lines = number_lines("\n".join(["x"] * 1001))
    assert lines[0] == "[000]x" and lines[999] == "[999]x" and lines[1000] == "[1000]x"
    assert number_lines("") == ["[000]"]


def test_packing_is_greedy_and_isolates_long_lines():
    assert pack([5, 5, 5], 10) == [range(0, 2), range(2, 3)]
    assert pack([3, 20, 3], 10) == [range(0, 1), range(1, 2), range(2, 3)]
    assert pack([20, 3, 3], 10) == [range(0, 1), range(1, 3)]
    assert pack([4, 6, 1], 10) == [range(0, 2), range(2, 3)]
    assert pack([], 10) == []


@given(st.lists(st.integers(1, 40), max_size=60), st.integers(1, 50))
@settings(max_examples=300)
def test_packing_covers_every_line_once_within_budget(counts, budget):
    ranges = pack(counts, budget)
    assert [i for r in ranges for i in r] == list(range(len(counts)))
    for r in ranges:
        assert sum(counts[i] for i in r) <= budget or len(r) == 1


def test_empty_documents_have_no_chunks(tiny_tokenizer_dir):
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir)).backend
    assert chunk_documents(["", "a"], tokenizer, 50)[0] == []


def test_lone_surrogates_are_counted_as_replacement_characters(tiny_tokenizer_dir):
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir)).backend
    (chunk,) = chunk_documents(["a\ud800b"], tokenizer, 50)[0]
    assert chunk.text == "[000]a\ud800b"
    assert chunk.num_tokens == len(tokenizer.encode("[000]a\ufffdb").ids)


no_surrogates = st.characters(exclude_characters="\n", exclude_categories=("Cs",))


@given(st.lists(st.text(no_surrogates, max_size=80), min_size=1, max_size=30))
@settings(max_examples=100, deadline=None)
def test_batched_chunking_equals_one_call_per_line(tiny_tokenizer_dir, lines):
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir)).backend
    text = "\n".join(lines)
    chunks = chunk_documents([text], tokenizer, 40)[0]
    expected = naive_reference_chunks(text, lambda s: tokenizer.encode(s).ids, 40)
    assert [c.text for c in chunks] == expected
    assert "\n".join(c.text for c in chunks) == ("\n".join(number_lines(text)) if text else "")


WEB_PAGE = "\n".join(
    [
        "Home | About us | Contact | Login",
        "",
        "# Installing the package  ",
        "Run `pip install x`.",
        "  indented   text\twith tab",
    ]
    + [
        f"Paragraph {i}: "
        + "lorem ipsum dolor sit amet, consectetur adipiscing elit. " * (i % 7 + 1)
        for i in range(200)
    ]
    + [
        "日本語のテキスト",
        "Ünïcödé façade — “quotes” … ∑∫",
        "https://example.com/a?b=c&d=e",
        "© 2024 Example Inc.",
    ]
    + ["x" * 9000]
)


def test_chunks_match_the_reference_on_the_llama2_tokenizer(llama2_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(llama2_dir))
    tokenizer = load_tokenizer(str(llama2_dir)).backend
    chunks = chunk_documents([WEB_PAGE], tokenizer)[0]
    assert [c.text for c in chunks] == naive_reference_chunks(WEB_PAGE, hf.encode, 1500)
    assert len(chunks) > 3 and chunks[-1].text.startswith("[209]x")
    assert all(c.num_tokens <= 1500 for c in chunks[:-1])
    # the count includes the BOS token of every line, as the reference's tokenizer.encode did
    assert chunks[0].num_tokens == sum(len(hf.encode(line)) for line in chunks[0].text.split("\n"))


def test_line_counts_follow_tokenizer_json_where_new_transformers_differs(llama2_dir):
    """The reference ran the fast tokenizer of tokenizer.json; literal "</s>" in text is where
    transformers 5 splits differently, so counts come from tokenizer.json itself."""
    tokenizer = load_tokenizer(str(llama2_dir)).backend
    line = "[000] x</s>y"
    (chunk,) = chunk_documents([" x</s>y"], tokenizer)[0]
    assert chunk.num_tokens == len(tokenizer.encode(line).ids) == 9


# --- the fast line counter must equal tokenizer.encode, line for line ---------------------------

from proxkit.linecount import LineCounter  # noqa: E402

tricky_lines = st.lists(
    st.sampled_from(
        [
            " ",
            "  ",
            "▁",
            "a",
            "Word",
            "12",
            "0",
            "[",
            "]",
            "](",
            "<s>",
            "</s>",
            "<unk>",
            "\t",
            "é",
            "日本",
            "—",
            "\u3000",
            "\xa0",
            "x" * 40,
            "http://a.b/c?d=1",
            ".",
            ",",
            "'",
            "\r",
        ]
    ),
    max_size=30,
).map("".join)


@functools.lru_cache(maxsize=2)
def _llama2(path: str) -> tuple[object, LineCounter]:
    tokenizer = load_tokenizer(path).backend
    return tokenizer, LineCounter(tokenizer)


@given(st.lists(tricky_lines, min_size=1, max_size=40), st.integers(0, 2000))
@settings(max_examples=200, deadline=None)
def test_fast_line_counts_equal_the_tokenizer_on_llama2(llama2_dir, lines, first_number):
    tokenizer, counter = _llama2(str(llama2_dir))
    assert counter.fast
    padded = [""] * first_number + lines  # reach 4-digit line numbers
    counts = counter.count([padded])[0]
    expected = [len(e) for e in tokenizer.encode_batch_fast(number_lines("\n".join(padded)))]
    assert counts == expected


def test_fast_line_counts_equal_the_tokenizer_on_the_whole_example_corpus(llama2_dir):

    from conftest import example_records

    tokenizer = load_tokenizer(str(llama2_dir)).backend
    documents = [record["text"].split("\n") for record in example_records()]
    counts = LineCounter(tokenizer).count(documents)
    for lines, document_counts in zip(documents, counts):
        numbered = number_lines("\n".join(lines))
        assert document_counts == [len(e) for e in tokenizer.encode_batch_fast(numbered)]


def test_other_tokenizers_take_the_plain_path(tiny_tokenizer_dir):
    assert not LineCounter(load_tokenizer(str(tiny_tokenizer_dir)).backend).fast
