"""Evaluation metrics on hand-computed cases."""

from __future__ import annotations

import pytest

from proxkit.evaluate.metrics import (
    calibration,
    chunk_scores,
    drop_scores,
    edits_of,
    precision_recall_f1,
)


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
