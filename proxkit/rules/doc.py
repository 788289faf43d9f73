"""Document-level heuristics: each rule returns its name when a document fails it, else None.

Families, with the thresholds their papers publish, defined as datatrove implements them (the
code FineWeb was built with, and what most pipelines run), so proxkit's decisions match a
datatrove pipeline's (`bench/bench_rules.py` measures the agreement, family by family):
- Gopher quality and repetition: Rae et al. 2021, "Scaling Language Models: Methods, Analysis
  & Insights from Training Gopher", Appendix A.1.1 and Table A1.
- C4: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
  Text-to-Text Transformer", Section 2.2 (page-level rules; the line rules are in `lines.py`).
- FineWeb: Penedo et al. 2024, "The FineWeb Datasets", Section 3.3 (custom filters).

Words are spaCy's English word tokens, punctuation tokens included (`words.py`), as datatrove
counts them: "symbol words" are tokens made only of punctuation. Deliberate choices where a
paper and its reference code disagree: FineWeb drops documents whose duplicated lines hold
over 1% of the characters, datatrove's threshold (the paper states 10%), and also drops
documents with more than 0.3 newlines per word (datatrove's "list" ratio, not in the paper).
Not implemented: C4's bad-words page filter (needs the LDNOOBW list) and language
identification.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from functools import cached_property

import numpy as np

from proxkit.rules.lines import C4_POLICY
from proxkit.rules.words import SENTENCE_TERMINALS, sentence_count, token_kind, words

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_PARAGRAPH_BREAK = re.compile(r"\n{2,}")
_LINE_BREAKS = re.compile(r"\n+")
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
C4_END_MARKS = (".", "?", "!", '"', "'")  # datatrove's: the TFDS marks of lines.py and "'"


class Features:
    """What several rules need, computed once per document, when first asked for."""

    def __init__(self, text: str) -> None:
        self.text = text

    @classmethod
    def of(cls, text: str) -> Features:
        return cls(text)

    @cached_property
    def tokens(self) -> list[str]:
        return words(self.text)

    @cached_property
    def token_counts(self) -> Counter[str]:
        return Counter(self.tokens)

    @cached_property
    def word_stats(self) -> tuple[int, int, int]:
        """(tokens that are not only punctuation, their characters, tokens holding a letter):
        datatrove's "non-symbol words", their length, and its alphabetic count."""
        words = chars = alphabetic = 0
        for token, count in self.token_counts.items():
            symbol, letter = token_kind(token)
            if not symbol:
                words += count
                chars += count * len(token)
            alphabetic += count * letter
        return words, chars, alphabetic

    @cached_property
    def c4_fineweb(self) -> tuple[str | None, str]:
        """C4's page rules as FineWeb ran them (lines need no terminal punctuation): the
        reason a page fails, and the text C4 leaves (kept lines, citations removed)."""
        return c4_lines(self.text, terminal_punctuation=False)


Rule = Callable[[Features], str | None]


# --- Gopher quality ---------------------------------------------------------------------------


def gopher_word_count(doc: Features) -> str | None:
    """Keep documents of 50 to 100,000 words."""
    words = doc.word_stats[0]
    if words < 50:
        return "gopher_short_document"
    if words > 100_000:
        return "gopher_long_document"
    return None


def gopher_mean_word_length(doc: Features) -> str | None:
    """Keep documents whose mean word length is 3 to 10 characters."""
    words, chars, _ = doc.word_stats
    if not words:
        return "gopher_mean_word_length"
    return None if 3 <= chars / words <= 10 else "gopher_mean_word_length"


def gopher_symbol_ratio(doc: Features) -> str | None:
    """Drop documents with more than 0.1 hash symbols or ellipses per token."""
    tokens = max(len(doc.tokens), 1)
    if doc.text.count("#") / tokens > 0.1:
        return "gopher_hash_ratio"
    if (doc.text.count("...") + doc.text.count("…")) / tokens > 0.1:
        return "gopher_ellipsis_ratio"
    return None


