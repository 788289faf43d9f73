"""Align a teacher's cleaned text with its original, character by character, exactly and fast.

The result is the matching blocks of an edit script of insertions and deletions (a common
subsequence of the two texts): what is outside the blocks was deleted from the original or
inserted by the teacher. `difflib.SequenceMatcher` is not used: its junk heuristic (on by
default) gives non-minimal scripts on most chunks of the example corpus, and without it it is
four times slower than Myers' algorithm here (`bench/bench_clean_diff.py`).

1. Lines first: lines that occur once in each text and are equal anchor the alignment (in
   the longest order-keeping set, as patience diff does). Repeated lines ("{", "}", blank
   lines) anchor nothing: tying the teacher's copy to the wrong one of them would tear a
   changed line away from its original.
2. Between anchors, each teacher line that is a subsequence of an original line is paired with
   it (a dynamic programme maximising the characters paired; repeated and equal lines are
   paired here), so partial deletions stay inside their line; each pair is then aligned
   character by character. A stretch too large for the programme (more than `DP_CELLS` line
   pairs) is first cut by a Myers shortest edit script over its whole lines.
3. The lines left unpaired between pairs: original lines alone were deleted whole, teacher lines
   alone were inserted, and a mixture (lines joined, characters replaced, text rewritten) is
   aligned word by word with Myers (a word or a symbol with its spaces is a token), then
   character by character inside each replaced stretch. Characters aligned freely across lines
   would match a rewritten sentence letter by letter against the lines around it, turning an
   insertion into scattered deletions; whole words rarely line up by chance. Past
   `MAX_BLOCK_EDITS` token edits the mixture counts as replaced, so nothing in it is taken for
   a deletion the teacher may not have meant.
4. A teacher text that is a subsequence of the original must come out as deletions only (any
   embedding of a subsequence is a shortest edit script); if the steps above found insertions,
   the whole text is aligned again character by character, which cannot miss.
5. Each pure deletion is slid over equal characters to where it covers whole lines, if it can
   (deleting "b\nab\n" or "ab\nab" from "ab\nab\nab\n" leaves the same text; the first is
   two lines): equally short scripts, but one a line-level program can state.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Sequence

from proxkit.program.ops import is_subsequence

Block = tuple[int, int, int]  # (original start, cleaned start, length) of equal text
MAX_BLOCK_EDITS = 1000
DP_CELLS = 40_000  # line pairs the pairing programme weighs in one stretch
# A word or a symbol with the spaces after it (so spaces never match alone), or leading spaces:
# every character is in exactly one token.
TOKEN = re.compile(r"\w+\s*|[^\w\s]\s*|\s+")


def myers(a: Sequence, b: Sequence, max_edits: int | None = None) -> list[Block] | None:
    """Matching blocks of a shortest insert/delete edit script from `a` to `b` (Myers 1986,
    the greedy O((N+M)D) algorithm); None when it needs more than `max_edits` edits."""
    n, m = len(a), len(b)
    limit = n + m if max_edits is None else min(max_edits, n + m)
    offset = limit + 1
    furthest = [0] * (2 * limit + 3)
    trace: list[list[int]] = []
    for d in range(limit + 1):
        trace.append(furthest[offset - d : offset + d + 1])
        for k in range(-d, d + 1, 2):
            if k == -d or (k != d and furthest[offset + k - 1] < furthest[offset + k + 1]):
                x = furthest[offset + k + 1]  # down: an insertion
            else:
                x = furthest[offset + k - 1] + 1  # right: a deletion
            y = x - k
            while x < n and y < m and a[x] == b[y]:
                x += 1
                y += 1
            furthest[offset + k] = x
            if x >= n and y >= m:
                return _walk_back(trace, d, n, m)
    return None


def _walk_back(trace: list[list[int]], d: int, n: int, m: int) -> list[Block]:
    blocks: list[Block] = []
    x, y = n, m
    for step in range(d, 0, -1):
        before = trace[step]  # furthest x per diagonal after step - 1, diagonals -step..step
        k = x - y
        down = k == -step or (k != step and before[k - 1 + step] < before[k + 1 + step])
        previous_k = k + 1 if down else k - 1
        previous_x = before[previous_k + step]
        previous_y = previous_x - previous_k
        snake_x = previous_x if down else previous_x + 1
        if x > snake_x:
            blocks.append((snake_x, snake_x - k, x - snake_x))
        x, y = previous_x, previous_y
    if x > 0:
        blocks.append((0, 0, x))
    blocks.reverse()
    return blocks


def align(original: str, cleaned: str) -> list[Block]:
    """Matching blocks of `cleaned` against `original` (module doc), in order."""
    old, new = _lines(original), _lines(cleaned)
    blocks = _merged(_anchored(old, new, _unique_anchors(old, new), 0, 0, split=True))
    if sum(size for _, _, size in blocks) < len(cleaned) and is_subsequence(cleaned, original):
        blocks = myers(original, cleaned, MAX_BLOCK_EDITS) or _leftmost(original, cleaned)
    return _slid_to_lines(original, blocks)


def _unique_anchors(old: list[str], new: list[str]) -> list[Block]:
    """Lines equal and once in each text, the longest set of them in the same order."""
    old_count, new_count = Counter(old), Counter(new)
    where = {line: j for j, line in enumerate(new) if new_count[line] == 1}
    pairs = [
        (i, where[line]) for i, line in enumerate(old) if old_count[line] == 1 and line in where
    ]
    # Longest increasing subsequence of the new positions (patience sorting, with links back).
    tails: list[int] = []  # per length, the index in `pairs` of the smallest possible last j
    back: list[int] = []
    for index, (_, j) in enumerate(pairs):
        length = bisect.bisect_left([pairs[t][1] for t in tails], j)
        back.append(tails[length - 1] if length else -1)
        if length == len(tails):
            tails.append(index)
        else:
            tails[length] = index
    chain: list[Block] = []
    index = tails[-1] if tails else -1
    while index >= 0:
        chain.append((pairs[index][0], pairs[index][1], 1))
        index = back[index]
    return chain[::-1]


def _anchored(
    old: list[str],
    new: list[str],
    anchors: list[Block],
    old_start: int,
    new_start: int,
    split: bool,
) -> list[Block]:
    """Matching blocks of the anchor lines and, between them, of `_between`."""
    old_at, new_at = _starts(old), _starts(new)
    blocks: list[Block] = []
    i = j = 0
    for anchor_i, anchor_j, size in [*anchors, (len(old), len(new), 0)]:
        blocks += _between(
            old[i:anchor_i], new[j:anchor_j], old_start + old_at[i], new_start + new_at[j], split
        )
        if size:
            length = old_at[anchor_i + size] - old_at[anchor_i]
            blocks.append((old_start + old_at[anchor_i], new_start + new_at[anchor_j], length))
        i, j = anchor_i + size, anchor_j + size
    return blocks


def _slid_to_lines(text: str, blocks: list[Block]) -> list[Block]:
    """Each pure deletion (a gap of `text` between blocks that meet in the cleaned text) moved
    over equal characters to its place covering the most whole lines (module doc, step 5)."""
    blocks = list(blocks)
    for k in range(len(blocks) - 1):
        (i, j, size), (next_i, next_j, next_size) = blocks[k], blocks[k + 1]
        start, end = i + size, next_i
        if j + size != next_j or start == end:
            continue  # an insertion or replacement, or no gap
        candidates = [0]
        shift = 0
        while shift < size - 1 and text[start - shift - 1] == text[end - shift - 1]:
            shift += 1
            candidates.append(-shift)
        shift = 0
        while shift < next_size - 1 and text[start + shift] == text[end + shift]:
            shift += 1
            candidates.append(shift)
        best = max(candidates, key=lambda s: (_line_fit(text, start + s, end + s), -abs(s)))
        if best:
            blocks[k] = (i, j, size + best)
            blocks[k + 1] = (next_i + best, next_j + best, next_size - best)
    return blocks


def _line_fit(text: str, start: int, end: int) -> int:
    """2 for a deletion of whole lines each with its line break, 1 for one starting with a
    line break and ending at a line's end (the last lines of a text), else 0."""
    if (start == 0 or text[start - 1] == "\n") and text[end - 1] == "\n":
        return 2
    if text[start] == "\n" and (end == len(text) or text[end] == "\n"):
        return 1
    return 0


