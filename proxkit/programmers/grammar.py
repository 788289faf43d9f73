"""Constrained decoding: a model can only write programs of the ProX grammar.

`ProgramGrammar` is a character-level automaton for one model call:
- doc level: `keep_doc()` or `drop_doc()`;
- chunk level: `keep_doc()` alone, or lines of `remove_lines(line_start=S, line_end=E)` with
  first_line <= S <= E <= last_line of the chunk, `remove_str(line=N, del_str="..")` whose
  string occurs exactly once in line N of the chunk (the line-anchored cut), and
  `normalize(source_str="..", target_str="..")` whose source occurs in the chunk, with a
  target that is its source with characters left out under `--deletion-only` (normalize
  strings hold no quote, backslash or newline, so the strict and reference parsers read them
  alike; a cut's string writes a quote or backslash of its line escaped, as `ast` reads it);
and the end of generation only after a complete line. An optional leading space is allowed,
as chat models answer after one, and trailing spaces, as the Llama-2 chat format ends an answer
with " </s>".

The grammar also ends a program where a trained refining model ends it, so that an undertrained
or confused model cannot spend the whole token budget repeating itself: nothing follows
`keep_doc()`, line ranges and cuts come in document order (a range starts after the previous
range ended, and at or after the line of the previous cut), and a normalize source or a cut
is written at most once. Each of these removes only
programs that do the same as a shorter one.

Decoding under the grammar is greedy, so it needs no full token mask at each step
(`GreedyRows`): the model's own best token is checked first, by feeding its text to the
automaton, and only when the grammar refuses it are the allowed tokens listed and the best of
them taken. That is exactly what masking every other token and taking the best would choose,
and it costs one automaton step per row while the model writes valid programs (a trained
refiner nearly always does). `allowed_tokens` lists the allowed tokens by walking a trie of the
vocabulary's token strings from the automaton's state, entering only the characters the state
can take next (`ProgramGrammar.next_chars`); in free-text states (a normalize target) a
precomputed set of plain-text tokens is used instead of the walk. Allowed lists are kept per
grammar and state, as tensors, so a state met again costs nothing. `follows` checks a finished
generation against the same automaton, token by token, exactly as constrained decoding would
have steered it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from proxkit.program.ops import unique_position

HEADS = (
    "keep_doc()",
    "remove_lines(line_start=",
    'normalize(source_str="',
    "remove_str(line=",
)
CUT_MIDDLE = ', del_str="'
TARGET = '", target_str="'
DOC_ANSWERS = ("keep_doc()", "drop_doc()")
FORBIDDEN_IN_STRINGS = frozenset('"\\\n')
ESCAPED = frozenset('"\\')  # written escaped (\\" and \\\\) in a cut's string
DIGITS = "0123456789"  # line numbers: ASCII digits only (str.isdigit also takes "²")


class State(NamedTuple):
    """Where the automaton is: `kind` of token being written and its `text` so far, the range
    start being closed or the line being cut (`number`), and what the lines before constrain:
    the first line a new range or cut may start at (`floor`), the normalize sources and the
    cuts (line, string) already written, and whether any line was written (`keep_doc()` must
    stand alone)."""

    kind: str
    text: str = ""
    number: int = 0
    floor: int = 0
    used: frozenset[str | tuple[int, str]] = frozenset()
    written: bool = False
    source: str = ""  # the normalize source whose target is being written


@dataclass(frozen=True)
class ProgramGrammar:
    stage: str  # "doc" or "chunk"
    first_line: int = 0
    last_line: int = 0
    text: str = ""  # the chunk's own text, where normalize sources must occur
    deletion_only: bool = False  # --deletion-only: a normalize target only drops characters

    @functools.cached_property
    def lines(self) -> list[str]:
        """The chunk's lines, where `remove_str` strings must occur (line first_line first)."""
        return self.text.split("\n")

    def start(self) -> State:
        return State("start", floor=self.first_line)

    def accepts(self, state: State) -> bool:
        """Whether generation may end here (a complete program)."""
        return state.kind in ("end", "final", "trail")

    def feed(self, state: State | None, chars: str) -> State | None:
        for char in chars:
            if state is None:
                return None
            state = self._step(state, char)
        return state

    def next_chars(self, state: State) -> str | None:
        """The characters `state` can take next, or None where almost any can (inside a
        string): the trie walk enters only these, instead of every first character."""
        kind, text = state.kind, state.text
        if kind == "start":
            return (" " if text == "" else "") + self.next_chars(
                state._replace(kind="head", text="")
            )  # type: ignore[operator]
        if kind == "head":
            return "".join(
                {
                    h[len(text)]
                    for h in self._heads(state)
                    if h.startswith(text) and len(h) > len(text)
                }
            )
        if kind in ("start_num", "cut_num"):
            return DIGITS + ("," if text else "")
        if kind == "end_num":
            return DIGITS + (")" if text else "")
        if kind == "mid":
            return ", line_end="[len(text)]
        if kind == "between":
            return TARGET[len(text)]
        if kind == "cut_mid":
            return CUT_MIDDLE[len(text)]
        if kind in ("cut_text", "cut_escape"):
            return self._cut_next(state)
        if kind == "target" and self.deletion_only:
            return '"' + "".join(set(state.source[_embedded(state) :]) - FORBIDDEN_IN_STRINGS)
        if kind == "close":
            return ")"
        if kind == "end":
            return " \n"
        if kind in ("final", "trail"):
            return " "
        if kind == "source":
            return self._source_next(state)
        return None  # a normalize target: any character but the forbidden ones

    def _cut_next(self, state: State) -> str:
        """What can follow a cut's string so far: the characters after its occurrences in its
        line (a quote or backslash escaped), and the closing quote once it occurs there
        exactly once and is a new cut."""
        line = self.lines[state.number - self.first_line]
        chars = {
            c
            for c in set(_following(state.text, line)) - {"\n"}
            if self._cut_open(state.number, state.text + c, state.used)
        }
        if state.kind == "cut_escape":
            return "".join(chars & ESCAPED)
        if chars & ESCAPED:
            chars = (chars - ESCAPED) | {"\\"}
        cut = (state.number, state.text)
        if state.text and cut not in state.used and unique_position(state.text, line) is not None:
            chars.add('"')
        return "".join(chars)

    def _source_next(self, state: State) -> str:
        """What can follow a normalize source so far: the characters after its occurrences in
        the chunk, and the closing quote once it is a new, non-empty source."""
        source = state.text
        chars = {
            c
            for c in set(_following(source, self.text)) - FORBIDDEN_IN_STRINGS
            if self._source_open(source + c, state.used)
        }
        if source and source not in state.used:
            chars.add('"')
        return "".join(chars)

    @functools.cached_property
    def _heads_memo(self) -> dict[tuple, tuple[str, ...]]:
        return {}

    def _heads(self, state: State) -> tuple[str, ...]:
        """The statements that may begin here (asked at every character of one: kept)."""
        key = (state.floor, state.used, state.written)
        heads = self._heads_memo.get(key)
        if heads is None:
            heads = self._heads_memo[key] = self._new_heads(state)
        return heads

    def _new_heads(self, state: State) -> tuple[str, ...]:
        if self.stage == "doc":
            return DOC_ANSWERS
        heads = [] if state.written else ["keep_doc()"]
        if state.floor <= self.last_line:
            heads.append(HEADS[1])
            if self._cut_lines("", state.floor, state.used):
                heads.append(HEADS[3])
        if self._source_open("", state.used):
            heads.append(HEADS[2])
        return tuple(heads)

    # A string may only be started or grown where it can still be finished, so the automaton
    # has no dead ends: a model can never be led into a prefix no program completes (a
    # normalize source whose every extension is written already, a line whose cuts are).

    def _source_open(self, piece: str, used: frozenset) -> bool:
        """Whether `piece` can grow into a new normalize source: a non-empty string of the
        chunk without quote, backslash or newline, not written before."""
        return _open(
            piece,
            lambda p: p not in used,
            lambda p: (c for c in _following(p, self.text) if c not in FORBIDDEN_IN_STRINGS),
        )

    def _cut_open(self, number: int, piece: str, used: frozenset) -> bool:
        """Whether `piece` can grow into a new cut of line `number`: a non-empty string that
        occurs exactly once in the line, not cut before."""
        line = self.lines[number - self.first_line]
        return _open(
            piece,
            lambda p: (number, p) not in used and unique_position(p, line) is not None,
            lambda p: (c for c in _following(p, line) if c != "\n"),
        )

    def _cut_lines(self, digits: str, floor: int, used: frozenset) -> bool:
        """Whether a line at `floor` or later whose number starts with `digits` can still take
        a new cut."""
        return any(
            str(number).startswith(digits) and self._cut_open(number, "", used)
            for number in range(max(floor, self.first_line), self.last_line + 1)
        )

    def _number_ok(self, digits: str, low: int) -> bool:
        """Can `digits` still grow into a number in [low, last_line]?"""
        if len(digits) > 1 and digits[0] == "0":
            return False
        value = int(digits)
        if value == 0:
            return low == 0
        # Numbers starting with these digits and k more span [value*10^k, (value+1)*10^k - 1].
        smallest, largest = value, value
        while smallest <= self.last_line:
            if largest >= low:
                return True
            smallest, largest = smallest * 10, largest * 10 + 9
        return False

    def _step(self, state: State, char: str) -> State | None:
        kind = state.kind
        if kind == "start":
            if char == " " and state.text == "":
                return state._replace(text=" ")
            return self._step(state._replace(kind="head", text=""), char)
        if kind == "head":
            prefix = state.text + char
            for head in self._heads(state):
                if head == prefix:
                    if head in DOC_ANSWERS:  # keep_doc() / drop_doc(): the whole program
                        return state._replace(kind="final", text="")
                    kind = {HEADS[1]: "start_num", HEADS[2]: "source"}.get(head, "cut_num")
                    return state._replace(kind=kind, text="")
                if head.startswith(prefix):
                    return state._replace(text=prefix)
            return None
        if kind == "start_num":
            digits = state.text + char
            if char in DIGITS and self._number_ok(digits, state.floor):
                return state._replace(text=digits)
            if char == "," and state.text and int(state.text) >= state.floor:
                return state._replace(kind="mid", text=",", number=int(state.text))
            return None
        if kind == "mid":
            prefix = state.text + char
            if prefix == ", line_end=":
                return state._replace(kind="end_num", text="")
            return state._replace(text=prefix) if ", line_end=".startswith(prefix) else None
        if kind == "cut_num":
            digits = state.text + char
            if char in DIGITS and self._number_ok(digits, state.floor):
                return (
                    state._replace(text=digits)
                    if self._cut_lines(digits, state.floor, state.used)
                    else None
                )
            if char == "," and state.text and int(state.text) >= state.floor:
                number = int(state.text)
                if number <= self.last_line and self._cut_open(number, "", state.used):
                    return state._replace(kind="cut_mid", text=",", number=number)
            return None
        if kind == "cut_mid":
            prefix = state.text + char
            if prefix == CUT_MIDDLE:
                return state._replace(kind="cut_text", text="")
            return state._replace(text=prefix) if CUT_MIDDLE.startswith(prefix) else None
        if kind in ("cut_text", "cut_escape"):
            line = self.lines[state.number - self.first_line]
            if kind == "cut_text" and char == "\\":  # a quote or backslash of the line follows
                return state._replace(kind="cut_escape")
            if kind == "cut_text" and char == '"':
                cut = (state.number, state.text)
                if not state.text or cut in state.used or unique_position(state.text, line) is None:
                    return None
                return State("close", '"', floor=state.number, used=state.used | {cut})
            if (char in ESCAPED) != (kind == "cut_escape") or char == "\n":
                return None
            cut = state.text + char
            if cut in line and self._cut_open(state.number, cut, state.used):
                return state._replace(kind="cut_text", text=cut)
            return None
        if kind == "end_num":
            digits = state.text + char
            if char in DIGITS and self._number_ok(digits, state.number):
                return state._replace(text=digits)
            if char == ")" and state.text and int(state.text) >= state.number:
                return State("end", floor=int(state.text) + 1, used=state.used, written=True)
            return None
        if kind == "source":
            if char == '"':
                if not state.text or state.text in state.used:
                    return None
                used = state.used | {state.text}
                return state._replace(kind="between", text='"', used=used, source=state.text)
            if char in FORBIDDEN_IN_STRINGS:
                return None
            source = state.text + char
            if source in self.text and self._source_open(source, state.used):
                return state._replace(text=source)
            return None
        if kind == "between":
            prefix = state.text + char
            if prefix == TARGET:
                return state._replace(kind="target", text="")
            return state._replace(text=prefix) if TARGET.startswith(prefix) else None
        if kind == "target":
            if char == '"':
                return state._replace(kind="close", text='"', source="")
            if char in FORBIDDEN_IN_STRINGS:
                return None
            if self.deletion_only and char not in state.source[_embedded(state) :]:
                return None  # the target must stay its source with characters left out
            return state._replace(text=state.text + char)
        if kind == "close":
            return state._replace(kind="end", text="", written=True) if char == ")" else None
        if kind in ("end", "final", "trail") and char == " ":
            return state._replace(kind="trail", text="")  # spaces before the end of the answer
        if kind == "end" and char == "\n":
            head = state._replace(kind="head", text="")
            return head if self._heads(head) else None  # nothing can be written on a new line
        return None  # nothing but spaces may follow keep_doc() / drop_doc()


