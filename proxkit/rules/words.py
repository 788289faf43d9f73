"""English word tokens as datatrove counts them, fast.

datatrove's Gopher, FineWeb and C4 filters (the code FineWeb was built with) count words with
spaCy's blank English tokenizer: text split on whitespace, then marks split off the front and
back of each piece, a few split inside it (a hyphen between letters, `=` or `/` between
words), contractions split (`don't` -> `do`, `n't`; `cannot` -> `can`, `not`), while URLs,
abbreviations (`U.S.`, `Dr.`), numbers (`3.14`, `3:00pm`), emoticons and code-like pieces
(`os.path.join(a`) stay whole. Those counts decide the rules (share of tokens holding a letter,
mean word length, repeated n-grams), so proxkit's rules tokenize the same way, with rules of its
own written from spaCy's observed output: over 10 times faster, with no dependency.
`bench/bench_rules.py` measures how often decisions then match datatrove's.

`sentence_count` counts sentences as spaCy's rule-based sentencizer does: a sentence ends at a
sentence-final mark once a token that is not punctuation follows.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from itertools import chain

_WHOLE = frozenset(
    [
        "):",
        "(:",
        ":)",
        ":(",
        ";)",
        ";(",
        ":D",
        ":P",
        ":p",
        ":/",
        ":|",
        ":o",
        ":O",
        "=)",
        "(=",
        "<3",
        "8)",
        "xD",
        "XD",
        "^_^",
        "-_-",
        "^^",
        "~~",
        "//",
        "''",
        "--",
        "---",
        "C++",
        "and/or",
        "w/",
        "w/o",
        "24/7",
        "'d",
        "'s",
        "'m",
        "'re",
        "'ve",
        "'ll",
        "n't",
        "’d",
        "’s",
        "’m",
        "’re",
        "’ve",
        "’ll",
        "n’t",
        ":]",
        ":')",
        "e.g.",
        "i.e.",
        "a.m.",
        "p.m.",
        "E.g.",
        "I.e.",
    ]
)
# Contractions, with and without their apostrophe: what spaCy splits them into.
_SPLIT = {
    "cannot": ("can", "not"),
    "gonna": ("gon", "na"),
    "gotta": ("got", "ta"),
    "can't": ("ca", "n't"),
    "can’t": ("ca", "n’t"),
    "won't": ("wo", "n't"),
    "won’t": ("wo", "n’t"),
    "ain't": ("ai", "n't"),
    "cant": ("ca", "nt"),
    "wont": ("wo", "nt"),
    "aint": ("ai", "nt"),
}
for _stem in [
    "do",
    "does",
    "did",
    "is",
    "are",
    "was",
    "were",
    "has",
    "have",
    "had",
    "could",
    "should",
    "would",
    "must",
    "need",
]:
    _SPLIT[_stem + "nt"] = (_stem, "nt")
for _pronoun, _endings in {
    "i": "m d ve",
    "you": "re ve ll d",
    "he": "s d",
    "she": "s",
    "we": "ve d",
    "they": "re ve ll d",
    "that": "s",
    "what": "s",
    "there": "s",
}.items():
    for _ending in _endings.split():
        _SPLIT[_pronoun + _ending] = (_pronoun, _ending)
        if _pronoun == "i":
            _SPLIT["I" + _ending] = ("I", _ending)
# 's ends any piece; the others end only a word (as spaCy's contraction table has them).
_POSSESSIVE = ("'s", "’s", "'S", "’S")
_APOSTROPHE_ENDINGS = (
    "n't",
    "n’t",
    "'m",
    "’m",
    "'re",
    "’re",
    "'ve",
    "’ve",
    "'ll",
    "’ll",
    "'d",
    "’d",
)
_ABBREVIATIONS = frozenset(
    [
        "Mr.",
        "Mrs.",
        "Ms.",
        "Dr.",
        "Prof.",
        "Inc.",
        "Ltd.",
        "Co.",
        "Corp.",
        "Jr.",
        "St.",
        "Mt.",
        "Gov.",
        "Sen.",
        "Rep.",
        "Gen.",
        "vs.",
        "Jan.",
        "Feb.",
        "Mar.",
        "Apr.",
        "Jun.",
        "Jul.",
        "Aug.",
        "Sep.",
        "Sept.",
        "Oct.",
        "Nov.",
        "Dec.",
        "Ala.",
        "Ariz.",
        "Ark.",
        "Calif.",
        "Colo.",
        "Conn.",
        "Del.",
        "Fla.",
        "Ga.",
        "Ill.",
        "Ind.",
        "Kan.",
        "Ky.",
        "La.",
        "Md.",
        "Mass.",
        "Mich.",
        "Minn.",
        "Miss.",
        "Mo.",
        "Mont.",
        "Neb.",
        "Nev.",
        "Okla.",
        "Ore.",
        "Pa.",
        "Tenn.",
        "Va.",
        "Wash.",
        "Wis.",
        "Ph.D.",
        "Bros.",
    ]
)
_KEEP = re.compile(
    r"(?:[A-Z]\.){2,}|[A-Za-z]\.|"  # U.S., x.
    r"[+-]?\d+(?:[.,:/]\d+)*[a-z]*|"  # 3.14, 1,000, 3:00pm, 24/7, +41, -1, 1080p
    r"-+[^\W\d_]\w*|[^\W_]\w*-|-+|\.{2,}"  # -flag, --flag, x-, ----, ....
)
_URL = re.compile(r"(?i)(?:[a-z][a-z0-9+.-]*://|www\d?\.)\S+|[\w.+-]+@[\w-]+\.[\w.-]+")
_FRONT = re.compile(
    r"\.{2,}|''|[(\[{<>\"'“‘’«»¿¡„‚$£€¥₹#*&§%=!?:;,…—–©®™°·_`（「『【《，。：；！？、]|"
    r"\+(?!\d)|-(?=[>=<])|[^\w\s](?<=[\u2500-\u27bf])"
)
_BACK_MARKS = frozenset(")]}>([{<\"'”’»,;:!?%…°*&#~—–_`）」』】》，。：；！？、©®™")
_URL_CLOSING = frozenset(")],;:!?\"'”’»>")
_AFTER_DIGITS = frozenset("$£€¥₩₹₽₺₴₦₱฿+")
_UNIT = re.compile(
    r"(\d+(?:\.\d+)?)(km|cm|mm|kg|mg|lb|lbs|oz|ft|mph|kph|MB|GB|TB|KB|G|K|M|am|pm|m|g)"
)
_INFIX = re.compile(
    r"(?<=[^\W_])[-–—](?=[^\W\d_])|(?<=\d)[-+*^](?=\d)|(?<=\w)(?:-{2,}|\.{3,})(?=\w)|"
    r"(?<=[^\W\d_])[=:,<>](?=[^\W\d_])|(?<=[^\W_])[/:](?=[^\W\d_])|(?<=[a-z])\.(?=[A-Z])"
)
# Unicode's Sentence_Terminal property (generated with the `regex` module's \p{Sentence_Terminal}):
# where spaCy's sentencizer ends a sentence, and FineWeb's lines count as ending in punctuation.
SENTENCE_TERMINALS = frozenset(
    "!.?\u0589\u061d\u061e\u061f\u06d4\u0700\u0701\u0702\u07f9\u0837\u0839\u083d\u083e"
    "\u0964\u0965\u104a\u104b\u1362\u1367\u1368\u166e\u1735\u1736\u17d4\u17d5\u1803\u1809"
    "\u1944\u1945\u1aa8\u1aa9\u1aaa\u1aab\u1b4e\u1b4f\u1b5a\u1b5b\u1b5e\u1b5f\u1b7d\u1b7e"
    "\u1b7f\u1c3b\u1c3c\u1c7e\u1c7f\u2024\u203c\u203d\u2047\u2048\u2049\u2cf9\u2cfa\u2cfb"
    "\u2e2e\u2e3c\u2e53\u2e54\u2e60\u2e61\u3002\ua4ff\ua60e\ua60f\ua6f3\ua6f7\ua876\ua877"
    "\ua8ce\ua8cf\ua92f\ua9c8\ua9c9\uaa5d\uaa5e\uaa5f\uaaf0\uaaf1\uabeb\ufe12\ufe15\ufe16"
    "\ufe52\ufe56\ufe57\uff01\uff0e\uff1f\uff61\U00010a56\U00010a57\U00010f55\U00010f56"
    "\U00010f57\U00010f58\U00010f59\U00010f86\U00010f87\U00010f88\U00010f89\U00011047"
    "\U00011048\U000110be\U000110bf\U000110c0\U000110c1\U00011141\U00011142\U00011143"
    "\U000111c5\U000111c6\U000111cd\U000111de\U000111df\U00011238\U00011239\U0001123b"
    "\U0001123c\U000112a9\U000113d4\U000113d5\U0001144b\U0001144c\U000115c2\U000115c3"
    "\U000115c9\U000115ca\U000115cb\U000115cc\U000115cd\U000115ce\U000115cf\U000115d0"
    "\U000115d1\U000115d2\U000115d3\U000115d4\U000115d5\U000115d6\U000115d7\U00011641"
    "\U00011642\U0001173c\U0001173d\U0001173e\U00011944\U00011946\U00011a42\U00011a43"
    "\U00011a9b\U00011a9c\U00011c41\U00011c42\U00011ef7\U00011ef8\U00011f43\U00011f44"
    "\U00016a6e\U00016a6f\U00016af5\U00016b37\U00016b38\U00016b44\U00016d6e\U00016d6f"
    "\U00016e98\U0001bc9f\U0001da88"
)


def _inside(piece: str) -> list[str]:
    """A piece with nothing to split off its ends, split at its infix marks."""
    out, start = [], 0
    for match in _INFIX.finditer(piece):
        if match.start() > start:
            out.append(piece[start : match.start()])
        out.append(match.group())
        start = match.end()
    if start < len(piece):
        out.append(piece[start:])
    return out


def _back_mark(piece: str) -> int:
    """How many characters at the end of `piece` spaCy splits off as one mark (0: none)."""
    last = piece[-1]
    if last == ".":
        if piece.endswith(".."):
            return len(piece) - len(piece.rstrip("."))
        return 1
    if last in _BACK_MARKS:
        return 2 if piece.endswith("''") else 1
    if last in _AFTER_DIGITS:
        return 1 if len(piece) > 1 and piece[-2].isdigit() else 0
    return 1 if "\u2500" <= last <= "\u27bf" else 0


def _apostrophe_ending(piece: str) -> int:
    """The length of a contraction ending spaCy splits off (`'s`, and `n't`, `'ll`... after a
    word), or 0."""
    if piece.endswith(_POSSESSIVE):
        return 2
    for ending in _APOSTROPHE_ENDINGS:
        if piece.endswith(ending) and piece[: -len(ending)].isalpha():
            return len(ending)
    return 0


def _whole(piece: str) -> bool:
    return piece in _WHOLE or piece in _ABBREVIATIONS or _KEEP.fullmatch(piece) is not None


Cut = tuple[str, str, str]


def _cut(piece: str) -> Cut | list[str]:
    """spaCy's next step on a non-empty piece: a mark split off its front or back, as
    (front mark, rest, back mark) with one mark empty and the rest to split further; or, when
    nothing more comes off the ends, the piece's final tokens."""
    if piece[0].isdigit():
        unit = _UNIT.fullmatch(piece)
        if unit:
            return [unit.group(1), unit.group(2)]  # the number is whole
    if _whole(piece):
        return [piece]
    split = _SPLIT.get(piece.lower() if piece.isalpha() and not piece.isupper() else piece)
    if split:
        cut = len(split[0])
        return [piece[:cut], piece[cut:]]
    if _URL.match(piece):  # a URL keeps a final full stop, unless a closing mark precedes it
        end = len(piece)
        while end and (
            piece[end - 1] in _URL_CLOSING
            or (piece[end - 1] == "." and piece[end - 2 : end - 1] in _URL_CLOSING)
        ):
            end -= 1
        url = piece[:end]
        whole = _whole(url) or _URL.match(url)
        return [*([url] if whole else _inside(url)), *piece[end:]]
    cut = _back_mark(piece) if len(piece) > 1 else 0
    if cut and piece[:-cut] in _WHOLE:  # stripping the back reveals a whole token, as in spaCy
        return [piece[:-cut], piece[-cut:]]
    match = _FRONT.match(piece)
    if match and match.end() < len(piece):
        return match.group(), piece[match.end() :], ""
    if len(piece) > 2 and piece.endswith("):"):  # an emoticon, to spaCy
        return "", piece[:-2], "):"
    if not cut or cut >= len(piece):
        cut = _apostrophe_ending(piece) if "'" in piece or "’" in piece else 0
    if cut and cut < len(piece):
        return "", piece[:-cut], piece[-cut:]
    return _inside(piece)


