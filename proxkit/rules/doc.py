"""Document-level heuristics: each rule returns its name when a document fails it, else None.

Families, with the thresholds their papers publish:
- Gopher quality and repetition: Rae et al. 2021, "Scaling Language Models: Methods, Analysis
  & Insights from Training Gopher", Appendix A.1.1 and Table A1.
- C4: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
  Text-to-Text Transformer", Section 2.2 (page-level rules; the line rules are in `lines.py`).
- FineWeb: Penedo et al. 2024, "The FineWeb Datasets", Section 3.3 (custom filters).

Words are whitespace-separated tokens with surrounding punctuation stripped; tokens that are
only punctuation are not words. The papers' implementations tokenize with NLTK or their own
tokenizers, so counts can differ slightly on punctuation-heavy text. Not implemented: C4's
bad-words page filter (needs the LDNOOBW list) and language identification.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from proxkit.rules.lines import TERMINAL_PUNCTUATION, has_terminal_punctuation

PUNCTUATION = string.punctuation + "“”‘’«»…–—"
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")
_BULLETS = ("•", "●", "○", "▪", "‣", "◦", "-", "*", "·")
_TOKEN_WITH_LETTER = re.compile(r"\S*[^\W\d_]\S*")  # a whitespace token holding a letter


@dataclass(frozen=True)
class Features:
    """What several rules need, computed once per document."""

    text: str
    lines: list[str]
    words: list[str]

    @classmethod
    def of(cls, text: str) -> Features:
        words = [w for w in (token.strip(PUNCTUATION) for token in text.split()) if w]
        return cls(text, text.split("\n"), words)


Rule = Callable[[Features], str | None]


# --- Gopher quality ---------------------------------------------------------------------------


def gopher_word_count(doc: Features) -> str | None:
    """Keep documents of 50 to 100,000 words."""
    if len(doc.words) < 50:
        return "gopher_short_document"
    if len(doc.words) > 100_000:
        return "gopher_long_document"
    return None


def gopher_mean_word_length(doc: Features) -> str | None:
    """Keep documents whose mean word length is 3 to 10 characters."""
    if not doc.words:
        return "gopher_mean_word_length"
    mean = sum(map(len, doc.words)) / len(doc.words)
    return None if 3 <= mean <= 10 else "gopher_mean_word_length"


def gopher_symbol_ratio(doc: Features) -> str | None:
    """Drop documents with more than 0.1 hash symbols or ellipses per word."""
    words = max(len(doc.words), 1)
    if doc.text.count("#") / words > 0.1:
        return "gopher_hash_ratio"
    if (doc.text.count("...") + doc.text.count("…")) / words > 0.1:
        return "gopher_ellipsis_ratio"
    return None


def gopher_line_shapes(doc: Features) -> str | None:
    """Drop documents with over 90% of lines starting with a bullet or over 30% ending with an
    ellipsis (blank lines are not counted)."""
    lines = [line.strip() for line in doc.lines if line.strip()]
    if not lines:
        return None
    if sum(line.startswith(_BULLETS) for line in lines) / len(lines) > 0.9:
        return "gopher_bullet_lines"
    if sum(line.endswith(("...", "…")) for line in lines) / len(lines) > 0.3:
        return "gopher_ellipsis_lines"
    return None


def gopher_alphabetic_words(doc: Features) -> str | None:
    """Drop documents where fewer than 80% of whitespace tokens hold an alphabetic character."""
    tokens = len(doc.text.split())
    if not tokens:
        return "gopher_alphabetic_words"
    alphabetic = len(_TOKEN_WITH_LETTER.findall(doc.text))
    return None if alphabetic / tokens >= 0.8 else "gopher_alphabetic_words"


def gopher_stop_words(doc: Features) -> str | None:
    """Drop documents with fewer than 2 of: the, be, to, of, and, that, have, with."""
    found = 0
    for word in doc.words:
        if word.lower() in STOP_WORDS:
            found += 1
            if found >= 2:
                return None
    return "gopher_stop_words"


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


def _duplicate_share(items: list[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier one, fraction of the characters they hold)."""
    count, chars = _duplicates(items)
    return count / max(len(items), 1), chars / max(sum(map(len, items)), 1)


def gopher_duplicate_lines(doc: Features) -> str | None:
    """Drop documents where over 30% of lines, or lines holding over 20% of the characters,
    are duplicates; same for paragraphs (blocks separated by blank lines)."""
    lines = [line for line in (line.strip() for line in doc.lines) if line]
    line_fraction, line_chars = _duplicate_share(lines)
    if line_fraction > 0.3:
        return "gopher_duplicate_lines"
    if line_chars > 0.2:
        return "gopher_duplicate_line_chars"
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", doc.text) if p.strip()]
    paragraph_fraction, paragraph_chars = _duplicate_share(paragraphs)
    if paragraph_fraction > 0.3:
        return "gopher_duplicate_paragraphs"
    if paragraph_chars > 0.2:
        return "gopher_duplicate_paragraph_chars"
    return None