def _lines(text: str) -> list[str]:
    """The lines of `text` with their newlines, so that joining them gives `text` back."""
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def _starts(lines: list[str]) -> list[int]:
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    return starts


def _between(
    old: list[str], new: list[str], old_start: int, new_start: int, split: bool
) -> list[Block]:
    """Matching blocks between two line anchors: subsequence pairs, then what lies between."""
    if not old or not new:
        return []
    if len(old) * len(new) > DP_CELLS:
        if split:
            anchors = myers(old, new) or []
            return _anchored(old, new, anchors, old_start, new_start, split=False)
        return _shifted(_by_words("".join(old), "".join(new)), old_start, new_start)
    blocks: list[Block] = []
    old_at = _starts(old)
    new_at = _starts(new)
    i = j = 0
    for pair_i, pair_j in [*_subsequence_pairs(old, new), (len(old), len(new))]:
        group_old = "".join(old[i:pair_i])
        group_new = "".join(new[j:pair_j])
        if group_old and group_new:
            found = _by_words(group_old, group_new)
            blocks += _shifted(found, old_start + old_at[i], new_start + new_at[j])
        if pair_i < len(old):
            found = myers(old[pair_i], new[pair_j]) or []
            blocks += _shifted(found, old_start + old_at[pair_i], new_start + new_at[pair_j])
        i, j = pair_i + 1, pair_j + 1
    return blocks


