"""The ProX grammar in the forms a model server takes, for `--backend openai --constrained`.

- `to_args` / `from_args`: the grammar as request arguments (`vllm_xargs`) for proxkit's own
  logits processor (`vllm_grammar.py`), which a `vllm serve` loads where proxkit is installed:
  the exact automaton of `grammar.ProgramGrammar`.
- `grammar_text(grammar, "lark" | "ebnf")`: the grammar as a context-free grammar for the
  server's structured-output engine, for servers without proxkit: Lark (vLLM's
  `structured_outputs.grammar`, read by both its engines, xgrammar and llguidance) or
  xgrammar's EBNF (SGLang's `ebnf`).

The context-free text keeps every rule of the automaton but one: line numbers inside the
chunk, line ranges in document order without overlap (each starts after the previous one
ended), normalize sources that are non-empty substrings of the chunk without quote, backslash
or newline, `keep_doc()` alone, an optional leading space and trailing spaces. That a source
is written at most once is not context-free; `grammar.ProgramGrammar` checks every output
after it comes back. The order of ranges costs O(lines) rules, not O(lines^2): the rules
`from_S` (a range starting at S or later) and `to_E` (ending at E or later) each have two
alternatives, the number itself or the rule for the next number.
"""

from __future__ import annotations

import json
import re
from typing import Any

from proxkit.programmers.grammar import DOC_ANSWERS, FORBIDDEN_IN_STRINGS, ProgramGrammar

ARGUMENT = "prox_grammar"
SYNTAXES = ("lark", "ebnf")
NORMALIZE = ('normalize(source_str="', '", target_str="', '")')
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
    lark = syntax == "lark"
    rules: list[tuple[str, list[str]]] = []
    terminals: list[str] = []
    if grammar.stage == "doc":
        body = " | ".join(_literal(answer) for answer in DOC_ANSWERS)
    else:
        body = f"{_literal('keep_doc()')} | line_{grammar.first_line}"
        sources = _segments(grammar.text)
        if sources:
            if lark:
                names = [f"SOURCE_{i}" for i in range(len(sources))]
                rules.append(("source", names))
                terminals += [
                    f"{name}: %regex {{{_json('substring_chars')}: {_json(text)}}}"
                    for name, text in zip(names, sources)
                ]
                terminals.append(f"TARGET: /{FREE_TEXT}+/")
            else:
                substrings = [
                    "Substring(" + ", ".join(_literal(c) for c in text) + ")" for text in sources
                ]
                rules.append(("source", substrings))
        target = "TARGET?" if lark else f"{FREE_TEXT}*"
        normalize = (
            f"{_literal(NORMALIZE[0])} source {_literal(NORMALIZE[1])} {target} "
            f"{_literal(NORMALIZE[2])}"
            if sources
            else None
        )
        rules += _line_rules(grammar.first_line, grammar.last_line, normalize)
    rules.insert(0, ("start" if lark else "root", [f'" "? ({body}) " "*']))
    define = ": " if lark else " ::= "
    lines = [name + define + " | ".join(alternatives) for name, alternatives in rules]
    return "\n".join(lines + terminals) + "\n"


def _line_rules(first: int, last: int, normalize: str | None) -> list[tuple[str, list[str]]]:
    """The rules of a chunk program's lines, from `line_{first}`: `line_F` is a line whose
    range may start at F or later, `after_F` what may follow it."""
    rules: list[tuple[str, list[str]]] = []
    for floor in range(first, last + 2):
        alternatives = []
        if floor <= last:
            alternatives.append(f"{_literal('remove_lines(line_start=')} from_{floor}")
        if normalize is not None:
            alternatives.append(f"{normalize} after_{floor}")
        if alternatives:
            rules.append((f"line_{floor}", alternatives))
            rules.append((f"after_{floor}", [f'("\\n" line_{floor})?']))
        else:  # nothing can follow the last line's range
            rules.append((f"after_{floor}", ['""']))
    for number in range(first, last + 1):
        later = number < last
        rules.append(
            (
                f"from_{number}",
                [f"{_literal(f'{number}, line_end=')} to_{number}"]
                + ([f"from_{number + 1}"] if later else []),
            )
        )
        rules.append(
            (
                f"to_{number}",
                [f"{_literal(f'{number})')} after_{number + 1}"]
                + ([f"to_{number + 1}"] if later else []),
            )
        )
    return rules


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
