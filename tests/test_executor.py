"""The executor: exact results for each outcome, thresholds, and properties on random programs."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxkit.program import Outcome, Thresholds, execute_chunk, execute_doc
from proxkit.program.ops import Program

from conftest import operations

DOC = "\n".join(f"line {i} holds five words" for i in range(10))  # 50 words


def test_doc_level_keep_and_drop():
    assert execute_doc(DOC, "keep_doc()").outcome is Outcome.KEPT
    assert execute_doc(DOC, "keep_doc()").text == DOC
    dropped = execute_doc(DOC, "drop_doc()")
    assert (dropped.outcome, dropped.text, dropped.dropped) == (Outcome.DROPPED, "", True)


def test_doc_level_unreadable_program_keeps_the_document_and_reports():
    result = execute_doc(DOC, "I would keep this one")
    assert result.outcome is Outcome.KEPT
    assert result.errors[0].reason.startswith("not valid syntax")
    assert execute_doc(DOC, "remove_lines(1, 2)").errors[0].reason == "not a doc-level operation"


def test_chunk_level_removes_lines_and_normalizes_in_order():
    program = (
        "remove_lines(line_start=0, line_end=1)\n"
        "remove_lines(line_start=8, line_end=9)\n"
        'normalize(source_str="holds", target_str="has")\n'
        'normalize(source_str="has five", target_str="has 5")\n'
    )
    result = execute_chunk(DOC, program)
    assert result.outcome is Outcome.REFINED
    assert result.text == "\n".join(f"line {i} has 5 words" for i in range(2, 8))
    assert result.removed_lines == ((0, 1), (8, 9))
    assert result.normalizations == (("holds", "has", 10), ("has five", "has 5", 10))
    assert (result.words_before, result.words_after) == (50, 30)


def test_adjacent_ranges_merge_and_remove_all():
    assert execute_chunk(DOC, "remove_lines(0, 1)\nremove_lines(2, 3)").removed_lines == ((0, 3),)
    result = execute_chunk(DOC, "remove_lines(all=True)")
    assert (result.outcome, result.text, result.removed_lines) == (
        Outcome.DROPPED_MOSTLY_REMOVED,
        "",
        ((0, 9),),
    )


def test_keep_doc_leaves_the_text_unchanged():
    result = execute_chunk(DOC, "keep_doc()")
    assert (result.outcome, result.text) == (Outcome.UNCHANGED, DOC)


def test_range_past_the_end_is_clipped_and_counted():
    result = execute_chunk(DOC, "remove_lines(line_start=8, line_end=20)")
    assert result.removed_lines == ((8, 9),)
    assert [e.reason for e in result.errors] == ["range ends past the last line 9 (clipped)"]
    assert result.outcome is Outcome.REFINED  # one error is under the limit of 2


def test_two_errors_ignore_the_program_and_keep_the_original():
    result = execute_chunk(DOC, "remove_lines(0, 3)\nbogus()\nremove_lines(50, 60)")
    assert len(result.errors) == 2
    assert (result.outcome, result.text) == (Outcome.PROGRAM_IGNORED, DOC)


def test_removing_95_percent_drops_the_document():
    result = execute_chunk(DOC + "\n" + "word " * 1000, "remove_lines(line_start=10, line_end=10)")
    assert result.outcome is Outcome.DROPPED_MOSTLY_REMOVED


def test_ten_words_or_fewer_are_dropped_even_when_the_program_is_ignored():
    result = execute_chunk("one two three four five six seven", "keep_doc()")
    assert result.outcome is Outcome.DROPPED_TOO_SHORT
    short = "\n".join(["a b c d e f g h i j k"] * 2)
    ignored = execute_chunk(short, "remove_lines(1, 1)\nbad()\nworse()")
    assert (len(ignored.errors), ignored.words_after) == (2, 11)
    assert ignored.outcome is Outcome.PROGRAM_IGNORED
    tiny = execute_chunk("a b c d e f g h i j k\nl m", "remove_lines(0, 0)\nbad()\nworse()")
    assert tiny.outcome is Outcome.DROPPED_TOO_SHORT  # errors do not save a 2-word result


def test_thresholds_are_configurable():
    program = "remove_lines(line_start=0, line_end=6)"  # keeps 3 of 10 lines: ratio 0.3
    assert execute_chunk(DOC, program).outcome is Outcome.REFINED
    strict = Thresholds(max_removed_ratio=0.6)  # drop when ratio <= 0.4
    assert execute_chunk(DOC, program, thresholds=strict).outcome is Outcome.DROPPED_MOSTLY_REMOVED
    floor = Thresholds(min_kept_ratio=0.5)
    assert execute_chunk(DOC, program, thresholds=floor).outcome is Outcome.PROGRAM_IGNORED
    assert execute_chunk(DOC, "bad()", thresholds=Thresholds(error_limit=1)).outcome is (
        Outcome.PROGRAM_IGNORED
    )
    assert execute_chunk(DOC, program, thresholds=Thresholds(short_doc_words=20)).outcome is (
        Outcome.DROPPED_TOO_SHORT
    )


def test_empty_and_whitespace_documents_do_not_crash():
    for text in ("", "   ", "\n\n\t\n"):
        for mode in ("strict", "reference"):
            result = execute_chunk(text, "remove_lines(0, 0)", mode=mode)
            assert result.outcome is Outcome.DROPPED_EMPTY
            assert result.text == ""


def test_empty_and_space_sources_are_ignored():
    result = execute_chunk(DOC, 'normalize(source_str=" ", target_str="")\nnormalize("", "x")')
    assert (result.outcome, result.text, result.normalizations) == (Outcome.UNCHANGED, DOC, ())


def test_metadata_is_json_ready():
    meta = execute_chunk(DOC, "remove_lines(0, 1)\nbogus()").to_metadata()
    assert meta["outcome"] == "refined"
    assert meta["removed_lines"] == [[0, 1]]
    assert meta["errors"] == [{"line": 2, "text": "bogus()", "reason": "unknown function 'bogus'"}]


# --- properties -------------------------------------------------------------------------------

documents = st.lists(
    st.text(st.characters(exclude_characters="\n"), max_size=40), min_size=0, max_size=25
).map("\n".join)


@given(documents, st.lists(operations, max_size=8), st.sampled_from(["strict", "reference"]))
@settings(max_examples=300)
def test_random_programs_never_raise_and_keep_lines_in_order(text, ops, mode):
    program = Program(tuple(ops)).to_text()
    result = execute_chunk(text, program, mode=mode)
    if result.dropped:
        assert result.text == ""
    elif result.outcome is Outcome.PROGRAM_IGNORED:
        assert result.text == text
    if not any(type(op).__name__ == "Normalize" for op in ops) and not result.dropped:
        original = text.split("\n")
        kept = result.text.split("\n")
        iterator = iter(original)
        assert all(line in iterator for line in kept)  # a subsequence: only removals


@given(documents, st.text(max_size=200))
@settings(max_examples=300)
def test_arbitrary_program_text_never_raises(text, program):
    for mode in ("strict", "reference"):
        execute_chunk(text, program, mode=mode)
        execute_doc(text, program, mode=mode)