def _open(
    piece: str, done: Callable[[str], bool], following: Callable[[str], Iterable[str]]
) -> bool:
    """Whether `piece` or a string it grows into (one character at a time, by `following`)
    is non-empty and `done`. Only strings that are not done are grown, and those are the
    strings written before or occurring more than once: few, and the first character that
    follows usually ends the search."""
    if piece and done(piece):
        return True
    seen, pending = set(), [piece]
    while pending:
        candidate = pending.pop()
        for char in following(candidate):
            grown = candidate + char
            if grown not in seen:
                if done(grown):
                    return True
                seen.add(grown)
                pending.append(grown)
    return False


def _embedded(state: State) -> int:
    """Where the leftmost embedding of a normalize target in its source ends: a character
    found in the source from there on keeps the target a subsequence of it."""
    position = 0
    for char in state.text:
        position = state.source.index(char, position) + 1
    return position


def _following(piece: str, text: str) -> Iterator[str]:
    """The characters that follow `piece`'s occurrences in `text` (every one for "")."""
    if not piece:
        yield from text
        return
    at = text.find(piece)
    while at != -1:
        after = at + len(piece)
        if after < len(text):
            yield text[after]
        at = text.find(piece, at + 1)


def complete_lines(grammar: ProgramGrammar, output: str) -> str:
    """The output up to its last complete line: a generation cut by the token limit would
    otherwise end in half a call."""
    lines = output.split("\n")
    for end in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:end])
        state = grammar.feed(grammar.start(), candidate)
        if state is not None and grammar.accepts(state):
            return candidate
    return ""