def gopher_line_shapes(doc: Features) -> str | None:
    """Drop documents with over 90% of lines starting with a bullet (`•`, `-`) or over 30%
    ending with an ellipsis (lines as `str.splitlines` gives them, blank ones counted)."""
    lines = doc.text.splitlines()
    if not lines:
        return None
    if sum(line.lstrip().startswith(("•", "-")) for line in lines) / len(lines) > 0.9:
        return "gopher_bullet_lines"
    if sum(line.rstrip().endswith(("...", "…")) for line in lines) / len(lines) > 0.3:
        return "gopher_ellipsis_lines"
    return None


def gopher_alphabetic_words(doc: Features) -> str | None:
    """Drop documents where fewer than 80% of tokens (punctuation included) hold a letter."""
    if not doc.tokens:
        return "gopher_alphabetic_words"
    alphabetic = doc.word_stats[2]
    return None if alphabetic / len(doc.tokens) >= 0.8 else "gopher_alphabetic_words"


def gopher_stop_words(doc: Features) -> str | None:
    """Drop documents holding fewer than 2 distinct of: the, be, to, of, and, that, have,
    with (as written: "The" is not "the")."""
    return None if len(STOP_WORDS.intersection(doc.token_counts)) >= 2 else "gopher_stop_words"


# --- Gopher repetition ------------------------------------------------------------------------


