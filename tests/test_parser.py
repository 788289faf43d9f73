"""The strict parser: exact readings, errors as values, and the canonical round trip."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxkit.program import (
    DropDoc,
    KeepDoc,
    Normalize,
    Program,
    RemoveAllLines,
    RemoveLines,
    parse,
)
from proxkit.program.ops import operation_to_text

from conftest import operations


def test_reads_every_operation_of_the_program_space():
    program = parse(
        "keep_doc()\n"
        "drop_doc()\n"
        "remove_lines(line_start=3, line_end=7)\n"
        "remove_lines(all=True)\n"
        'normalize(source_str="&nbsp;", target_str=" ")\n'
        'normalize(source_str="Click here")\n'
    )
    assert program.errors == ()
    assert program.operations == (
        KeepDoc(),
        DropDoc(),
        RemoveLines(3, 7),
        RemoveAllLines(),
        Normalize("&nbsp;", " "),
        Normalize("Click here", ""),
    )


def test_positional_and_keyword_arguments_bind_like_python():
    assert parse("remove_lines(3, 7)").operations == (RemoveLines(3, 7),)
    assert parse("remove_lines(line_end=7, line_start=3)").operations == (RemoveLines(3, 7),)
    assert parse("remove_lines(3, line_end=7)").operations == (RemoveLines(3, 7),)
    assert parse("normalize('a', 'b')").operations == (Normalize("a", "b"),)


def test_strings_the_reference_cannot_read_are_read_exactly():
    text = 'normalize(source_str="a, b=c) \\"q\\" \\u00a0 é", target_str=\'x\\ty\')'
    assert parse(text).operations == (Normalize('a, b=c) "q" \u00a0 é', "x\ty"),)


def test_several_calls_on_a_line_blank_lines_and_comments():
    program = parse("keep_doc(); drop_doc()\n\n   # a comment\nremove_lines(1, 2)  # why\n")
    assert program.operations == (KeepDoc(), DropDoc(), RemoveLines(1, 2))
    assert program.errors == ()


def test_errors_name_the_line_and_the_reason():
    program = parse(
        "remove_lines(line_start=5, line_end=2)\n"
        "remove_lines(line_start=-1, line_end=2)\n"
        "frobnicate()\n"
        "remove_lines(line_start=1\n"
        'remove_lines(line_start="1", line_end=2)\n'
        "normalize(target_str='x')\n"
        "remove_lines(all=False)\n"
        "keep_doc(1)\n"
        "os.system('rm -rf /')\n"
        "x = 1\n"
        "Sure! Here is the program:\n"
        "normalize('a', 'b', 'c')\n"
        "remove_lines(line_start=1, line_end=2, extra=3)\n"
        'normalize(source_str=f"{x}")\n'
        "keep_doc()\n"
    )
    assert program.operations == (KeepDoc(),)
    reasons = {error.line: error.reason for error in program.errors}
    assert sorted(reasons) == list(range(1, 15))
    assert reasons[1] == "reversed range: line_start 5 > line_end 2"
    assert reasons[2] == "line_start must not be negative, got -1"
    assert reasons[3] == "unknown function 'frobnicate'"
    assert reasons[4].startswith("not valid syntax")
    assert reasons[5] == "line_start must be an integer, got str"
    assert reasons[6] == "normalize() needs source_str"
    assert reasons[7] == "remove_lines(all=...) must be all=True"
    assert reasons[8] == "keep_doc() takes no arguments"
    assert reasons[9] == "the called object is not a plain function name"
    assert reasons[10] == "not a function call"
    assert reasons[12] == "normalize() takes at most 2 arguments"
    assert reasons[13] == "remove_lines() got an unexpected argument 'extra'"
    assert reasons[14].startswith("argument is not a string or integer literal")
    assert program.errors[0].text == "remove_lines(line_start=5, line_end=2)"


def test_booleans_are_not_line_numbers_and_newlines_cannot_be_normalized():
    assert (
        parse("remove_lines(True, 2)").errors[0].reason == "line_start must be an integer, got bool"
    )
    assert parse('normalize("a\\nb", "")').errors[0].reason == (
        "normalize() strings must not contain a newline"
    )


def test_pathological_input_is_an_error_not_a_crash():
    assert parse("(" * 500).errors
    assert parse("keep_doc(\x00)").errors
    assert parse("").operations == ()


# --- properties -------------------------------------------------------------------------------


@given(st.lists(operations, max_size=12))
@settings(max_examples=400)
def test_parse_of_serialise_is_identity(ops):
    program = Program(tuple(ops))
    assert parse(program.to_text()) == program


@given(st.text(max_size=300))
@settings(max_examples=400)
def test_any_text_parses_without_raising(text):
    program = parse(text)
    for op in program.operations:
        assert parse(operation_to_text(op)).operations == (op,)


@given(
    st.lists(
        st.sampled_from(
            [
                "keep_doc",
                "remove_lines",
                "normalize",
                "(",
                ")",
                "=",
                ",",
                '"',
                "'",
                "1",
                "-",
                "all",
                "True",
                " ",
                "\\",
                "x",
                "line_start",
                "source_str",
            ]
        ),
        max_size=40,
    )
)
@settings(max_examples=400)
def test_program_like_noise_parses_without_raising(pieces):
    parse("".join(pieces))