TOP_NGRAM_LIMITS = {2: 0.20, 3: 0.18, 4: 0.16}
DUPLICATE_NGRAM_LIMITS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


def gopher_ngram_repetition(doc: Features) -> str | None:
    """Drop documents whose most frequent 2/3/4-gram covers over 20/18/16% of the word
    characters, or whose repeated 5..10-grams cover over 15/14/13/12/11/10% of them (each word
    counted once; the first occurrence of an n-gram is not a repeat)."""
    words = [w.lower() for w in doc.words]
    total = sum(map(len, words))
    if total == 0:
        return None
    for n, limit in TOP_NGRAM_LIMITS.items():
        if len(words) < n:
            break
        counts = Counter(zip(*(words[k:] for k in range(n))))
        gram, count = counts.most_common(1)[0]
        if count > 1 and count * sum(map(len, gram)) / total > limit:
            return f"gopher_top_{n}gram"
    # Coverage by repeated n-grams can only shrink as n grows (a repeated (n+1)-gram holds a
    # repeated n-gram), so once it is under the smallest limit no larger n can fail.
    smallest_limit = min(DUPLICATE_NGRAM_LIMITS.values())
    for n, limit in DUPLICATE_NGRAM_LIMITS.items():
        if len(words) < n:
            break
        covered = bytearray(len(words))
        seen: set[tuple[str, ...]] = set()
        for start, gram in enumerate(zip(*(words[k:] for k in range(n)))):
            if gram in seen:
                covered[start : start + n] = b"\x01" * n
            else:
                seen.add(gram)
        repeated = sum(len(w) for w, flag in zip(words, covered) if flag) / total
        if repeated > limit:
            return f"gopher_duplicate_{n}grams"
        if repeated <= smallest_limit:
            return None
    return None


# --- C4 (page level) --------------------------------------------------------------------------


def c4_page(doc: Features) -> str | None:
    """Drop pages containing "lorem ipsum" or a curly bracket, or with fewer than 5 sentences
    in the lines that C4's line filter keeps (terminal punctuation, 3+ words)."""
    lowered = doc.text.lower()
    if "lorem ipsum" in lowered:
        return "c4_lorem_ipsum"
    if "{" in doc.text:
        return "c4_curly_bracket"
    kept = [
        line
        for line in (line.strip() for line in doc.lines)
        if has_terminal_punctuation(line) and len(line.split()) >= 3
    ]
    if sum(len(_SENTENCE_END.findall(line)) for line in kept) < 5:
        return "c4_too_few_sentences"
    return None


# --- FineWeb ----------------------------------------------------------------------------------


def fineweb_quality(doc: Features) -> str | None:
    """Drop documents where at most 12% of lines end in punctuation, at least 67% of lines
    have 30 characters or fewer, or duplicated lines hold at least 10% of the characters (the
    paper's value; datatrove's default is 0.01). Not implemented: datatrove's later
    newline-to-word "list" ratio, which the FineWeb paper does not describe."""
    lines = doc.lines
    if sum(line.endswith(TERMINAL_PUNCTUATION) for line in lines) / len(lines) <= 0.12:
        return "fineweb_line_punctuation"
    if sum(len(line) <= 30 for line in lines) / len(lines) >= 0.67:
        return "fineweb_short_lines"
    _, duplicate_chars = _duplicates([line for line in lines if line.strip()])
    if duplicate_chars / max(len(doc.text) - doc.text.count("\n"), 1) >= 0.1:
        return "fineweb_duplicate_line_chars"
    return None


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
    "fineweb_quality": fineweb_quality,
}
DOC_RULE_SETS: dict[str, tuple[str, ...]] = {
    "gopher_quality": (
        "gopher_word_count",
        "gopher_mean_word_length",
        "gopher_symbol_ratio",
        "gopher_line_shapes",
        "gopher_alphabetic_words",
        "gopher_stop_words",
    ),
    "gopher_repetition": ("gopher_duplicate_lines", "gopher_ngram_repetition"),
    "c4": ("c4_page",),
    "fineweb": ("fineweb_quality",),
}
DEFAULT_DOC_RULES = ("gopher_quality", "gopher_repetition", "fineweb")


def first_failure(text: str, rules: tuple[Rule, ...]) -> str | None:
    """The name of the first rule the document fails (cheap rules run first), or None."""
    features = Features.of(text)
    for rule in rules:
        reason = rule(features)
        if reason is not None:
            return reason
    return None