def _split_piece(piece: str) -> list[str]:
    """All of a piece's tokens, cut by cut (any length; `_piece_tokens` caches the steps of
    short pieces instead)."""
    front: list[str] = []
    back: list[str] = []
    while piece:
        cut = _cut(piece)
        if isinstance(cut, list):
            return front + cut + back[::-1]
        mark, piece, back_mark = cut
        if mark:
            front.append(mark)
        else:
            back.append(back_mark)
    return front + back[::-1]


# A word with one of these before or after it splits into the mark and the word's own tokens
# (a third of all distinct pieces on web pages); checked against `_split_piece` by the tests.
_LONE_BACK = frozenset(",.:;!?)]\"”'’…")
_LONE_FRONT = frozenset("(\"“‘'[")
# Letters, digits and underscores, starting with a letter and ending in a letter or digit
# (`utf8`, `max_len`): one token.
_PLAIN_WORD = re.compile(r"[^\W\d_](?:\w*[^\W_\u2500-\u27bf])?")


_LONGEST_STEPPED = 64  # longer pieces are split in a loop: no deep recursion


@lru_cache(maxsize=1 << 18)
def _piece_tokens(piece: str) -> tuple[str, ...]:
    if piece.isalpha():
        if len(piece) > 8 or piece.lower() not in _SPLIT:
            return (piece,)
    elif piece.isdecimal() or _PLAIN_WORD.fullmatch(piece):
        return (piece,)
    elif len(piece) > 2:
        last, first = piece[-1], piece[0]
        if last in _LONE_BACK and piece[:-1].isalpha() and piece not in _ABBREVIATIONS:
            return (*_piece_tokens(piece[:-1]), last)
        if first in _LONE_FRONT and piece[1:].isalpha() and piece not in _WHOLE:
            return (first, *_piece_tokens(piece[1:]))
    if len(piece) > _LONGEST_STEPPED:
        return tuple(_split_piece(piece))
    cut = _cut(piece)
    if isinstance(cut, list):
        return tuple(cut)
    front, rest, back = cut  # the rest is cached too: `f()`, `f(),` and `f().` share `f(`
    return (front, *_piece_tokens(rest)) if front else (*_piece_tokens(rest), back)


