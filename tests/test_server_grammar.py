"""The ProX grammar as servers' structured-output engines read it (`server_grammar.grammar_text`),
checked against the exact automaton by the engines themselves: xgrammar (vLLM's default,
SGLang's) on the Lark and EBNF texts, llguidance (vLLM's other engine) on the Lark text. Skipped
where they are not installed (they come with vLLM)."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxkit.programmers.grammar import ProgramGrammar
from proxkit.programmers.server_grammar import from_args, grammar_text, to_args

xgrammar = pytest.importorskip("xgrammar")
llguidance = pytest.importorskip("llguidance")
pytest.importorskip("llguidance.hf")
transformers = pytest.importorskip("transformers")

NORMALIZE = re.compile(r'normalize\(source_str="(.*?)", target_str=')


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
    that are often out of range, out of order, or with sources not in the chunk."""
    lines = draw(st.lists(line_text, min_size=1, max_size=6))
    first = draw(st.integers(0, 30))
    text = "\n".join(lines)
    last = first + len(lines) - 1
    grammar = ProgramGrammar("chunk", first, last, text)
    lead, trail = draw(st.sampled_from(["", " "])), draw(st.sampled_from(["", " ", "  "]))
    calls = valid_calls(draw, grammar) if draw(st.booleans()) else random_calls(draw, grammar)
    return grammar, lead + "\n".join(calls) + trail


def valid_calls(draw, grammar: ProgramGrammar) -> list[str]:
    calls, floor, used = [], grammar.first_line, set()
    pieces = [p for p in re.split(r'["\\\n]', grammar.text) if p]
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()) and floor <= grammar.last_line:
            start = draw(st.integers(floor, grammar.last_line))
            end = draw(st.integers(start, grammar.last_line))
            calls.append(f"remove_lines(line_start={start}, line_end={end})")
            floor = end + 1
        elif pieces:
            piece = draw(st.sampled_from(pieces))
            start = draw(st.integers(0, len(piece) - 1))
            source = piece[start : draw(st.integers(start + 1, len(piece)))]
            if source not in used:
                used.add(source)
                target = draw(line_text.filter(lambda t: not set(t) & set('"\\')))
                calls.append(f'normalize(source_str="{source}", target_str="{target}")')
    return calls or ["keep_doc()"]


def random_calls(draw, grammar: ProgramGrammar) -> list[str]:
    text, first, last = grammar.text, grammar.first_line, grammar.last_line
    number = st.integers(max(0, first - 2), last + 2)
    calls = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["keep", "drop", "range", "normalize"]))
        if kind in ("keep", "drop"):
            calls.append(f"{kind}_doc()")
        elif kind == "range":
            start = draw(number)
            end = draw(st.one_of(number, st.integers(start, max(start, last + 1))))
            calls.append(f"remove_lines(line_start={start}, line_end={end})")
        else:
            if draw(st.booleans()):
                start = draw(st.integers(0, len(text)))
                source = text[start : draw(st.integers(start, len(text)))]
            else:
                source = draw(line_text)
            calls.append(f'normalize(source_str="{source}", target_str="{draw(line_text)}")')
    return calls


@given(chunks_and_programs())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_engines_take_exactly_the_automatons_programs_but_for_two_rules(engines, case):
    """Every program of the automaton is taken by every engine. The engines take no other,
    except those breaking the two rules a context-free text leaves to the check after
    generation: a normalize source written twice, or an empty one."""
    grammar, program = case
    verdicts = accepted(engines, grammar, program)
    assert len(verdicts) == 1, (program, verdicts)  # the engines and syntaxes agree
    [taken] = verdicts
    if automaton(grammar, program):
        assert taken, program
    elif taken:
        sources = NORMALIZE.findall(program)
        assert "" in sources or len(set(sources)) < len(sources), program


@pytest.mark.parametrize("answer", ["keep_doc()", "drop_doc()", " keep_doc() ", "keep_doc()\n"])
def test_the_doc_grammar(engines, answer):
    grammar = ProgramGrammar("doc")
    assert accepted(engines, grammar, answer) == {automaton(grammar, answer)}


def test_chunk_text_that_looks_like_an_ebnf_rule_stays_lark():
    """vLLM reads a grammar holding "::=" as EBNF: chunk text never shows it."""
    text = grammar_text(ProgramGrammar("chunk", 0, 1, "a ::= b\nx"), "lark")
    assert "::=" not in text
    assert xgrammar.testing._is_grammar_accept_string(
        xgrammar.Grammar.from_lark(text), 'normalize(source_str="a ::= b", target_str="")'
    )


@given(st.sampled_from(["doc", "chunk"]), st.integers(0, 10**6), st.integers(0, 10**6), line_text)
def test_request_arguments_round_trip(stage, first, last, text):
    grammar = ProgramGrammar(stage, first, last, text)
    assert from_args(to_args(grammar)) == grammar
