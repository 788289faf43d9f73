"""The line-anchored cut (`remove_str`) and deletion-only execution: exact readings, the cut's
semantics beside `normalize` and line removal, and the promise that a deletion-only output is
always a subsequence of its input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxkit.chunking import Chunk
from proxkit.pipeline.stats import RunStats
from proxkit.pipeline.verify import verify
from proxkit.program import (
    Normalize,
    Outcome,
    Program,
    RemoveLines,
    RemoveStr,
    Thresholds,
    execute_chunk,
    is_deletion,
    is_subsequence,
    parse,
)
from proxkit.program.ops import ChunkEdits
from proxkit.synth.sft import SFTConfig, write_sft_data
from proxkit.synth.teacher import Invalid, read_chunk_answer

from conftest import example_records, operations, refine_records, start_server, write_jsonl

DOC = "\n".join(
    [
        "Home | News | Contact",  # 0
        "The river rose by two metres overnight, flooding the lower town. [edit]",  # 1
        "Residents were moved to the school on the hill before dawn.",  # 2
        "Share: Twitter Facebook Share: Email",  # 3
        "Officials expect the water to fall by the end of the week.",  # 4
        "Copyright 2024 Example News",  # 5
    ]
)
LOOSE = Thresholds(short_doc_words=0)


def test_the_cut_reads_in_keyword_and_positional_form_and_round_trips():
    assert parse('remove_str(line=1, del_str=" [edit]")').operations == (RemoveStr(1, " [edit]"),)
    assert parse("remove_str(1, ' [edit]')").operations == (RemoveStr(1, " [edit]"),)
    assert Program((RemoveStr(7, 'say "hi"\\'),)).to_text() == (
        'remove_str(line=7, del_str="say \\"hi\\"\\\\")'
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('remove_str(line=1, del_str="")', "del_str must not be empty"),
        ('remove_str(line=1, del_str="a\\nb")', "del_str must not contain a newline"),
        ('remove_str(line=-1, del_str="a")', "line must not be negative, got -1"),
        ('remove_str(line="1", del_str="a")', "line must be an integer, got str"),
        ("remove_str(line=1, del_str=3)", "del_str must be a string, got int"),
        ("remove_str(line=1)", "remove_str() needs line and del_str"),
        ('remove_str(line_start=1, del_str="a")', "unexpected argument 'line_start'"),
        ('remove_str(1, "a", "b")', "remove_str() takes at most 2 arguments"),
    ],
)
def test_a_malformed_cut_is_an_error_naming_why(text, reason):
    program = parse(text)
    assert program.operations == () and reason in program.errors[0].reason


def test_a_cut_removes_its_string_from_its_line_only():
    result = execute_chunk(DOC, 'remove_str(line=1, del_str=" [edit]")', thresholds=LOOSE)
    assert result.outcome is Outcome.REFINED
    assert result.text == DOC.replace(" [edit]", "")
    assert result.cuts == ((1, " [edit]"),)
    assert result.to_metadata()["cuts"] == [[1, " [edit]"]]
    # normalize would cut "the" everywhere; a cut anchored to line 4 touches only line 4
    cut = execute_chunk(DOC, 'remove_str(line=4, del_str="the end of ")', thresholds=LOOSE)
    assert cut.text.split("\n")[4] == "Officials expect the water to fall by the week."
    assert cut.text.split("\n")[:4] == DOC.split("\n")[:4]


@pytest.mark.parametrize(
    ("program", "reason"),
    [
        ('remove_str(line=3, del_str="Share: ")', "occurs more than once in line 3"),
        ('remove_str(line=2, del_str="[edit]")', "not in line 2"),
        ('remove_str(line=6, del_str="x")', "line 6 is past the last line 5"),
    ],
)
def test_a_cut_that_is_not_unique_in_its_line_is_a_counted_error(program, reason):
    result = execute_chunk(DOC, program, thresholds=LOOSE)
    assert result.outcome is Outcome.UNCHANGED and result.text == DOC and result.cuts == ()
    assert len(result.errors) == 1 and reason in result.errors[0].reason
    assert result.errors[0].text == program


def test_overlapping_occurrences_are_not_unique_and_errors_count_toward_the_limit():
    text = "aaa is a word here\nand more words on this line too"
    assert "more than once" in execute_chunk(text, 'remove_str(0, "aa")').errors[0].reason
    two_errors = 'remove_str(0, "aa")\nremove_str(1, "zzz")\nremove_lines(0, 0)'
    result = execute_chunk(text, two_errors, thresholds=LOOSE)
    assert result.outcome is Outcome.PROGRAM_IGNORED and result.text == text


def test_cuts_match_the_line_the_model_read_before_normalize_runs():
    text = "Price:&nbsp;10&nbsp;EUR (ad)\nplain line here with words"
    program = (
        'normalize(source_str="&nbsp;", target_str=" ")\nremove_str(line=0, del_str="&nbsp;EUR")'
    )
    result = execute_chunk(text, program, thresholds=LOOSE)
    assert result.text.split("\n")[0] == "Price: 10 (ad)"
    assert result.normalizations == (("&nbsp;", " ", 1),) and result.errors == ()


def test_a_cut_on_a_removed_line_is_checked_then_goes_with_its_line():
    result = execute_chunk(
        DOC, 'remove_lines(line_start=1, line_end=1)\nremove_str(line=1, del_str=" [edit]")'
    )
    assert "[edit]" not in result.text and "river" not in result.text and result.errors == ()
    bad = execute_chunk(DOC, 'remove_lines(1, 1)\nremove_str(line=1, del_str="nope")')
    assert "river" not in bad.text and len(bad.errors) == 1


def test_cuts_of_one_line_that_overlap_remove_their_union():
    text = "one two three four five six seven\nanother line of words"
    result = execute_chunk(
        text, 'remove_str(0, "two three")\nremove_str(0, "three four ")', thresholds=LOOSE
    )
    assert result.text.split("\n")[0] == "one five six seven"


def test_the_reference_parser_skips_cuts_as_it_skips_every_line_it_does_not_know():
    result = execute_chunk(DOC, 'remove_str(line=1, del_str=" [edit]")', mode="reference")
    assert result.outcome is Outcome.UNCHANGED and result.errors == ()


def test_what_counts_as_a_deletion():
    assert is_deletion(RemoveLines(0, 3)) and is_deletion(RemoveStr(0, "x"))
    assert is_deletion(Normalize("Click here")) and is_deletion(Normalize("!!!", "!"))
    assert not is_deletion(Normalize("&nbsp;", " ")) and not is_deletion(Normalize("ab", "ba"))


def test_deletion_only_leaves_out_replacements_records_them_and_keeps_the_rest():
    text = "Home | News\nA&nbsp;calm river!!!\nMore prose follows in this line here"
    program = (
        "remove_lines(line_start=0, line_end=0)\n"
        'normalize(source_str="&nbsp;", target_str=" ")\n'
        'normalize(source_str="!!!", target_str="!")'
    )
    full = execute_chunk(text, program, thresholds=LOOSE)
    assert full.text == "A calm river!\nMore prose follows in this line here"
    only = execute_chunk(text, program, thresholds=LOOSE, deletion_only=True)
    assert only.text == "A&nbsp;calm river!\nMore prose follows in this line here"
    assert only.errors == ()  # not malformed: asks for what this run does not allow
    assert [e.text for e in only.not_applied] == ['normalize(source_str="&nbsp;", target_str=" ")']
    assert "not a deletion" in only.to_metadata()["not_applied"][0]["reason"]
    assert "not_applied" not in full.to_metadata() and "cuts" not in full.to_metadata()


def test_a_non_subsequence_output_leaves_the_document_unrefined(monkeypatch):
    """The check after execution holds even if the filter before it let a replacement pass."""
    monkeypatch.setattr(ChunkEdits, "deletions_only", lambda self: self)
    text = "Word one&nbsp;two three four five six seven eight nine ten eleven"
    result = execute_chunk(text, 'normalize("&nbsp;", " ")', deletion_only=True)
    assert result.outcome is Outcome.NOT_A_SUBSEQUENCE and result.text == text
    assert "not a subsequence" in result.not_applied[-1].reason


# --- properties -------------------------------------------------------------------------------

lines = st.lists(st.text(st.sampled_from("ab &!\u00a0"), max_size=12), min_size=1, max_size=8)
pieces = st.text(st.sampled_from("ab &!\u00a0"), min_size=1, max_size=4)
with_cuts = st.one_of(operations, st.builds(RemoveStr, st.integers(0, 9), pieces))
small_normalize = st.builds(Normalize, pieces, st.text(st.sampled_from("ab &!x"), max_size=3))


@given(
    lines.map("\n".join),
    st.lists(st.one_of(with_cuts, small_normalize), max_size=8),
    st.sampled_from(["strict", "reference"]),
    st.integers(0, 3),
)
@settings(max_examples=600, deadline=None)
def test_deletion_only_outputs_are_always_subsequences_of_their_input(text, ops, mode, limit):
    program = Program(tuple(ops)).to_text()
    result = execute_chunk(
        text, program, mode, Thresholds(short_doc_words=limit, error_limit=limit), True
    )
    assert is_subsequence(result.text, text)
    assert result.outcome is not Outcome.NOT_A_SUBSEQUENCE  # the filter, not the check, holds it
    applied = {(s, t) for s, t, _ in result.normalizations}
    assert all(is_subsequence(target, source) for source, target in applied)


@given(st.text(st.sampled_from("ab\n"), max_size=30), st.text(st.sampled_from("ab\n"), max_size=30))
@settings(max_examples=600, deadline=None)
def test_is_subsequence_agrees_with_its_definition(part, whole):
    remaining = iter(whole)
    assert is_subsequence(part, whole) == all(char in remaining for char in part)


# --- teachers and training data -----------------------------------------------------------

CHUNK = Chunk("[010]Home | About\n[011]Real text here&nbsp;ok [edit]\n[012]Footer", 10, 12, 20)


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ('remove_str(line=13, del_str="x")', "out_of_range"),
        ('remove_str(line=11, del_str="e")', "bad_cut"),  # occurs more than once
        ('remove_str(line=10, del_str="[edit]")', "bad_cut"),  # not in that line
    ],
)
def test_a_teacher_cut_must_be_unique_in_a_line_of_its_chunk(answer, kind):
    result = read_chunk_answer(answer, CHUNK)
    assert isinstance(result, Invalid) and result.kind == kind, result


def test_deletion_only_teachers_may_only_delete():
    answer = (
        'remove_str(line=11, del_str=" [edit]")\nnormalize(source_str="&nbsp;", target_str=" ")'
    )
    assert isinstance(read_chunk_answer(answer, CHUNK), Program)
    refused = read_chunk_answer(answer, CHUNK, deletion_only=True)
    assert isinstance(refused, Invalid) and refused.kind == "not_a_deletion"
    assert 'target_str=" "' in refused.message
    kept = read_chunk_answer(answer.replace('" ")', '"")'), CHUNK, deletion_only=True)
    assert isinstance(kept, Program) and len(kept.operations) == 2


def test_deletion_only_sft_data_keeps_the_deletions_of_each_program(tmp_path, llama2_dir):
    text = "Home | About\nReal text here&nbsp;ok [edit]\nFooter"
    program = (
        "remove_lines(line_start=0, line_end=0)\n"
        'normalize(source_str="&nbsp;", target_str=" ")\n'
        'remove_str(line=1, del_str=" [edit]")'
    )
    chunks = [{"text": CHUNK.text.replace("[01", "[00"), "first_line": 0, "last_line": 2}]
    records = [
        {"id": f"d{i}", "text": text, "chunks": [{**chunks[0], "ok": True, "program": p}]}
        for i, p in enumerate([program, 'normalize(source_str="&nbsp;", target_str=" ")'])
    ]
    source = write_jsonl(tmp_path / "annotations.jsonl", records)
    manifest = write_sft_data(
        SFTConfig(str(source), str(tmp_path / "sft"), str(llama2_dir), 0.0, deletion_only=True)
    )
    assert manifest["left_out"] == {"chunk: non-deletion operations left out": 2}
    answers = [e["completion"] for e in map(json.loads, (tmp_path / "sft/train.jsonl").open())]
    assert answers == [
        ' remove_lines(line_start=0, line_end=0)\nremove_str(line=1, del_str=" [edit]") </s>',
        " keep_doc() </s>",
    ]


# --- whole runs: every programmer, the datatrove step ------------------------------------

REPLACING = '\nnormalize(source_str=" the ", target_str=" THE ")'


def subsequences(records: list[dict]) -> bool:
    return all(is_subsequence(r["text"], r["raw_content"]) for r in records)


def test_the_example_corpus_refined_by_rules_and_stored_programs_only_loses_characters(tmp_path):
    records = example_records()[:120]
    rules = {"doc_programmer": "rules", "chunk_programmer": "rules"}
    full, _ = refine_records(tmp_path, "rules", records, **rules)
    only, stats = refine_records(tmp_path, "rules-only", records, **rules, deletion_only=True)
    assert subsequences(only) and stats["edits_not_applied"] == 0
    assert [r["text"] for r in only] == [r["text"] for r in full]  # rules only ever delete
    assert all(r["metadata"]["prox"]["deletion_only"] for r in only)

    for record in full:  # programs that also replace, as a model might write them
        if "chunk_program" in record["metadata"]:
            record["metadata"]["chunk_program"] += REPLACING
    stored = {"doc_programmer": "stored", "chunk_programmer": "stored"}
    replaced, _ = refine_records(tmp_path, "stored", full, **stored)
    assert not subsequences(replaced)
    executed, stats = refine_records(tmp_path, "stored-only", full, **stored, deletion_only=True)
    assert subsequences(executed)
    for run in ("rules-only", "stored-only"):  # the auditor rebuilds them as they were made
        assert verify(tmp_path / run).problems == []
    programs = [r for r in full if "chunk_program" in r["metadata"]]
    assert stats["edits_not_applied"] == len(programs) > 0
    assert "edits not applied (not deletions)" in dict(RunStats.from_dict(stats).summary_lines())
    assert [r["text"] for r in executed] == [r["text"] for r in only]


def test_model_programmers_under_deletion_only(tmp_path, refiner, llama2_dir):
    pages = [
        {
            "id": f"p{i}",
            "text": f"MENU Home | News\nThe river rose by two metres{i}.&nbsp;It rained.\n"
            "Residents were moved to the school on the hill before dawn today.",
        }
        for i in range(4)
    ]
    process, url = start_server()
    try:
        served, stats = refine_records(
            tmp_path, "openai", pages, doc_programmer="scripted", chunk_programmer="scripted",
            backend="openai", api_base=url, tokenizer=str(llama2_dir), deletion_only=True,
            constrained=False, doc_scoring="generate", thresholds=Thresholds(short_doc_words=3),
        )  # fmt: skip
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert subsequences(served) and stats["edits_not_applied"] == 4
    assert all("MENU" not in r["text"] and "&nbsp;" in r["text"] for r in served)
    local, _ = refine_records(
        tmp_path, "local", pages, doc_programmer=str(refiner), chunk_programmer=str(refiner),
        backend="transformers", device="cpu", chunk_max_new_tokens=24, deletion_only=True,
    )  # fmt: skip
    assert subsequences(local) and len(local) == 4


def test_the_datatrove_step_only_deletes(tmp_path):
    pytest.importorskip("datatrove")
    from datatrove.data import Document as DatatroveDocument

    from proxkit.datatrove import ProxRefiner

    rules, _ = refine_records(
        tmp_path, "rules", example_records()[:40], doc_programmer="rules", chunk_programmer="rules"
    )
    documents = []
    for record in rules:
        metadata = {**record["metadata"], "raw_content": record["raw_content"]}
        metadata["chunk_program"] = metadata.get("chunk_program", "keep_doc()") + REPLACING
        documents.append(
            DatatroveDocument(record["raw_content"], str(record["id"]), metadata=metadata)
        )
    step = ProxRefiner("stored", "stored", deletion_only=True, batch_size=16)
    refined = list(step.run(iter(documents)))
    assert len(refined) == 40
    assert all(is_subsequence(d.text, d.metadata["raw_content"]) for d in refined)
    assert (
        step.stats["edits_not_applied"].total
        >= sum("chunk" in d.metadata["prox"] for d in refined)
        > 0
    )


def test_the_report_shows_cuts_where_they_were_made():
    from proxkit.report.diff import document_view

    program = (
        'remove_str(line=1, del_str=" [edit]")\nremove_str(line=3, del_str="Share: Email")\n'
        'normalize(source_str="Share: ", target_str="")\nremove_lines(line_start=5, line_end=5)'
    )
    result = execute_chunk(DOC, program)
    assert result.cuts == ((1, " [edit]"), (3, "Share: Email")) and result.errors == ()
    record = {"id": "d", "text": result.text, "raw_content": DOC}
    record["metadata"] = {"chunk_program": program, "prox": {"chunk": result.to_metadata()}}
    view = document_view(record)
    assert view.highlighted and view.kept_text() == result.text
    cut = [s for line in view.lines for s in line.segments if s.normalized_from == " [edit]"]
    assert cut and cut[0].text == ""
