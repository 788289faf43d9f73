"""Exact token ids and counts for tokenizers shaped like Llama's, word by word, fast.

The chunker needs one count per line of every document, and doc prompts cut to fit need the
ids of a few prompts around the cut; running the full tokenizer spends most of its time on
normalization alignments, offsets and Encoding objects, not on BPE, and on whole documents
where only their ends and first 2,000 tokens matter. For tokenizers shaped like Llama's
`tokenizer.json` the same ids follow from the BPE model alone, word by word, and this module
uses that when it can prove it:

1. the normalizer only prepends "▁" and turns spaces into "▁", with no pre-tokenizer;
2. no BPE merge joins a symbol ending in a non-"▁" character to one starting with "▁", so no
   token spans such a boundary;
3. no merge involves a digit or a newline, so each is a token of its own (a newline is a byte
   token), no token spans one, and `[NNN]` adds exactly one token per digit.
By 2 and 3 the normalized text splits into words (`▁*` then other characters, or a digit or a
newline alone) tokenized apart (`WordTokens`); split this finely, the words of web text and of
numbered lines recur, so their cached ids serve again.

Then count(`[NNN]content`) = count(`<s>▁[NNN`) + sum of the model's count for each word of
`]content` (`LineCounter`). Each distinct word is tokenized once by the real BPE model, in
batches, and cached. Text holding special-token text (`<s>`) and tokenizers that fail any
check (verified on the tokenizer's own JSON and on probe texts at start-up) use the full
tokenizer instead, so ids and counts are always those of `tokenizer.encode`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from itertools import chain, islice

from tokenizers import Tokenizer

SPACE = "▁"
BREAKS = "0123456789\n"  # condition 3: characters no token spans
_WORDS = re.compile(f"[{BREAKS}]|{SPACE}*[^{SPACE}{BREAKS}]+|{SPACE}+")
_LLAMA_NORMALIZER = {
    "type": "Sequence",
    "normalizers": [
        {"type": "Prepend", "prepend": SPACE},
        {"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
    ],
}
_PROBES = [
    "",
    " ",
    "x",
    "Hello, world",
    "  two  spaces",
    "](x) [1] 2024",
    "tab\there",
    "日本語 テキスト",
    "ünïcödé — “q” …",
    "end space ",
    "▁already",
    "a" * 300,
    "1234567890",
    "]]]",
    "http://x.y/z?a=b",
    "line\n[001]next 2\n\n",
    "x1y ▁\n2 \n a",
]


def _merge_pair(merge: str | list[str]) -> tuple[str, str]:
    left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
    return left, right


def word_level_model(tokenizer: Tokenizer) -> Tokenizer | None:
    """The bare BPE model as a tokenizer (no normalizer, no BOS), if conditions 1-3 hold."""
    spec = json.loads(tokenizer.to_str())
    model = spec.get("model") or {}
    if (
        spec.get("normalizer") != _LLAMA_NORMALIZER
        or spec.get("pre_tokenizer") is not None
        or model.get("type") != "BPE"
        or model.get("dropout") not in (None, 0.0)
        or model.get("ignore_merges")
        or any(t.get("normalized") for t in spec.get("added_tokens", []))
    ):
        return None
    for merge in model.get("merges", []):
        left, right = _merge_pair(merge)
        if any(ch in BREAKS for ch in left + right):
            return None
        if left[-1] != SPACE and right[0] == SPACE:
            return None
    bare = Tokenizer.from_str(tokenizer.to_str())
    bare.normalizer = None
    bare.post_processor = None
    return bare


def normalized(text: str) -> str:
    """What condition 1's normalizer makes of `text`: "▁" first, every space a "▁"."""
    return SPACE + text.replace(" ", SPACE) if text else ""