class _Node:
    __slots__ = ("children", "tokens")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.tokens: list[int] = []


class TokenTrie:
    """The vocabulary as text (what each token adds to the output), in a character trie."""

    def __init__(self, tokenizer) -> None:
        self.root = _Node()
        self.free: list[int] = []  # tokens with no quote, backslash or newline
        self.text_of: dict[int, str] = {}
        self.specials = {t for t in tokenizer.get_added_tokens_decoder()}
        for token, token_id in tokenizer.get_vocab().items():
            if token_id in self.specials:
                continue
            text = token_text(token)
            if not text:
                continue
            node = self.root
            for char in text:
                node = node.children.setdefault(char, _Node())
            node.tokens.append(token_id)
            self.text_of[token_id] = text
            if not FORBIDDEN_IN_STRINGS & set(text):
                self.free.append(token_id)


def token_text(token: str) -> str | None:
    """The text a sentencepiece-style token adds; None for bytes that are not whole characters."""
    if token.startswith("<0x") and token.endswith(">") and len(token) == 6:
        value = int(token[3:5], 16)
        return chr(value) if value < 0x80 else None
    return token.replace("▁", " ")


def follows(
    grammar: ProgramGrammar, tokens: Sequence[int], trie: TokenTrie, eos_id: int | None
) -> bool:
    """Whether constrained decoding allows every one of these generated tokens where it stands,
    so that it would have written the same (greedy decoding only picks among allowed tokens):
    each token continues the program, and EOS comes only after a complete line. A generation
    cut by the token limit follows when all its tokens do."""
    state: State | None = grammar.start()
    for token in tokens:
        if token == eos_id:
            return grammar.accepts(state)  # type: ignore[arg-type]
        state = advance(grammar, state, token, trie)  # type: ignore[arg-type]
        if state is None:
            return False
    return True