def words(text: str) -> list[str]:
    """The word tokens of `text`, punctuation tokens included, as datatrove counts them."""
    return list(chain.from_iterable(map(_piece_tokens, text.split())))


@lru_cache(maxsize=1 << 18)
def token_kind(token: str) -> tuple[bool, bool]:
    """(made only of punctuation, holds a letter): what the rules ask of a token."""
    if token.isalpha():
        return False, True
    symbol = not token.isalnum() and all(
        unicodedata.category(c)[0] == "P" or c in "$+<=>^`|~" or c < " " for c in token
    )
    return symbol, any(c.isalpha() for c in token)


def is_punctuation(token: str) -> bool:
    return all(unicodedata.category(c).startswith("P") for c in token)


def sentence_count(tokens: list[str]) -> int:
    """Sentences in a run of tokens, as spaCy's sentencizer splits them."""
    if not tokens:
        return 0
    count, seen_end = 1, False
    for token in tokens:
        if token in SENTENCE_TERMINALS:
            seen_end = True
        elif seen_end and not is_punctuation(token):
            count += 1
            seen_end = False
    return count


def clear_caches() -> None:
    """Forget the tokens of pieces seen so far (benchmarks start each measurement cold)."""
    _piece_tokens.cache_clear()
    token_kind.cache_clear()
