"""Line-level heuristics (-> `remove_lines`) and noise normalizations (-> `normalize`).

- C4 line filters: Raffel et al. 2020, Section 2.2 and the TFDS `c4_utils` it describes:
  lines must end in terminal punctuation and hold at least 3 words; lines mentioning
  javascript or cookie/terms/privacy policies go; words over 1000 characters go. C4 drops the
  whole page for "lorem ipsum" or a curly bracket; here those are also line rules
  (`c4_lorem_ipsum`, `c4_curly_bracket`) so code lines can be removed without losing a page.
  The page-level versions are in `doc.py`.
- FineWeb (Penedo et al. 2024, Section 3.3) scores documents by duplicated lines and lines of
  at most 30 characters; as line rules: `duplicate_line` removes a line repeating an earlier
  one, `short_line` removes lines of at most 30 characters without terminal punctuation.
- `navigation`: runs of 3 or more short lines without terminal punctuation (menus,
  breadcrumbs, link lists), blank lines inside the run included.
- Normalizations: zero-width characters, runs of repeated `!`/`?`/`.`, and the `¶` anchors
  that documentation generators append to headings.
"""

from __future__ import annotations

import re
from collections.abc import Callable

C4_END_MARKS = (".", "?", "!", '"')
TERMINAL_PUNCTUATION = (".", "'", '"', "!", "?")  # FineWeb's stop characters
SHORT_LINE_CHARS = 30
NAVIGATION_RUN = 3
C4_POLICY = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
_POLICY = re.compile("|".join(map(re.escape, C4_POLICY)))
_ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff")
_REPEATED_MARKS = re.compile(r"!{3,}|\?{3,}|\.{4,}")


def has_terminal_punctuation(line: str) -> bool:
    return line.endswith(C4_END_MARKS)


# Each single-line rule: (stripped line, lowercased stripped line) -> removed?
LineRule = Callable[[str, str], bool]

SINGLE_LINE_RULES: dict[str, LineRule] = {
    "c4_javascript": lambda line, lower: "javascript" in lower,
    "c4_policy": lambda line, lower: _POLICY.search(lower) is not None,
    "c4_lorem_ipsum": lambda line, lower: "lorem ipsum" in lower,
    "c4_curly_bracket": lambda line, lower: "{" in line or "}" in line,
    "c4_long_word": lambda line, lower: (
        len(line) > 1000 and any(len(w) > 1000 for w in line.split())
    ),
    "c4_no_terminal_punctuation": lambda line, lower: not has_terminal_punctuation(line),
    "c4_too_few_words": lambda line, lower: len(line.split()) < 3,
    "short_line": lambda line, lower: (
        len(line) <= SHORT_LINE_CHARS and not line.endswith(TERMINAL_PUNCTUATION)
    ),
}
CONTEXT_RULES = ("duplicate_line", "navigation")
NORMALIZE_RULES = ("zero_width", "repeated_punctuation", "heading_anchor")

LINE_RULE_SETS: dict[str, tuple[str, ...]] = {
    "c4_lines": (
        "c4_javascript",
        "c4_policy",
        "c4_lorem_ipsum",
        "c4_curly_bracket",
        "c4_long_word",
        "c4_no_terminal_punctuation",
        "c4_too_few_words",
    ),
    "fineweb_lines": ("duplicate_line", "short_line"),
    "normalize": NORMALIZE_RULES,
}
DEFAULT_LINE_RULES = (
    "c4_javascript",
    "c4_policy",
    "c4_lorem_ipsum",
    "c4_long_word",
    "duplicate_line",
    "navigation",
    *NORMALIZE_RULES,
)


def _is_navigation_like(line: str) -> bool:
    return 0 < len(line) <= SHORT_LINE_CHARS and not line.endswith(TERMINAL_PUNCTUATION)


def navigation_runs(lines: list[str]) -> list[tuple[int, int]]:
    """Inclusive (first, last) line ranges of runs of navigation-like lines."""
    runs: list[tuple[int, int]] = []
    start = last = -1
    count = 0
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            continue  # blank lines neither start nor break a run
        if _is_navigation_like(stripped):
            if count == 0:
                start = index
            last = index
            count += 1
            continue
        if count >= NAVIGATION_RUN:
            runs.append((start, last))
        count = 0
    if count >= NAVIGATION_RUN:
        runs.append((start, last))
    return runs


def line_reasons(lines: list[str], rules: tuple[str, ...]) -> list[str | None]:
    """For every line, the first rule that removes it (None: kept). Blank lines are kept
    unless they sit inside a removed navigation run."""
    single = [(name, SINGLE_LINE_RULES[name]) for name in rules if name in SINGLE_LINE_RULES]
    check_duplicates = "duplicate_line" in rules
    seen: set[str] = set()
    reasons: list[str | None] = [None] * len(lines)
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            continue
        if check_duplicates:
            if stripped in seen:
                reasons[index] = "duplicate_line"
                continue
            seen.add(stripped)
        lower = stripped.lower()
        for name, rule in single:
            if rule(stripped, lower):
                reasons[index] = name
                break
    if "navigation" in rules:
        for first, last in navigation_runs(lines):
            for index in range(first, last + 1):
                if reasons[index] is None:
                    reasons[index] = "navigation"
    return reasons


def normalizations(text: str, rules: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(rule, source, target) replacements for the noise found in `text`, in a safe order."""
    found: list[tuple[str, str, str]] = []
    if "zero_width" in rules:
        found += [("zero_width", ch, "") for ch in _ZERO_WIDTH if ch in text]
    if "repeated_punctuation" in rules:
        runs = sorted(set(_REPEATED_MARKS.findall(text)), key=lambda run: (-len(run), run))
        found += [("repeated_punctuation", run, "..." if run[0] == "." else run[0]) for run in runs]
    if "heading_anchor" in rules and "¶" in text:
        found.append(("heading_anchor", "¶", ""))
    return found
