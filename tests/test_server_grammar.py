"""The ProX grammar as servers' structured-output engines read it (`server_grammar.grammar_text`),
checked against the exact automaton by the engines themselves: xgrammar (vLLM's default,
SGLang's) on the Lark and EBNF texts, llguidance (vLLM's other engine) on the Lark text. Skipped
where they are not installed (they come with vLLM)."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxkit.program import is_subsequence
from proxkit.program.ops import unique_position
from proxkit.programmers.grammar import ProgramGrammar
from proxkit.programmers.server_grammar import from_args, grammar_text, to_args

xgrammar = pytest.importorskip("xgrammar")
llguidance = pytest.importorskip("llguidance")
pytest.importorskip("llguidance.hf")
transformers = pytest.importorskip("transformers")

NORMALIZE = re.compile(r'normalize\(source_str="([^"]*)", target_str="([^"]*)"\)')
CUT = re.compile(r'remove_str\(line=(\d+), del_str="((?:[^"\\]|\\.)*)"\)')


@pytest.fixture(scope="module")
def engines(llama2_dir):
    """Whether each engine takes a text under a grammar; llguidance reads real tokens."""
    import llguidance.hf

    tokenizer = llguidance.hf.from_tokenizer(transformers.AutoTokenizer.from_pretrained(llama2_dir))

    def xgrammar_lark(grammar: str, text: str) -> bool:
        return xgrammar.testing._is_grammar_accept_string(xgrammar.Grammar.from_lark(grammar), text)

    def xgrammar_ebnf(grammar: str, text: str) -> bool:
        return xgrammar.testing._is_grammar_accept_string(xgrammar.Grammar.from_ebnf(grammar), text)

    def llguidance_lark(grammar: str, text: str) -> bool:
        matcher = llguidance.LLMatcher(tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar))
        assert not matcher.is_error(), matcher.get_error()
        matcher.consume_tokens(tokenizer.tokenize_str(text))
        return not matcher.is_error() and matcher.is_accepting()

    return {"lark": [xgrammar_lark, llguidance_lark], "ebnf": [xgrammar_ebnf]}


def accepted(engines, grammar: ProgramGrammar, text: str) -> set[bool]:
    """What every engine says about `text`, on the text of each syntax."""
    return {
        accepts(grammar_text(grammar, syntax), text)
        for syntax, checks in engines.items()
        for accepts in checks
    }


def automaton(grammar: ProgramGrammar, text: str) -> bool:
    state = grammar.feed(grammar.start(), text)
    return state is not None and grammar.accepts(state)


line_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) | st.sampled_from('"\\: '),
    max_size=12,
)


@st.composite
def chunks_and_programs(draw):
    """A chunk and a program for it: half of them built to be valid, the rest from calls
    that are often out of range, out of order, or with strings not in the chunk."""
    lines = draw(st.lists(line_text, min_size=1, max_size=6))
    first = draw(st.integers(0, 30))
    grammar = ProgramGrammar(
        "chunk", first, first + len(lines) - 1, "\n".join(lines), draw(st.booleans())
    )
    lead, trail = draw(st.sampled_from(["", " "])), draw(st.sampled_from(["", " ", "  "]))
    calls = valid_calls(draw, grammar) if draw(st.booleans()) else random_calls(draw, grammar)
    return grammar, lead + "\n".join(calls) + trail


def piece_of(draw, text: str) -> str:
    """A non-empty substring of `text` (which must not be empty)."""
    start = draw(st.integers(0, len(text) - 1))
    return text[start : draw(st.integers(start + 1, len(text)))]


def escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def valid_calls(draw, grammar: ProgramGrammar) -> list[str]:
    calls, floor, used = [], grammar.first_line, set()
    pieces = [p for p in re.split(r'["\\\n]', grammar.text) if p]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["range", "cut", "normalize"]))
        if kind == "range" and floor <= grammar.last_line:
            start = draw(st.integers(floor, grammar.last_line))
            end = draw(st.integers(start, grammar.last_line))
            calls.append(f"remove_lines(line_start={start}, line_end={end})")
            floor = end + 1
        elif kind == "cut" and floor <= grammar.last_line:
            number = draw(st.integers(floor, grammar.last_line))
            line = grammar.lines[number - grammar.first_line]
            cut = (line if draw(st.booleans()) else piece_of(draw, line)) if line else ""
            if cut and unique_position(cut, line) is not None and (number, cut) not in used:
                used.add((number, cut))
                calls.append(f'remove_str(line={number}, del_str="{escaped(cut)}")')
                floor = number
        elif kind == "normalize" and pieces:
            source = piece_of(draw, draw(st.sampled_from(pieces)))
            if source not in used:
                used.add(source)
                if grammar.deletion_only:
                    kept = draw(st.lists(st.booleans(), min_size=len(source), max_size=len(source)))
                    target = "".join(c for c, k in zip(source, kept) if k)
                else:
                    target = draw(line_text.filter(lambda t: not set(t) & set('"\\')))
                calls.append(f'normalize(source_str="{source}", target_str="{target}")')
    return calls or ["keep_doc()"]


def random_calls(draw, grammar: ProgramGrammar) -> list[str]:
    text, first, last = grammar.text, grammar.first_line, grammar.last_line
    number = st.integers(max(0, first - 2), last + 2)
    calls = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["keep", "drop", "range", "cut", "normalize"]))
        if kind in ("keep", "drop"):
            calls.append(f"{kind}_doc()")
        elif kind == "range":
            start = draw(number)
            end = draw(st.one_of(number, st.integers(start, max(start, last + 1))))
            calls.append(f"remove_lines(line_start={start}, line_end={end})")
        else:
            piece = piece_of(draw, text) if text and draw(st.booleans()) else draw(line_text)
            if kind == "cut":
                piece = escaped(piece) if draw(st.booleans()) else piece
                calls.append(f'remove_str(line={draw(number)}, del_str="{piece}")')
            else:
                calls.append(f'normalize(source_str="{piece}", target_str="{draw(line_text)}")')
    return calls


def left_to_the_check(grammar: ProgramGrammar, program: str) -> bool:
    """Whether `program` breaks a rule the context-free text leaves to the check after
    generation (see `server_grammar`)."""
    normalizations = NORMALIZE.findall(program)
    sources = [source for source, _ in normalizations]
    cuts = [(int(n), cut) for n, cut in CUT.findall(program)]
    return (
        "" in sources
        or len(set(sources)) < len(sources)
        or len(set(cuts)) < len(cuts)
        or any(
            unique_position(cut, grammar.lines[n - grammar.first_line]) is None for n, cut in cuts
        )
        or (
            grammar.deletion_only
            and any(not is_subsequence(target, source) for source, target in normalizations)
        )
    )


@given(chunks_and_programs())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_engines_take_the_automatons_programs(engines, case):
    """Every program of the automaton is taken by every engine, but for cuts of a quote or
    backslash (left out of the text). The engines take no other, but for programs breaking
    a rule the text leaves to the check after generation."""
    grammar, program = case
    verdicts = accepted(engines, grammar, program)
    assert len(verdicts) == 1, (program, verdicts)  # the engines and syntaxes agree
    [taken] = verdicts
    if automaton(grammar, program):
        escapes = any("\\" in cut for _, cut in CUT.findall(program))
        assert taken or escapes, program
    elif taken:
        assert left_to_the_check(grammar, program), program


@pytest.mark.parametrize("answer", ["keep_doc()", "drop_doc()", " keep_doc() ", "keep_doc()\n"])
def test_the_doc_grammar(engines, answer):
    grammar = ProgramGrammar("doc")
    assert accepted(engines, grammar, answer) == {automaton(grammar, answer)}


def test_cuts_of_a_quote_or_backslash_are_left_out(engines):
    """The automaton takes a cut of its line's quote, written escaped; the text does not
    (substring engines cannot write a piece of a line with its escapes)."""
    grammar = ProgramGrammar("chunk", 4, 5, 'say "hi"\\ now\nplain')
    for program in ('remove_str(line=4, del_str="\\"hi\\"")', 'remove_str(line=4, del_str="\\\\")'):
        assert automaton(grammar, program)
        assert accepted(engines, grammar, program) == {False}
    for program in ('remove_str(line=4, del_str="hi")', 'remove_str(line=5, del_str="lain")'):
        assert automaton(grammar, program)
        assert accepted(engines, grammar, program) == {True}


def test_chunk_text_that_looks_like_an_ebnf_rule_stays_lark():
    """vLLM reads a grammar holding "::=" as EBNF: chunk text never shows it."""
    text = grammar_text(ProgramGrammar("chunk", 0, 1, "a ::= b\nx"), "lark")
    assert "::=" not in text
    assert xgrammar.testing._is_grammar_accept_string(
        xgrammar.Grammar.from_lark(text), 'normalize(source_str="a ::= b", target_str="")'
    )


@given(
    st.sampled_from(["doc", "chunk"]),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    line_text,
    st.booleans(),
)
def test_request_arguments_round_trip(stage, first, last, text, deletion_only):
    grammar = ProgramGrammar(stage, first, last, text, deletion_only)
    assert from_args(to_args(grammar)) == grammar
