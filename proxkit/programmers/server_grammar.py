"""The ProX grammar in the forms a model server takes, for `--backend openai --constrained`.

- `to_args` / `from_args`: the grammar as request arguments (`vllm_xargs`) for proxkit's own
  logits processor (`vllm_grammar.py`), which a `vllm serve` loads where proxkit is installed:
  the exact automaton of `grammar.ProgramGrammar`.
- `grammar_text(grammar, "lark" | "ebnf")`: the grammar as a context-free grammar for the
  server's structured-output engine, for servers without proxkit: Lark (vLLM's
  `structured_outputs.grammar`, read by both its engines, xgrammar and llguidance) or
  xgrammar's EBNF (SGLang's `ebnf`).

The context-free text keeps the automaton's rules on line numbers (inside the chunk; ranges
and cuts in document order, a range after the previous range, a cut at or after the line of
the previous cut), on strings (a normalize source is a substring of the chunk, a cut's string
a substring of its line, neither with a quote, backslash or newline), `keep_doc()` alone, an
optional leading space and trailing spaces. The order costs O(lines) rules, not O(lines^2):
`from_S` (a range starting at S or later), `to_E` (ending at E or later) and `cut_from_N` (a
cut on line N or later) each have two alternatives, the number itself or the rule for the next.
What it does not keep is checked on every output when it comes back (`grammar.ProgramGrammar`):
a normalize source or a cut written twice, an empty one, a cut's string that occurs more than
once in its line, and under `--deletion-only` a target that is not its source with characters
left out (none of these is context-free, or the substring engines take the empty string). A
cut holding a quote or backslash of its line (written escaped) is not in the text: on these
servers the model cannot write it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from proxkit.programmers.grammar import (
    CUT_MIDDLE,
    DOC_ANSWERS,
    FORBIDDEN_IN_STRINGS,
    HEADS,
    TARGET,
    ProgramGrammar,
)

ARGUMENT = "prox_grammar"
SYNTAXES = ("lark", "ebnf")
NORMALIZE = (HEADS[2], TARGET, '")')
CUT_END = '")'
FREE_TEXT = r'[^"\\\n]'  # a character of a normalize string
_SEGMENTS = re.compile("[^" + re.escape("".join(sorted(FORBIDDEN_IN_STRINGS))) + "]+")


def to_args(grammar: ProgramGrammar) -> dict[str, Any]:
    """The request arguments that put `grammar` on a request."""
    return {
        ARGUMENT: [
            grammar.stage,
            grammar.first_line,
            grammar.last_line,
            grammar.text,
            int(grammar.deletion_only),
        ]
    }


def from_args(extra_args: dict[str, Any] | None) -> ProgramGrammar | None:
    value = (extra_args or {}).get(ARGUMENT)
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 5 and value[0] in ("doc", "chunk")):
        raise ValueError(
            f"{ARGUMENT} must be [stage, first_line, last_line, text, deletion_only], got {value!r}"
        )
    stage, first, last, text, deletion_only = value
    return ProgramGrammar(stage, int(first), int(last), str(text), bool(deletion_only))


def grammar_text(grammar: ProgramGrammar, syntax: str) -> str:
    """`grammar` as a Lark or xgrammar-EBNF grammar (see the module docstring)."""
    if syntax not in SYNTAXES:
        raise ValueError(f"grammar syntax must be one of {SYNTAXES}, got {syntax!r}")
    out = _Writer(syntax == "lark")
    if grammar.stage == "doc":
        body = " | ".join(_literal(answer) for answer in DOC_ANSWERS)
    else:
        body = f"{_literal('keep_doc()')} | line_{grammar.first_line}"
        _chunk_rules(grammar, out)
    out.rules.insert(0, ("start" if out.lark else "root", [f'" "? ({body}) " "*']))
    return out.text()


class _Writer:
    """The rules and terminals of one grammar text, in Lark or xgrammar's EBNF."""

    def __init__(self, lark: bool) -> None:
        self.lark = lark
        self.rules: list[tuple[str, list[str]]] = []
        self.terminals: list[str] = []

    def rule(self, name: str, *alternatives: str) -> None:
        self.rules.append((name, list(alternatives)))

    def substrings(self, name: str, pieces: list[str]) -> bool:
        """The rule `name`: a substring of one of `pieces`; False (no rule) without pieces."""
        if not pieces:
            return False
        if self.lark:
            names = [f"{name.upper()}_{i}" for i in range(len(pieces))]
            self.terminals += [
                f"{terminal}: %regex {{{_json('substring_chars')}: {_json(piece)}}}"
                for terminal, piece in zip(names, pieces)
            ]
            self.rule(name, *names)
        else:
            self.rule(name, *("Substring(" + ", ".join(map(_literal, p)) + ")" for p in pieces))
        return True

    def text(self) -> str:
        define = ": " if self.lark else " ::= "
        lines = [name + define + " | ".join(alternatives) for name, alternatives in self.rules]
        return "\n".join(lines + self.terminals) + "\n"


