"""Reference parsing mode: byte-for-byte the ProX reference, and each documented difference
from strict mode (numbered as in `proxkit/program/reference.py`)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxkit.program import (
    KeepDoc,
    Normalize,
    Outcome,
    Program,
    RemoveAllLines,
    RemoveLines,
    execute_chunk,
    execute_doc,
)


def reference_oracle(
    text: str, program: str, t1: float = 0.0, t2: float = 0.95, error_op: int = 2
) -> str:
    """The reference chunk executor, restated independently: a set of removed line numbers."""
    lines = text.split("\n")
    removed: set[int] = set()
    intervals: list[tuple[int, int]] = []
    errors = 0
    current = text
    for op in program.strip(" ").split("\n"):
        is_remove = op.startswith("remove_lines")
        if (is_remove and "all=True" not in op) or op.startswith("normalize"):
            if "(" not in op:
                errors += 1
                continue
            begin = op.index("(") + 1
            if ")" in op:
                stop = op.index(")")
            else:
                errors += 1
                stop = -1
            params = op[begin:stop].split(",")
            if is_remove:
                try:
                    start = int(params[0].split("=")[1])
                    end = int(params[1].split("=")[1])
                except (IndexError, ValueError):
                    errors += 1
                    continue
                intervals.append((start, end))
                removed.update(range(max(start, -1), min(end, len(lines) + 1) + 1))
            elif len(params) == 1:
                try:
                    source = params[0].split("=")[1].strip('"')
                except IndexError:
                    errors += 1
                    continue
                current = current.replace(source, "")
            elif len(params) == 2:
                try:
                    source = params[0].split("=")[1].strip('"')
                    target = params[1].split("=")[1].strip('"')
                except IndexError:
                    errors += 1
                    continue
                if source not in (" ", ""):
                    current = current.replace(source, target)
        elif is_remove:
            removed = set(range(len(lines)))
    new_lines = current.split("\n")
    kept = [line for i, line in enumerate(new_lines) if i not in removed]
    merged: list[list[int]] = []
    for start, end in sorted(intervals, key=lambda r: r[0]):
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for start, end in merged:
        if start >= len(new_lines) or end >= len(new_lines):
            errors += 1
    processed = "\n".join(kept)
    after, before = len(processed.split()), len(text.split())
    if before == 0:
        return ""  # the reference divides by zero here
    if after / before * 1.0 <= (1 - t2) and errors < error_op:
        return ""
    if after <= 10:
        return ""
    if after / before * 1.0 >= t1 and errors < error_op:
        return processed
    return text


PIECES = [
    "remove_lines",
    "normalize",
    "keep_doc()",
    "drop_doc()",
    "(",
    ")",
    "=",
    ",",
    '"',
    "'",
    " ",
    "\n",
    "line_start",
    "line_end",
    "source_str",
    "target_str",
    "all=True",
    "0",
    "1",
    "2",
    "7",
    "-",
    "+",
    "ab",
    "c d",
    "x",
]
doc_lines = st.lists(
    st.lists(
        st.sampled_from(["ab", "c", "d", "x", "=", ",", '"', " ", "word", "\t"]), max_size=8
    ).map("".join),
    max_size=12,
)
reference_texts = doc_lines.map("\n".join)
program_texts = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


@given(reference_texts, program_texts)
@settings(max_examples=600)
def test_reference_mode_matches_the_reference_algorithm(text, program):
    assert execute_chunk(text, program, mode="reference").text == reference_oracle(text, program)


@given(
    reference_texts,
    st.lists(
        st.sampled_from(
            [
                "remove_lines(line_start=0, line_end=1)",
                "remove_lines(line_start=2, line_end=9)",
                "remove_lines(line_start=20, line_end=30)",
                'normalize(source_str="ab", target_str="x")',
                'normalize(source_str="c d")',
                "remove_lines(all=True)",
                "keep_doc()",
            ]
        ),
        max_size=6,
    ).map("\n".join),
)
@settings(max_examples=300)
def test_reference_mode_matches_on_well_formed_programs(text, program):
    long_text = text + "\n" + " ".join(["filler"] * 30)
    assert execute_chunk(long_text, program, mode="reference").text == reference_oracle(
        long_text, program
    )


# Strings both parsers read alike: no characters the reference splits or strips on, no escapes.
plain_strings = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters=",=)\"\\'"),
    min_size=1,
    max_size=12,
)
agreeing_ops = st.one_of(
    st.just(KeepDoc()),
    st.just(RemoveAllLines()),
    st.tuples(st.integers(0, 30), st.integers(0, 30)).map(lambda r: RemoveLines(min(r), max(r))),
    st.builds(Normalize, plain_strings, plain_strings | st.just("")),
)
words_documents = st.lists(
    st.lists(st.sampled_from(["alpha", "beta", "gamma", "δέλτα", "a,b", "x=y"]), max_size=6).map(
        " ".join
    ),
    min_size=1,
    max_size=25,
).map("\n".join)


@given(words_documents, st.lists(agreeing_ops, max_size=8))
@settings(max_examples=500)
def test_strict_and_reference_agree_where_the_reference_parses_correctly(text, ops):
    program = Program(tuple(ops)).to_text()
    strict = execute_chunk(text, program, mode="strict")
    reference = execute_chunk(text, program, mode="reference")
    assert strict == reference


# --- the documented differences, one test each ------------------------------------------------

DOC = "\n".join(f"line {i} has a handful of words" for i in range(10))


def test_1_lines_that_are_not_calls_are_skipped_by_the_reference_but_errors_in_strict():
    program = "Sure, here is the program:\ndrop_doc()\n  remove_lines(0, 1)"
    assert execute_chunk(DOC, program, mode="reference").errors == ()
    assert len(execute_chunk(DOC, program, mode="strict").errors) == 2  # prose, drop_doc()
    assert execute_chunk(DOC, program, mode="strict").removed_lines == ((0, 1),)


def test_2_keyword_names_are_ignored_by_the_reference():
    program = "remove_lines(line_end=5, line_start=3)"
    assert execute_chunk(DOC, program, mode="reference").removed_lines == ()
    assert execute_chunk(DOC, program, mode="strict").removed_lines == ((3, 5),)


def test_3_missing_parenthesis_reads_the_line_minus_its_last_character():
    program = "remove_lines(line_start=1, line_end=22"
    reference = execute_chunk(DOC, program, mode="reference")
    assert (reference.removed_lines, len(reference.errors)) == (((1, 2),), 1)
    strict = execute_chunk(DOC, program, mode="strict")
    assert (strict.removed_lines, len(strict.errors)) == ((), 1)


def test_4_commas_parentheses_and_equals_in_normalize_strings():
    text = DOC + "\nsee (a, b) and x=y here"
    comma = 'normalize(source_str="(a, b)", target_str="")'
    assert execute_chunk(text, comma, mode="reference").normalizations == ()  # silently ignored
    assert execute_chunk(text, comma, mode="strict").normalizations == (("(a, b)", "", 1),)
    equals = 'normalize(source_str="x=y", target_str="xy")'
    assert execute_chunk(text, equals, mode="reference").normalizations == (("x", "xy", 1),)
    assert execute_chunk(text, equals, mode="strict").normalizations == (("x=y", "xy", 1),)


def test_5_single_quotes_and_escapes_are_literal_in_the_reference():
    text = DOC + "\n'quoted' and\u00a0nbsp"
    quoted = "normalize(source_str='quoted', target_str='q')"
    assert execute_chunk(text, quoted, mode="reference").normalizations == (("'quoted'", "'q'", 1),)
    assert execute_chunk(text, quoted, mode="strict").normalizations == (("quoted", "q", 1),)
    escaped = 'normalize(source_str="\\u00a0", target_str=" ")'
    assert execute_chunk(text, escaped, mode="reference").normalizations == (("\\u00a0", " ", 0),)
    assert execute_chunk(text, escaped, mode="strict").normalizations == (("\u00a0", " ", 1),)


def test_6_one_argument_space_source_deletes_every_space_in_the_reference():
    program = 'normalize(source_str=" ")'
    text = DOC + "\n" + DOC  # 20 lines: still over 10 words once spaces are gone
    assert execute_chunk(text, program, mode="reference").text == text.replace(" ", "")
    assert execute_chunk(text, program, mode="strict").text == text


def test_7_int_accepts_signs_and_spaces_and_negative_ranges_in_the_reference():
    program = "remove_lines(line_start=+1, line_end= 2)\nremove_lines(line_start=-3, line_end=0)"
    assert execute_chunk(DOC, program, mode="reference").removed_lines == ((0, 2),)
    strict = execute_chunk(DOC, program, mode="strict")
    assert strict.outcome is Outcome.PROGRAM_IGNORED and len(strict.errors) == 2


def test_8_adjacent_ranges_past_the_end_count_one_error_in_both_modes():
    program = "remove_lines(line_start=12, line_end=13)\nremove_lines(line_start=14, line_end=15)"
    for mode in ("strict", "reference"):
        assert len(execute_chunk(DOC, program, mode=mode).errors) == 1


def test_9_doc_level_reference_drops_on_any_drop_substring():
    program = "keep_doc()  # no need to drop"
    assert execute_doc(DOC, program, mode="reference").outcome is Outcome.DROPPED
    assert execute_doc(DOC, program, mode="strict").outcome is Outcome.KEPT


def test_10_whitespace_documents_are_dropped_as_empty_instead_of_crashing():
    assert execute_chunk("  \n ", "keep_doc()", mode="reference").outcome is Outcome.DROPPED_EMPTY