def advance(grammar: ProgramGrammar, state: State, token: int, trie: TokenTrie) -> State | None:
    """The state after writing `token` (not EOS), or None where the grammar refuses it; tokens
    that are no whole characters (byte pieces of a longer UTF-8 character) are refused."""
    text = trie.text_of.get(token)
    return None if text is None else grammar.feed(state, text)


def allowed_tokens(grammar: ProgramGrammar, state: State, trie: TokenTrie) -> list[int]:
    """Token ids that keep the output a valid program prefix from `state`."""
    free, walked = _allowed_parts(grammar, state, trie)
    return (list(trie.free) if free else []) + walked


def _allowed_parts(
    grammar: ProgramGrammar, state: State, trie: TokenTrie
) -> tuple[bool, list[int]]:
    """(whether every plain-text token is allowed, the other allowed tokens): in a normalize
    target any plain text continues it, and only tokens holding a quote need the walk."""
    allowed: list[int] = []
    chars = grammar.next_chars(state)
    free = chars is None
    if free:
        chars = '"'
    children = trie.root.children
    stack = [(children[c], grammar._step(state, c)) for c in chars if c in children]  # type: ignore[union-attr]
    while stack:
        node, after = stack.pop()
        if after is None:
            continue
        allowed.extend(node.tokens)
        next_chars = grammar.next_chars(after)
        if next_chars is None:
            stack.extend((child, grammar._step(after, c)) for c, child in node.children.items())
        else:
            stack.extend(
                (node.children[c], grammar._step(after, c))
                for c in next_chars
                if c in node.children
            )
    return free, allowed


