"""Evaluation metrics on hand-computed cases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxkit.evaluate.metrics import (
    calibration,
    chunk_scores,
    deleted_spans,
    drop_scores,
    edits_of,
    precision_recall_f1,
)
from proxkit.program import Normalize, Program, RemoveLines, RemoveStr
from proxkit.program.executor import edit, lower_strict


def test_drop_scores():
    predicted = [True, True, False, False, True]
    teacher = [True, False, True, False, True]
    assert drop_scores(predicted, teacher) == {
        "accuracy": 3 / 5,
        "precision": 2 / 3,
        "recall": 2 / 3,
        "f1": 2 / 3,
    }


def test_ratios_without_anything_to_count_are_none_and_misses_score_zero():
    assert precision_recall_f1(0, 0, 0) == {"precision": None, "recall": None, "f1": None}
    assert precision_recall_f1(0, 0, 4) == {"precision": None, "recall": 0.0, "f1": 0.0}


def test_calibration():
    report = calibration([0.05, 0.15, 0.95, 0.9, 1.0], [False, True, True, True, True], bins=10)
    assert [b["count"] for b in report["bins"]] == [1, 1, 3]
    # bins: |0.05-0| + |0.15-1| + 3*|0.95-1|, weighted by 1/5 each
    assert report["ece"] == pytest.approx((0.05 + 0.85 + 3 * 0.05) / 5)
    assert report["brier"] == pytest.approx((0.05**2 + 0.85**2 + 0.05**2 + 0.1**2 + 0) / 5)


TEXT = "menu\nfirst line of text here\nsecond line&nbsp;of text\nfooter"


def test_edits_of_a_program():
    edits = edits_of(
        TEXT,
        "remove_lines(line_start=0, line_end=0)\nremove_lines(line_start=3, line_end=9)\n"
        'normalize(source_str="&nbsp;", target_str=" ")',
    )
    assert edits.removed == {0, 3}
    assert edits.normalizations == {("&nbsp;", " ")}
    assert not edits.malformed
    assert edits.words_kept == pytest.approx(9 / 10)  # 10 words; "line&nbsp;of" becomes two
    assert edits_of(TEXT, "remove_lines(line_start=1,").malformed
    assert edits_of(TEXT, None).removed == frozenset()


def test_chunk_scores():
    teacher = [
        edits_of(
            TEXT, "remove_lines(line_start=0, line_end=0)\nremove_lines(line_start=3, line_end=3)"
        ),
        edits_of(TEXT, 'normalize(source_str="&nbsp;", target_str=" ")'),
    ]
    predicted = [
        edits_of(TEXT, "remove_lines(line_start=0, line_end=1)"),
        edits_of(TEXT, 'normalize(source_str="&nbsp;", target_str=" ")'),
    ]
    scores = chunk_scores(predicted, teacher)
    assert scores["line_removal"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert scores["normalize"] == {
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "exact_match": 1.0,
        "documents": 1,
    }
    assert scores["malformed_rate"] == 0.0


def test_deleted_characters_compare_as_over_and_under_deletion():
    text = "menu\nThe river rose. [edit]\nfooter"
    teacher = edits_of(text, 'remove_lines(0, 0)\nremove_str(line=1, del_str=" [edit]")')
    assert teacher.deleted == ((0, 5), (20, 27))
    student = edits_of(text, "remove_lines(0, 1)\nremove_lines(2, 2)")
    assert student.deleted == ((0, len(text)),)
    scores = chunk_scores([student], [teacher])["characters"]
    kept_by_teacher = len(text) - 12
    assert scores["over_deleted"] == kept_by_teacher and scores["under_deleted"] == 0
    assert scores["over_deletion_rate"] == 1.0 and scores["under_deletion_rate"] == 0.0
    assert scores["recall"] == 1.0 and scores["precision"] == pytest.approx(12 / len(text))
    same = chunk_scores([teacher], [teacher])["characters"]
    assert same["over_deleted"] == same["under_deleted"] == 0 and same["f1"] == 1.0


def test_deletion_only_evaluation_compares_what_would_be_applied():
    text = "menu\na&nbsp;b c d\nfooter"
    program = 'normalize("&nbsp;", " ")\nremove_lines(0, 0)'
    replaced = edits_of(text, program).deleted  # a replaced character counts as deleted
    assert replaced[0] == (0, 5) and sum(end - start for start, end in replaced) == 5 + 6
    only = edits_of(text, program, deletion_only=True)
    assert only.deleted == ((0, 5),) and only.not_applied == 1
    assert chunk_scores([only], [only])["edits_not_applied"] == 1


@given(
    st.lists(st.text("ab &", max_size=10), min_size=1, max_size=6).map("\n".join),
    st.lists(
        st.one_of(
            st.builds(RemoveLines, st.integers(0, 3), st.integers(3, 7)),
            st.builds(RemoveStr, st.integers(0, 5), st.text("ab &", min_size=1, max_size=3)),
            st.builds(Normalize, st.text("ab &", min_size=2, max_size=3)),
        ),
        max_size=5,
    ),
)
@settings(max_examples=400, deadline=None)
def test_each_deleted_character_is_counted_once(text, ops):
    program = Program(tuple(ops)).to_text()
    edited = edit(text, lower_strict(program))
    spans = deleted_spans(text, edited)
    assert sum(end - start for start, end in spans) == len(text) - len(edited.text)
    kept = "".join(
        text[end:start] for (_, end), (start, _) in zip([(0, 0), *spans], [*spans, (len(text), 0)])
    )
    assert kept == edited.text
