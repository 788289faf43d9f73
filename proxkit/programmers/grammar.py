"""Constrained decoding: a model can only write programs of the ProX grammar.

`ProgramGrammar` is a character-level automaton for one model call:
- doc level: `keep_doc()` or `drop_doc()`;
- chunk level: `keep_doc()` alone, or lines of `remove_lines(line_start=S, line_end=E)` with
  first_line <= S <= E <= last_line of the chunk, and `normalize(source_str="..",
  target_str="..")` whose source occurs in the chunk (strings hold no quote, backslash or
  newline, so the strict and reference parsers read them alike);
and the end of generation only after a complete line. An optional leading space is allowed,
as chat models answer after one, and trailing spaces, as the Llama-2 chat format ends an answer
with " </s>".

The grammar also ends a program where a trained refining model ends it, so that an undertrained
or confused model cannot spend the whole token budget repeating itself: nothing follows
`keep_doc()`, line ranges come in document order without overlapping (each starts after the
previous one ended), and a normalize source is written at most once. Each of these removes only
programs that do the same as a shorter one.

`allowed_tokens` walks a trie of the vocabulary's token strings from the automaton's state,
so only tokens that keep the text a valid program prefix survive; in free-text states
(a normalize target) a precomputed set of plain-text tokens is used instead of the walk.
`follows` checks a finished generation against the same automaton, token by token, exactly as
constrained decoding would have steered it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

HEADS = ("keep_doc()", "remove_lines(line_start=", 'normalize(source_str="')
DOC_ANSWERS = ("keep_doc()", "drop_doc()")
FORBIDDEN_IN_STRINGS = frozenset('"\\\n')
DIGITS = "0123456789"  # line numbers: ASCII digits only (str.isdigit also takes "²")


class State(NamedTuple):
    """Where the automaton is: `kind` of token being written and its `text` so far, the range
    start being closed (`number`), and what the lines before constrain: the first line a new
    range may start at (`floor`, -1 once the program is `keep_doc()`), the normalize sources
    already used, and whether any line was written (`keep_doc()` must stand alone)."""

    kind: str
    text: str = ""
    number: int = 0
    floor: int = 0
    used: frozenset[str] = frozenset()
    written: bool = False


@dataclass(frozen=True)
class ProgramGrammar:
    stage: str  # "doc" or "chunk"
    first_line: int = 0
    last_line: int = 0
    text: str = ""  # the chunk's own text, where normalize sources must occur

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

    def _heads(self, state: State) -> tuple[str, ...]:
        if self.stage == "doc":
            return DOC_ANSWERS
        heads = [] if state.written else ["keep_doc()"]
        if state.floor <= self.last_line:
            heads.append(HEADS[1])
        heads.append(HEADS[2])
        return tuple(heads)

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
                    kind = "start_num" if head == HEADS[1] else "source"
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
                return state._replace(kind="between", text='"', used=state.used | {state.text})
            if char in FORBIDDEN_IN_STRINGS:
                return None
            source = state.text + char
            return state._replace(text=source) if source in self.text else None
        if kind == "between":
            prefix = state.text + char
            if prefix == '", target_str="':
                return state._replace(kind="target", text="")
            return state._replace(text=prefix) if '", target_str="'.startswith(prefix) else None
        if kind == "target":
            if char == '"':
                return state._replace(kind="close", text='"')
            return None if char in FORBIDDEN_IN_STRINGS else state._replace(text=state.text + char)
        if kind == "close":
            return state._replace(kind="end", text="", written=True) if char == ")" else None
        if kind in ("end", "final", "trail") and char == " ":
            return state._replace(kind="trail", text="")  # spaces before the end of the answer
        if kind == "end" and char == "\n":
            return state._replace(kind="head", text="")
        return None  # nothing but spaces may follow keep_doc() / drop_doc()


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
        state = grammar.feed(state, trie.text_of.get(token, "\x00"))
        if state is None:
            return False
    return True


def allowed_tokens(grammar: ProgramGrammar, state: State, trie: TokenTrie) -> list[int]:
    """Token ids that keep the output a valid program prefix from `state`."""
    if state.kind == "target":
        # Any plain text continues a target; tokens holding a quote are checked one by one.
        allowed = list(trie.free)
        stack = (
            [(trie.root.children['"'], grammar.feed(state, '"'))]
            if '"' in trie.root.children
            else []
        )
        _walk(grammar, stack, allowed)
        return allowed
    allowed: list[int] = []
    stack = [(child, grammar.feed(state, char)) for char, child in trie.root.children.items()]
    _walk(grammar, stack, allowed)
    return allowed


def _walk(grammar: ProgramGrammar, stack: list, allowed: list[int]) -> None:
    while stack:
        node, state = stack.pop()
        if state is None:
            continue
        allowed.extend(node.tokens)
        stack.extend((child, grammar._step(state, char)) for char, child in node.children.items())


class GrammarProcessor:
    """A transformers logits processor: each row of a batch may only continue its grammar."""

    def __init__(
        self, grammars: Sequence[ProgramGrammar], trie: TokenTrie, prompt_length: int, eos_id: int
    ) -> None:
        self.grammars = list(grammars)
        self.trie = trie
        self.states: list[State | None] = [g.start() for g in grammars]
        self.finished = [False] * len(grammars)
        self.seen = prompt_length
        self.eos_id = eos_id
        self.memo: dict[tuple[int, State], list[int]] = {}

    def __call__(self, input_ids, scores):
        import torch

        if input_ids.shape[1] > self.seen:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                if self.finished[row] or token == self.eos_id:
                    self.finished[row] = True
                    continue
                self.states[row] = self.grammars[row].feed(
                    self.states[row], self.trie.text_of.get(token, "\x00")
                )
            self.seen = input_ids.shape[1]
        mask = torch.full_like(scores, float("-inf"))
        for row, state in enumerate(self.states):
            grammar = self.grammars[row]
            if self.finished[row] or state is None:
                mask[row, self.eos_id] = 0
                continue
            key = (row, state)
            if key not in self.memo:
                allowed = allowed_tokens(grammar, state, self.trie)
                if grammar.accepts(state):
                    allowed.append(self.eos_id)
                self.memo[key] = allowed or [self.eos_id]
            mask[row, self.memo[key]] = 0
        return scores + mask