def _duplicates(items: list[str]) -> tuple[int, int]:
    """How many items repeat an earlier one, and how many characters those repeats hold."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def gopher_duplicate_lines(doc: Features) -> str | None:
    """Drop documents where over 30% of paragraphs (split at blank lines) repeat an earlier
    one, or the repeats hold over 20% of the characters; the same for lines."""
    text = doc.text
    if not text:
        return "gopher_empty_document"
    paragraphs = _PARAGRAPH_BREAK.split(text.strip())
    count, chars = _duplicates(paragraphs)
    if count / len(paragraphs) > 0.3:
        return "gopher_duplicate_paragraphs"
    if chars / len(text) > 0.2:
        return "gopher_duplicate_paragraph_chars"
    lines = _LINE_BREAKS.split(text)
    count, chars = _duplicates(lines)
    if count / len(lines) > 0.3:
        return "gopher_duplicate_lines"
    if chars / len(text) > 0.2:
        return "gopher_duplicate_line_chars"
    return None


TOP_NGRAM_LIMITS = {2: 0.20, 3: 0.18, 4: 0.16}
DUPLICATE_NGRAM_LIMITS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


class NGrams:
    """The repeated n-grams of a token list, as exact integer classes (numpy). An n-gram can
    occur twice only where the (n-1)-gram it starts with does, so each level groups only the
    positions the level below found repeated (few, past n = 3), with one sort of integers: an
    n-gram's class packs the class of its (n-1)-gram with its last token."""

    def __init__(self, tokens: list[str]) -> None:
        vocabulary = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
        self.size = max(len(vocabulary), 1)
        self.length = len(tokens)
        self.ids = np.fromiter(map(vocabulary.__getitem__, tokens), np.int64, len(tokens))
        self.ends = np.concatenate(([0], np.cumsum(np.fromiter(map(len, tokens), np.int64))))
        self.found: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def repeated(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ascending positions whose n-gram occurs more than once, the class of each, and per
        class of the level its first position and its count)."""
        if n not in self.found:
            if n == 1:  # token ids count from 0 in order of first occurrence: no sort needed
                positions, inverse = np.arange(self.length), self.ids
                counts = np.bincount(self.ids, minlength=self.size)
                seen = np.maximum.accumulate(np.concatenate(([-1], self.ids)))
                first = np.flatnonzero(self.ids > seen[:-1])
            else:
                below, classes, _, _ = self.repeated(n - 1)
                starts = below < self.length - n + 1
                positions = below[starts]
                keys = classes[starts] * self.size + self.ids[positions + n - 1]
                _, first, inverse, counts = np.unique(
                    keys, return_index=True, return_inverse=True, return_counts=True
                )
                inverse = inverse.ravel()
            twice = counts[inverse] > 1
            self.found[n] = (positions[twice], inverse[twice], positions[first], counts)
        return self.found[n]

    def chars(self, position: int, n: int) -> int:
        return int(self.ends[position + n] - self.ends[position])


def top_ngram_chars(grams: NGrams, n: int) -> int:
    """Characters of the most frequent n-gram (words joined by spaces) times its count; of
    equally frequent ones, the first to occur."""
    positions, _, firsts, counts = grams.repeated(n)
    if not len(positions):
        return grams.chars(0, n) + n - 1  # all distinct: the first n-gram, once
    top = counts.max()
    return (grams.chars(int(firsts[counts == top].min()), n) + n - 1) * int(top)


def repeated_ngram_chars(grams: NGrams, n: int) -> int:
    """Characters of the n-grams that repeat an earlier n-gram, scanning left to right and
    skipping past each repeat (a skipped n-gram is neither counted nor remembered, so no token
    counts twice).

    Only positions whose n-gram occurred before can be repeats; numpy finds them, and only they
    are scanned: a candidate is a repeat when an earlier occurrence of its n-gram was looked at
    (the first one, unless a repeat skipped it; else an earlier candidate that was looked at).
    """
    positions, classes, firsts, _ = grams.repeated(n)
    later = firsts[classes] != positions
    if not later.any():
        return 0  # no n-gram occurs twice (the usual case at larger n)
    candidates = positions[later]
    starts = firsts[classes[later]].tolist()
    spans = (grams.ends[candidates + n] - grams.ends[candidates]).tolist()
    repeats: list[int] = []  # positions of the repeats found: each skips the n - 1 after it
    looked_at: set[int] = set()  # first positions of the n-grams of candidates looked at
    chars, skip_until = 0, 0
    for index, start, span in zip(candidates.tolist(), starts, spans):
        if index < skip_until:
            continue
        before = bisect_right(repeats, start - 1)
        first_skipped = before > 0 and start <= repeats[before - 1] + n - 1
        if not first_skipped or start in looked_at:
            chars += span
            repeats.append(index)
            skip_until = index + n
        else:
            looked_at.add(start)
    return chars


def gopher_ngram_repetition(doc: Features) -> str | None:
    """Drop documents whose most frequent 2/3/4-gram (its text, words joined by spaces, times
    its count) holds over 20/18/16% of the characters, or whose repeated 5..10-grams hold over
    15/14/13/12/11/10% of them."""
    tokens, length = doc.tokens, max(len(doc.text), 1)
    grams = NGrams(tokens)
    for n, limit in TOP_NGRAM_LIMITS.items():
        if len(tokens) >= n and top_ngram_chars(grams, n) / length > limit:
            return f"gopher_top_{n}gram"
    for n, limit in DUPLICATE_NGRAM_LIMITS.items():
        if grams.ends[-1] / length <= limit:  # repeats hold at most all the tokens' characters
            continue
        if len(tokens) >= n and repeated_ngram_chars(grams, n) / length > limit:
            return f"gopher_duplicate_{n}grams"
    return None


# --- C4 (page level) --------------------------------------------------------------------------


def c4_lines(text: str, terminal_punctuation: bool = True) -> tuple[str | None, str]:
    """C4's page rules over its line filter: the reason the page fails, and the text of the
    lines C4 keeps (stripped, citations removed). Lines (as `str.splitlines` gives them) are
    left out for a word over 1000 characters, no terminal punctuation (if asked), fewer than
    3 words, "javascript" or a cookie/terms/privacy policy; among the lines left, "lorem ipsum"
    or a curly bracket fails the page, and so do fewer than 5 sentences in all."""
    sentences = 0
    kept: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        tokens = line.split()
        if any(len(token) > 1000 for token in tokens):
            continue
        line = _CITATION.sub("", line)
        if terminal_punctuation and (not line.endswith(C4_END_MARKS) or line.endswith("...")):
            continue
        if len(tokens) < 3:
            continue
        lowered = line.lower()
        if "lorem ipsum" in lowered:
            return "c4_lorem_ipsum", ""
        if "javascript" in lowered:
            continue
        if "{" in line:
            return "c4_curly_bracket", ""
        if any(policy in lowered for policy in C4_POLICY):
            continue
        sentences += sentence_count(words(line))
        kept.append(line)
    if sentences < 5:
        return "c4_too_few_sentences", ""
    return None, "\n".join(kept).strip()


def c4_page(doc: Features) -> str | None:
    """The C4 paper's page rules (kept lines end in terminal punctuation)."""
    return c4_lines(doc.text)[0]


