"""Constrained decoding: a model can only write programs of the ProX grammar.

`ProgramGrammar` is a character-level automaton for one model call:
- doc level: `keep_doc()` or `drop_doc()`;
- chunk level: lines of `keep_doc()`, `remove_lines(line_start=S, line_end=E)` with
  first_line <= S <= E <= last_line of the chunk, or `normalize(source_str="..",
  target_str="..")` whose source occurs in the chunk (strings hold no quote, backslash or
  newline, so the strict and reference parsers read them alike);
and the end of generation only after a complete line. An optional leading space is allowed,
as chat models answer after one.

`allowed_tokens` walks a trie of the vocabulary's token strings from the automaton's state,
so only tokens that keep the text a valid program prefix survive; in free-text states
(a normalize target) a precomputed set of plain-text tokens is used instead of the walk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

HEADS = ("keep_doc()", "remove_lines(line_start=", 'normalize(source_str="')
DOC_ANSWERS = ("keep_doc()", "drop_doc()")
FORBIDDEN_IN_STRINGS = frozenset('"\\\n')
DIGITS = "0123456789"  # line numbers: ASCII digits only (str.isdigit also takes "²")

# A state is a small tuple: (kind, text so far[, extra]). None is a dead state.
State = tuple


@dataclass(frozen=True)
class ProgramGrammar:
    stage: str  # "doc" or "chunk"
    first_line: int = 0
    last_line: int = 0
    text: str = ""  # the chunk's own text, where normalize sources must occur

    def start(self) -> State:
        return ("start", "")

    def accepts(self, state: State) -> bool:
        """Whether generation may end here (a complete program)."""
        return state[0] == "end"

    def feed(self, state: State | None, chars: str) -> State | None:
        for char in chars:
            if state is None:
                return None
            state = self._step(state, char)
        return state

    def _literal(self, options: Sequence[str], done: str, state: State, char: str) -> State | None:
        prefix = state[1] + char
        for option in options:
            if option == prefix:
                return (done, option)
            if option.startswith(prefix):
                return (state[0], prefix)
        return None

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
        kind = state[0]
        if kind == "start":
            if char == " " and state[1] == "":
                return ("start", " ")
            return self._step(("head", ""), char)
        if kind == "head":
            heads = DOC_ANSWERS if self.stage == "doc" else HEADS
            state = self._literal(heads, "after_head", state, char)
            if state is not None and state[0] == "after_head" and state[1] in DOC_ANSWERS:
                return ("end", "")  # keep_doc() / drop_doc(): a complete line
            return state
        if kind == "after_head":
            if state[1].startswith("remove_lines"):
                return self._step(("start_num", ""), char)
            return self._step(("source", ""), char)
        if kind == "start_num":
            digits = state[1] + char
            if char in DIGITS and self._number_ok(digits, self.first_line):
                return ("start_num", digits)
            if char == "," and state[1] and int(state[1]) >= self.first_line:
                return ("mid", ",", int(state[1]))
            return None
        if kind == "mid":
            prefix = state[1] + char
            if ", line_end=".startswith(prefix):
                return (
                    ("mid", prefix, state[2])
                    if prefix != ", line_end="
                    else ("end_num", "", state[2])
                )
            return None
        if kind == "end_num":
            digits = state[1] + char
            if char in DIGITS and self._number_ok(digits, state[2]):
                return ("end_num", digits, state[2])
            if char == ")" and state[1] and int(state[1]) >= state[2]:
                return ("end", "")
            return None
        if kind == "source":
            if char == '"':
                return ("between", '"') if state[1] else None
            if char in FORBIDDEN_IN_STRINGS:
                return None
            source = state[1] + char
            return ("source", source) if source in self.text else None
        if kind == "between":
            prefix = state[1] + char
            if '", target_str="'.startswith(prefix):
                return ("between", prefix) if prefix != '", target_str="' else ("target", "")
            return None
        if kind == "target":
            if char == '"':
                return ("close", '"')
            return None if char in FORBIDDEN_IN_STRINGS else ("target", state[1] + char)
        if kind == "close":
            return ("end", "") if char == ")" else None
        if kind == "end":
            if self.stage == "chunk" and char == "\n":
                return ("head", "")
            return None
        return None


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


def allowed_tokens(grammar: ProgramGrammar, state: State, trie: TokenTrie) -> list[int]:
    """Token ids that keep the output a valid program prefix from `state`."""
    if state[0] == "target":
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