def _by_words(old: str, new: str) -> list[Block]:
    """Matching blocks of a word-level shortest edit script, refined character by character
    inside each stretch replaced; none past MAX_BLOCK_EDITS token edits."""
    old_tokens, new_tokens = TOKEN.findall(old), TOKEN.findall(new)
    found = myers(old_tokens, new_tokens, MAX_BLOCK_EDITS)
    if found is None:
        return []
    old_at, new_at = _starts(old_tokens), _starts(new_tokens)
    blocks: list[Block] = []
    i = j = 0
    for token_i, token_j, size in [*found, (len(old_tokens), len(new_tokens), 0)]:
        gap_old = old[old_at[i] : old_at[token_i]]
        gap_new = new[new_at[j] : new_at[token_j]]
        if gap_old and gap_new:
            blocks += _shifted(myers(gap_old, gap_new) or [], old_at[i], new_at[j])
        if size:
            blocks.append(
                (old_at[token_i], new_at[token_j], old_at[token_i + size] - old_at[token_i])
            )
        i, j = token_i + size, token_j + size
    return blocks


def _subsequence_pairs(old: list[str], new: list[str]) -> list[tuple[int, int]]:
    """Pairs (old line, new line), in order, each new line a subsequence of its old line,
    chosen to pair as many characters of `new` as possible."""
    rows, columns = len(old), len(new)
    best = [[0] * (columns + 1) for _ in range(rows + 1)]
    for r in range(1, rows + 1):
        above, row, line = best[r - 1], best[r], old[r - 1]
        for c in range(1, columns + 1):
            value = max(above[c], row[c - 1])
            candidate = new[c - 1]
            if (
                len(candidate) <= len(line)
                and above[c - 1] + len(candidate) > value
                and is_subsequence(candidate, line)
            ):
                value = above[c - 1] + len(candidate)
            row[c] = value
    pairs: list[tuple[int, int]] = []
    r, c = rows, columns
    while r and c:
        if best[r][c] == best[r - 1][c]:
            r -= 1
        elif best[r][c] == best[r][c - 1]:
            c -= 1
        else:
            pairs.append((r - 1, c - 1))
            r, c = r - 1, c - 1
    pairs.reverse()
    return pairs


def _shifted(blocks: list[Block], old_start: int, new_start: int) -> list[Block]:
    return [(i + old_start, j + new_start, size) for i, j, size in blocks]


def _merged(blocks: list[Block]) -> list[Block]:
    """Adjacent blocks joined into one."""
    merged: list[Block] = []
    for i, j, size in blocks:
        if merged and merged[-1][0] + merged[-1][2] == i and merged[-1][1] + merged[-1][2] == j:
            merged[-1] = (merged[-1][0], merged[-1][1], merged[-1][2] + size)
        elif size:
            merged.append((i, j, size))
    return merged


def _leftmost(original: str, cleaned: str) -> list[Block]:
    """The leftmost embedding of a subsequence, as blocks (a shortest edit script too)."""
    blocks: list[Block] = []
    position = 0
    for j, char in enumerate(cleaned):
        position = original.index(char, position)
        blocks.append((position, j, 1))
        position += 1
    return _merged(blocks)