def c4_page_fineweb(doc: Features) -> str | None:
    """C4's page rules as FineWeb ran them: lines need no terminal punctuation."""
    return doc.c4_fineweb[0]


# --- FineWeb ----------------------------------------------------------------------------------


def fineweb_quality(doc: Features) -> str | None:
    """Drop documents where under 12% of the non-blank lines end in sentence-final
    punctuation, over 67% have 30 characters or fewer, duplicated lines hold over 1% of the
    characters (newlines not counted), or there are over 0.3 newlines per token."""
    return _fineweb(doc.text, lambda: doc.tokens)


def fineweb_after_c4(doc: Features) -> str | None:
    """FineWeb's rules on the text C4's line filter leaves, as FineWeb's pipeline ran them."""
    reason, text = doc.c4_fineweb
    return None if reason is not None else _fineweb(text, lambda: words(text))


def _fineweb(text: str, tokens: Callable[[], list[str]]) -> str | None:
    """FineWeb's rules; tokens are asked for only by the last one, which most documents that
    fail never reach."""
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return "fineweb_empty"
    if sum(line.endswith(_TERMINALS) for line in lines) / len(lines) < 0.12:
        return "fineweb_line_punctuation"
    if sum(len(line) <= 30 for line in lines) / len(lines) > 0.67:
        return "fineweb_short_lines"
    if _duplicates(lines)[1] / max(len(text) - text.count("\n"), 1) > 0.01:
        return "fineweb_duplicate_line_chars"
    newlines = text.count("\n")
    # Every whitespace-separated piece gives at least one token: most texts pass untokenized.
    if newlines > 0.3 * len(text.split()) and newlines / max(len(tokens()), 1) > 0.3:
        return "fineweb_list_ratio"
    return None


_TERMINALS = tuple(SENTENCE_TERMINALS)

DOC_RULES: dict[str, Rule] = {
    "gopher_word_count": gopher_word_count,
    "gopher_mean_word_length": gopher_mean_word_length,
    "gopher_symbol_ratio": gopher_symbol_ratio,
    "gopher_line_shapes": gopher_line_shapes,
    "gopher_alphabetic_words": gopher_alphabetic_words,
    "gopher_stop_words": gopher_stop_words,
    "gopher_duplicate_lines": gopher_duplicate_lines,
    "gopher_ngram_repetition": gopher_ngram_repetition,
    "c4_page": c4_page,
    "c4_page_fineweb": c4_page_fineweb,
    "fineweb_quality": fineweb_quality,
    "fineweb_after_c4": fineweb_after_c4,
}
GOPHER_QUALITY = (
    "gopher_word_count",
    "gopher_mean_word_length",
    "gopher_symbol_ratio",
    "gopher_line_shapes",
    "gopher_alphabetic_words",
    "gopher_stop_words",
)
GOPHER_REPETITION = ("gopher_duplicate_lines", "gopher_ngram_repetition")
DOC_RULE_SETS: dict[str, tuple[str, ...]] = {
    "gopher_quality": GOPHER_QUALITY,
    "gopher_repetition": GOPHER_REPETITION,
    "c4": ("c4_page",),
    "fineweb": ("fineweb_quality",),
    # FineWeb's own sequence: Gopher repetition, Gopher quality, C4 without the terminal
    # punctuation rule, then FineWeb's rules on the lines C4 keeps.
    "fineweb_pipeline": (
        *GOPHER_REPETITION,
        *GOPHER_QUALITY,
        "c4_page_fineweb",
        "fineweb_after_c4",
    ),
}
# FineWeb's rules judge a page by its line shapes (punctuation, short and duplicated lines),
# which on a raw page are mostly navigation and footers: in ProX the chunk stage removes those
# lines instead, so by default the doc level runs the Gopher rules alone.
DEFAULT_DOC_RULES = ("gopher_quality", "gopher_repetition")


def first_failure(text: str, rules: tuple[Rule, ...]) -> str | None:
    """The name of the first rule the document fails, or None."""
    features = Features.of(text)
    for rule in rules:
        reason = rule(features)
        if reason is not None:
            return reason
    return None
