"""Constrained decoding: the grammar accepts exactly valid programs, and a model under it never
writes a malformed one, where the same model and prompts unconstrained do."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxkit.program import (
    KeepDoc,
    Normalize,
    Program,
    RemoveLines,
    RemoveStr,
    execute_chunk,
    parse,
)
from proxkit.programmers.grammar import ProgramGrammar, complete_lines

from conftest import example_records

TEXT = "Home | Docs\nThe quick brown fox.\nCopyright 2024"
CHUNK = ProgramGrammar("chunk", 10, 12, TEXT)


def accepts(grammar: ProgramGrammar, text: str) -> bool:
    state = grammar.feed(grammar.start(), text)
    return state is not None and grammar.accepts(state)


def test_doc_grammar():
    doc = ProgramGrammar("doc")
    assert accepts(doc, "keep_doc()") and accepts(doc, " drop_doc()")
    assert accepts(doc, " keep_doc() ")  # the Llama-2 chat format's answer ends with " </s>"
    assert not any(
        accepts(doc, t)
        for t in (
            "keep_doc",
            "keep_doc()\n",
            "remove_lines(line_start=0, line_end=0)",
            "  keep_doc()",
        )
    )


def test_chunk_grammar_enforces_ranges_and_sources():
    assert accepts(CHUNK, "keep_doc()") and accepts(CHUNK, " keep_doc()")
    assert accepts(
        CHUNK, "remove_lines(line_start=10, line_end=10)\nremove_lines(line_start=12, line_end=12)"
    )
    assert accepts(CHUNK, 'normalize(source_str="Copyright 2024", target_str="")')
    assert accepts(
        CHUNK, 'normalize(source_str="|", target_str="-")\nremove_lines(line_start=11, line_end=12)'
    )
    for bad in (
        "remove_lines(line_start=9, line_end=10)",  # before the chunk
        "remove_lines(line_start=11, line_end=13)",  # past the chunk
        "remove_lines(line_start=12, line_end=11)",  # reversed
        "remove_lines(line_start=010, line_end=11)",  # leading zero
        'normalize(source_str="not in the text", target_str="")',
        'normalize(source_str="", target_str="x")',
        "drop_doc()",  # not a chunk-level operation
    ):
        assert not accepts(CHUNK, bad), bad


def test_the_grammar_ends_programs_where_a_trained_model_would():
    """Nothing follows keep_doc(), ranges come in order without overlap, and a normalize
    source is written once: a confused model cannot repeat itself until the token limit."""
    for repetitive in (
        "keep_doc()\nkeep_doc()",
        "keep_doc() \nkeep_doc()",
        "keep_doc()\n",
        "remove_lines(line_start=10, line_end=12)\nkeep_doc()",
        "remove_lines(line_start=10, line_end=11)\nremove_lines(line_start=11, line_end=12)",
        "remove_lines(line_start=11, line_end=11)\nremove_lines(line_start=10, line_end=10)",
        'normalize(source_str="Docs", target_str="")\nnormalize(source_str="Docs", target_str="x")',
    ):
        assert not accepts(CHUNK, repetitive), repetitive
    # Once the last line is removed, no range can follow, and the program can only end
    # or normalize.
    state = CHUNK.feed(CHUNK.start(), "remove_lines(line_start=12, line_end=12)\n")
    assert CHUNK.feed(state, "r") is None and CHUNK.feed(state, "n") is not None


def test_cuts_are_anchored_to_one_line_and_unique_there():
    assert accepts(CHUNK, 'remove_str(line=10, del_str=" | Docs")')
    assert accepts(
        CHUNK,
        'remove_str(line=11, del_str="quick ")\nremove_str(line=11, del_str=" fox")\n'
        "remove_lines(line_start=12, line_end=12)",
    )
    for bad in (
        'remove_str(line=11, del_str="Home")',  # not in that line
        'remove_str(line=13, del_str="Home")',  # past the chunk
        'remove_str(line=10, del_str="o")',  # twice in the line: the executor would refuse
        'remove_str(line=10, del_str="")',
        'remove_str(line=11, del_str="fox")\nremove_str(line=11, del_str="fox")',  # again
        'remove_lines(line_start=11, line_end=11)\nremove_str(line=10, del_str="Home")',
    ):
        assert not accepts(CHUNK, bad), bad


def test_deletion_only_normalizes_a_source_into_part_of_itself():
    deleting = ProgramGrammar("chunk", 10, 12, TEXT, deletion_only=True)
    assert accepts(deleting, 'normalize(source_str="Copyright 2024", target_str="")')
    assert accepts(deleting, 'normalize(source_str="Copyright 2024", target_str="Copy 24")')
    assert accepts(deleting, 'remove_str(line=12, del_str=" 2024")')
    for adds in ("-", "yC", "2024 Copyright", "Copyright 20244"):
        program = f'normalize(source_str="Copyright 2024", target_str="{adds}")'
        assert not accepts(deleting, program), program
    assert accepts(CHUNK, 'normalize(source_str="|", target_str="-")')


def test_a_cut_writes_the_quotes_and_backslashes_of_its_line_escaped():
    quoted = ProgramGrammar("chunk", 0, 0, 'He said "hi" \\o/ twice')
    assert accepts(quoted, 'remove_str(line=0, del_str="said \\"hi\\" ")')
    assert accepts(quoted, 'remove_str(line=0, del_str=" \\\\o/")')
    assert not accepts(quoted, 'remove_str(line=0, del_str="said "hi" ")')
    assert not accepts(quoted, 'remove_str(line=0, del_str="\\n")')
    # What the grammar let through reads back as the line's own text.
    assert parse('remove_str(line=0, del_str="said \\"hi\\" ")').operations == (
        RemoveStr(0, 'said "hi" '),
    )


substrings = st.integers(0, len(TEXT) - 1).flatmap(
    lambda i: st.integers(i + 1, len(TEXT)).map(lambda j: TEXT[i:j])
)
normalizations = st.builds(
    Normalize,
    substrings.filter(lambda s: '"' not in s and "\n" not in s),
    # constrained strings hold nothing that serialises with a backslash escape
    st.text(
        st.characters(exclude_characters='"\\\n\r\x00', exclude_categories=("Cs",)), max_size=8
    ),
)


@st.composite
def cuts(draw, lines: list[int]) -> list[RemoveStr]:
    """Distinct cuts on these document lines (10-12 in TEXT), each string once in its line."""
    found = []
    for line in lines:
        text = TEXT.split("\n")[line - 10]
        start = draw(st.integers(0, len(text) - 1))
        piece = text[start : draw(st.integers(start + 1, len(text)))]
        if text.count(piece) == 1 and text.find(piece, text.find(piece) + 1) < 0:
            found.append(RemoveStr(line, piece))
    return found


@st.composite
def valid_programs(draw) -> Program:
    """keep_doc() alone, or ranges in document order without overlap, cuts on the lines no
    range covers in order with them, and normalizations of distinct sources, interleaved."""
    if draw(st.booleans()) and draw(st.booleans()):
        return Program((KeepDoc(),))
    bounds = sorted(draw(st.lists(st.integers(10, 12), max_size=6, unique=True)))
    ranges = [RemoveLines(bounds[i], bounds[i + 1]) for i in range(0, len(bounds) - 1, 2)]
    ranges = [r for i, r in enumerate(ranges) if i == 0 or r.start > ranges[i - 1].end]
    free = [n for n in range(10, 13) if not any(r.start <= n <= r.end for r in ranges)]
    anchored = draw(cuts(draw(st.lists(st.sampled_from(free), max_size=3)) if free else []))
    anchored = list({(c.line, c.text): c for c in anchored}.values())
    normalizes = draw(st.lists(normalizations, max_size=3, unique_by=lambda n: n.source))
    placed = ranges + anchored
    ops = draw(st.permutations(placed + normalizes)) if placed or normalizes else [KeepDoc()]
    order = iter(
        sorted(placed, key=lambda op: op.start if isinstance(op, RemoveLines) else op.line)
    )
    placing = (RemoveLines, RemoveStr)
    return Program(tuple(next(order) if isinstance(op, placing) else op for op in ops))


@given(valid_programs())
@settings(max_examples=300)
def test_every_valid_program_is_accepted_and_parses_cleanly(program):
    text = program.to_text()
    assert accepts(CHUNK, text)
    assert parse(text).errors == ()


@given(
    st.text(
        st.sampled_from(list('remove_lines(line_start=1, line_end=2)normalize"keep_doc\n0')),
        max_size=60,
    )
)
@settings(max_examples=500)
def test_whatever_the_grammar_accepts_parses_without_errors_in_range(text):
    if accepts(CHUNK, text):
        program = parse(text)
        assert program.errors == ()
        assert all(
            10 <= op.start <= op.end <= 12
            for op in program.operations
            if isinstance(op, RemoveLines)
        )


def test_complete_lines_drops_an_unfinished_last_line():
    assert complete_lines(CHUNK, "keep_doc()\nremove_lines(line_start=1") == "keep_doc()"
    assert complete_lines(CHUNK, "remove_lines(line_st") == ""


def malformed_rate(outputs, chunks) -> float:
    """Share of chunk programs with any parse or execution error on their own chunk."""
    bad = 0
    for output, chunk in zip(outputs, chunks):
        body = (
            "\n".join([""] * chunk.first_line)
            + "\n"
            + "\n".join(line.split("]", 1)[1] for line in chunk.text.split("\n"))
        )
        result = execute_chunk(body, output)
        bad += bool(result.errors) or not output.strip()
    return bad / len(outputs)


@pytest.mark.parametrize("steps", [0, 120])
def test_constrained_generation_never_writes_a_malformed_program(steps, tiny_model):
    from proxkit.chunking import Chunker, chunk_content
    from proxkit.programmers.hf import HFSettings, TransformersBackend
    from proxkit.prompts import chunk_prompts

    folder = tiny_model(steps)
    backend = TransformersBackend(str(folder), HFSettings())
    texts = [record["text"] for record in example_records()[:3]]
    chunks = [c for doc in Chunker(backend.tokenizer.backend, 300)(texts) for c in doc][:12]
    prompts = chunk_prompts(chunks, backend.tokenizer)
    grammars = [
        ProgramGrammar("chunk", c.first_line, c.last_line, chunk_content(c.text)) for c in chunks
    ]
    free = [o.text.strip(" ") for o in backend.generate(prompts, 24)]
    written = backend.generate(prompts, 24, grammars)
    constrained = [complete_lines(g, o.text).strip(" ") for g, o in zip(grammars, written)]
    assert malformed_rate(constrained, chunks) == 0.0
    if steps == 0:  # a random model, unconstrained, writes noise
        assert malformed_rate(free, chunks) > 0.5
    else:  # a trained doc-level model answers keep_doc(), valid here: the grammar changes nothing
        assert constrained == free and malformed_rate(free, chunks) == 0.0
    if steps == 0:  # the grammar replaced the random model's choices
        assert backend.stats()["steps_corrected_by_grammar"] > 0


def test_under_deletion_only_a_random_model_writes_only_deletions(tmp_path, llama2_dir):
    pytest.importorskip("torch")
    from proxkit.chunking import Chunker, chunk_content
    from proxkit.program.ops import is_deletion
    from proxkit.programmers.hf import HFSettings, TransformersBackend
    from proxkit.prompts import chunk_prompts
    from proxkit.testing import random_llama

    random_llama(tmp_path / "m", llama2_dir, seed=5)
    backend = TransformersBackend(str(tmp_path / "m"), HFSettings())
    texts = [record["text"] for record in example_records()[:3]]
    chunks = [c for doc in Chunker(backend.tokenizer.backend, 300)(texts) for c in doc][:12]
    grammars = [
        ProgramGrammar("chunk", c.first_line, c.last_line, chunk_content(c.text), True)
        for c in chunks
    ]
    written = backend.generate(chunk_prompts(chunks, backend.tokenizer), 32, grammars)
    programs = [parse(complete_lines(g, o.text).strip(" ")) for g, o in zip(grammars, written)]
    assert sum(bool(p.operations) for p in programs) >= 6  # complete lines were written
    assert all(p.errors == () and all(map(is_deletion, p.operations)) for p in programs)


def test_the_model_is_never_led_into_a_string_no_program_can_finish():
    """A normalize source or a cut is started only where it can still end as a new one: a
    chunk whose "¶" stands before line ends can be normalized once, not begun again (the
    model that began it would have nowhere to go but the end of its output)."""
    grammar = ProgramGrammar("chunk", 0, 2, "Intro ¶\nBody text ¶\n")
    once = grammar.feed(grammar.start(), 'normalize(source_str="¶", target_str="")\n')
    assert once is not None
    assert grammar.feed(once, 'normalize(source_str="¶') is None
    assert grammar.feed(once, 'normalize(source_str=" ¶", target_str="")') is not None
    cut = grammar.feed(grammar.start(), 'remove_str(line=1, del_str="Body text ¶")\n')
    assert cut is not None and grammar.feed(cut, 'remove_str(line=1, del_str="Body text ¶') is None
    assert grammar.feed(cut, "remove_str(line=2") is None  # an empty line takes no cut
    single = ProgramGrammar("chunk", 0, 0, "¶")
    written = 'remove_lines(line_start=0, line_end=0)\nnormalize(source_str="¶", target_str="x")'
    done = single.feed(single.start(), written)
    assert single.accepts(done) and single.feed(done, "\n") is None  # nothing left to write


@given(
    st.lists(st.text(st.sampled_from(list('ab¶ "\\')), max_size=6), min_size=1, max_size=4),
    st.randoms(use_true_random=False),
)
@settings(max_examples=200, deadline=None)
def test_every_prefix_the_grammar_allows_can_be_finished(lines, random):
    """A random walk through the characters the automaton allows never reaches a state from
    which no program ends (a dead end), with cuts and sources written over and over."""
    grammar = ProgramGrammar("chunk", 3, 3 + len(lines) - 1, "\n".join(lines))
    state = grammar.start()
    for _ in range(400):
        options = grammar.next_chars(state)
        if options is None:  # a normalize target: any character but the forbidden ones
            options = 'xa"'
        moves = [(c, grammar._step(state, c)) for c in options]
        moves = [(c, after) for c, after in moves if after is not None]
        assert moves or grammar.accepts(state), state
        if not moves or (grammar.accepts(state) and random.random() < 0.05):
            break
        _, state = random.choice(moves)