class Steering:
    """What the grammar lets greedy decoding write, for any number of rows and batches: checks
    a token from a state (`after`), and picks the best allowed token where the model's own
    choice was refused (`best_allowed`; ties go to the lowest token id, as argmax over a
    masked row does). EOS is allowed only after a complete program, and is the only choice
    once nothing else is. Allowed lists are cached per grammar and state as index tensors."""

    def __init__(self, trie: TokenTrie, eos_id: int, cache_entries: int = 4096) -> None:
        self.trie = trie
        self.eos_id = eos_id
        self.cache_entries = cache_entries
        self.allowed: dict[tuple[ProgramGrammar, State], Any] = {}
        self.free: dict[Any, Any] = {}
        self.corrected = 0  # steps where the model's own choice was refused

    def after(self, grammar: ProgramGrammar, state: State | None, token: int) -> State | None:
        """The state after `token` (the same state for an allowed EOS), None if refused."""
        if state is None:  # nothing valid is left to write: only EOS
            return None
        if token == self.eos_id:
            return state if grammar.accepts(state) else None
        return advance(grammar, state, token, self.trie)

    def best_allowed(self, grammar: ProgramGrammar, state: State | None, row_logits: Any) -> int:
        import torch

        self.corrected += 1
        if state is None:
            return self.eos_id
        key = (grammar, state)
        allowed = self.allowed.get(key)
        if allowed is None:
            free, ids = _allowed_parts(grammar, state, self.trie)
            if grammar.accepts(state):
                ids.append(self.eos_id)
            if not free and not ids:
                ids = [self.eos_id]
            listed = torch.tensor(sorted(set(ids)), dtype=torch.long, device=row_logits.device)
            allowed = (self._free(row_logits.device) if free else None, listed)
            if len(self.allowed) >= self.cache_entries:
                self.allowed.clear()
            self.allowed[key] = allowed
        best: tuple[float, int] | None = None
        for candidates in allowed:
            if candidates is None or not len(candidates):
                continue
            values = row_logits[candidates]
            at = int(values.argmax())
            value, token = float(values[at]), int(candidates[at])
            if best is None or value > best[0] or (value == best[0] and token < best[1]):
                best = (value, token)
        return best[1]  # type: ignore[index]

    def _free(self, device: Any) -> Any:
        """The plain-text tokens as one index tensor, made once per device."""
        import torch

        if device not in self.free:
            self.free[device] = torch.tensor(
                sorted(self.trie.free), dtype=torch.long, device=device
            )
        return self.free[device]


class GreedyRows:
    """Greedy decoding of one batch under per-row grammars, one step at a time: `choose`
    returns, for each row still writing, the token that greedy decoding with every disallowed
    token masked would pick (the row's best token when the grammar allows it, checked by
    feeding it to the automaton, else the best allowed one), and advances the rows' states."""

    def __init__(self, grammars: Sequence[ProgramGrammar], steering: Steering) -> None:
        self.grammars = list(grammars)
        self.steering = steering
        self.states: list[State | None] = [g.start() for g in self.grammars]

    def choose(self, logits: Any, rows: Sequence[int]) -> list[int]:
        """`logits[i]` are the next-token logits of row `rows[i]`."""
        steer = self.steering
        best = logits.argmax(-1).tolist()
        for i, (row, token) in enumerate(zip(rows, best)):
            grammar, state = self.grammars[row], self.states[row]
            after = steer.after(grammar, state, token)
            if after is None:
                token = best[i] = steer.best_allowed(grammar, state, logits[i])
                after = steer.after(grammar, state, token)
            self.states[row] = after
        return best