def _chunk_rules(grammar: ProgramGrammar, out: _Writer) -> None:
    """The rules of a chunk program's lines, from `line_{first_line}`: `line_F` is a line
    whose range or cut may start at line F or later, `after_F` what may follow it."""
    first, last = grammar.first_line, grammar.last_line
    normalize = None
    if out.substrings("source", _segments(grammar.text)):
        if out.lark:
            out.terminals.append(f"TARGET: /{FREE_TEXT}+/")
        target = "TARGET?" if out.lark else f"{FREE_TEXT}*"
        head, middle, end = map(_literal, NORMALIZE)
        normalize = f"{head} source {middle} {target} {end}"
    cuttable = [
        out.substrings(f"cut_{number}", _segments(line))
        for number, line in enumerate(grammar.lines, start=first)
    ]
    # cut_from[N]: some line from N on can be cut
    cut_from = [any(cuttable[i:]) for i in range(len(cuttable))] + [False]
    for floor in range(first, last + 2):
        alternatives = []
        if floor <= last:
            alternatives.append(f"{_literal(HEADS[1])} from_{floor}")
            if cut_from[floor - first]:
                alternatives.append(f"{_literal(HEADS[3])} cut_from_{floor}")
        if normalize is not None:
            alternatives.append(f"{normalize} after_{floor}")
        if alternatives:
            out.rule(f"line_{floor}", *alternatives)
            out.rule(f"after_{floor}", f'("\\n" line_{floor})?')
        else:  # nothing can follow the last line's range
            out.rule(f"after_{floor}", '""')
    for number in range(first, last + 1):
        later = number < last
        out.rule(
            f"from_{number}",
            f"{_literal(f'{number}, line_end=')} to_{number}",
            *([f"from_{number + 1}"] if later else []),
        )
        out.rule(
            f"to_{number}",
            f"{_literal(f'{number})')} after_{number + 1}",
            *([f"to_{number + 1}"] if later else []),
        )
        if cut_from[number - first]:
            here = [
                f"{_literal(f'{number}{CUT_MIDDLE}')} cut_{number} {_literal(CUT_END)} "
                f"after_{number}"
            ]
            out.rule(
                f"cut_from_{number}",
                *(here if cuttable[number - first] else []),
                *([f"cut_from_{number + 1}"] if cut_from[number + 1 - first] else []),
            )


def _segments(text: str) -> list[str]:
    """The longest pieces of `text` without quote, backslash or newline, each once, leaving
    out pieces that occur inside a longer one (their substrings are already allowed)."""
    kept: list[str] = []
    for piece in sorted(set(_SEGMENTS.findall(text)), key=lambda p: (-len(p), p)):
        if not any(piece in longer for longer in kept):
            kept.append(piece)
    return kept


def _literal(text: str) -> str:
    """A quoted string, escaped the way both syntaxes read it."""
    return json.dumps(text, ensure_ascii=False)


def _json(text: str) -> str:
    """A JSON string with ":" escaped: vLLM takes a grammar holding "::=" for EBNF."""
    return json.dumps(text, ensure_ascii=False).replace(":", "\\u003a")