class WordTokens:
    """Token ids of normalized text as the concatenation of its words' ids (conditions 1-3),
    each distinct word tokenized once by the bare BPE model and cached. `exact` says whether
    the conditions hold for this tokenizer; where they do not, nothing here may be used."""

    def __init__(self, tokenizer: Tokenizer, cache_entries: int = 500_000) -> None:
        self.tokenizer = tokenizer
        self.cache_entries = cache_entries
        self.cache: dict[str, tuple[int, ...]] = {}
        self.specials = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        self.bare = word_level_model(tokenizer)
        if self.bare is not None and any(
            self.encode(probe) != tokenizer.encode(probe, add_special_tokens=False).ids
            for probe in _PROBES
        ):
            self.bare = None

    @property
    def exact(self) -> bool:
        return self.bare is not None

    def has_special(self, text: str) -> bool:
        """Whether `text` holds special-token text, which the tokenizer splits out first."""
        return any(special in text for special in self.specials)

    def of_words(self, words: Sequence[str]) -> list[tuple[int, ...]]:
        """The ids of each word (a piece of normalized text), from the cache or the model."""
        assert self.bare is not None
        cache = self.cache
        missing = set(words).difference(cache)
        if missing and len(cache) + len(missing) > self.cache_entries:
            cache.clear()
            missing = set(words)
        if missing:
            found = list(missing)
            encodings = self.bare.encode_batch_fast(found, add_special_tokens=False)
            for word, encoding in zip(found, encodings):
                cache[word] = tuple(encoding.ids)
        return list(map(cache.__getitem__, words))

    def ids(self, text: str) -> list[int]:
        """The ids of already normalized text (no special-token text)."""
        return list(chain.from_iterable(self.of_words(_WORDS.findall(text))))

    def encode(self, text: str) -> list[int]:
        """`tokenizer.encode(text, add_special_tokens=False).ids` for text without special-token
        text."""
        return self.ids(normalized(text))


class LineCounter:
    """Counts tokens of `[NNN]content` lines exactly as `tokenizer.encode` would."""

    def __init__(self, tokenizer: Tokenizer, words: WordTokens | None = None) -> None:
        self.tokenizer = tokenizer
        self.words = words if words is not None else WordTokens(tokenizer)
        self.fast = self.words.exact
        if self.fast:
            # BOS + "▁[" + three digits, which every "[000]content" count shares
            self.prefix = len(tokenizer.encode("[000]")) - len(self.words.ids("]"))
            self.fast = self._plain(_PROBES) == self._fast(_PROBES)

    def _plain(self, contents: Sequence[str]) -> list[int]:
        """Counts of `[000]{content}` by the full tokenizer."""
        encodings = self.tokenizer.encode_batch_fast(
            [f"[000]{c}" for c in contents], add_special_tokens=True
        )
        return [len(e) for e in encodings]

    def _fast(self, contents: Sequence[str]) -> list[int]:
        split = [_WORDS.findall("]" + c.replace(" ", SPACE)) for c in contents]
        ids = iter(self.words.of_words([w for words in split for w in words]))
        return [self.prefix + sum(map(len, islice(ids, len(words)))) for words in split]

    def _contents(self, contents: Sequence[str]) -> list[int]:
        """Token counts of `[000]{content}` for each content."""
        special = [i for i, c in enumerate(contents) if self.words.has_special(c)]
        counts = self._fast(contents)
        for i, value in zip(special, self._plain([contents[i] for i in special])):
            counts[i] = value
        return counts

    def count(self, documents: Sequence[Sequence[str]]) -> list[list[int]]:
        """Token counts of every numbered line `[i:03d]{line}` of every document.

        Lone surrogates (which JSON escapes can produce) cannot be tokenized; they are
        counted as U+FFFD, the character a UTF-8 decoder would have put there.
        """
        try:
            return self._count(documents)
        except TypeError:
            return self._count(
                [[_without_surrogates(line) for line in lines] for lines in documents]
            )

    def _count(self, documents: Sequence[Sequence[str]]) -> list[list[int]]:
        if not self.fast:
            flat = [f"[{i:03d}]{line}" for lines in documents for i, line in enumerate(lines)]
            encodings = iter(self.tokenizer.encode_batch_fast(flat, add_special_tokens=True))
            return [[len(next(encodings)) for _ in lines] for lines in documents]
        unique = list(dict.fromkeys(line for lines in documents for line in lines))
        per_content = dict(zip(unique, self._contents(unique)))
        # "[000]" holds three digits; wider numbers add one token per extra digit
        return [
            [
                per_content[line] + (len(str(i)) - 3 if i >= 1000 else 0)
                for i, line in enumerate(lines)
            ]
            for lines in documents
        ]


_SURROGATES = re.compile("[\ud800-\udfff]")


def _without_surrogates(text: str) -> str:
    return _SURROGATES.sub("\ufffd", text)
