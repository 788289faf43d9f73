"""Clean-then-diff annotation: the alignment is a shortest edit script, derived programs delete
exactly what the teacher deleted where a deletion program can, and say what it cannot."""

from __future__ import annotations

import difflib
from types import SimpleNamespace

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from proxkit.chunking import Chunk, number_lines
from proxkit.program import RemoveLines, RemoveStr, is_subsequence
from proxkit.program.executor import edit, lower_strict
from proxkit.programmers.lm import Completion
from proxkit.synth.align import align, myers
from proxkit.synth.annotate import (
    AnnotateConfig,
    AnnotationExists,
    Annotator,
    Teacher,
    clean_summary,
    prepare,
)
from proxkit.synth.clean import derive, read_clean_answer
from proxkit.synth.rubric import RubricError, load_rubric
from proxkit.synth.teacher import Invalid

from conftest import example_records


def lcs_length(a: str, b: str) -> int:
    previous = [0] * (len(b) + 1)
    for char in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if char == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def checked(a: str, b: str, blocks) -> int:
    """The characters the blocks match, after checking they are in order and equal."""
    end_a = end_b = 0
    for i, j, size in blocks:
        assert size > 0 and i >= end_a and j >= end_b and a[i : i + size] == b[j : j + size]
        end_a, end_b = i + size, j + size
    return sum(size for *_, size in blocks)


@given(st.text("ab\n", max_size=16), st.text("ab\n", max_size=16))
@settings(max_examples=500, deadline=None)
def test_myers_finds_a_longest_common_subsequence(a, b):
    assert checked(a, b, myers(a, b)) == lcs_length(a, b)


@given(st.text("ab \n", max_size=40), st.data())
@settings(max_examples=500, deadline=None)
def test_a_teacher_that_only_deletes_is_aligned_with_deletions_only(original, data):
    keep = data.draw(st.lists(st.booleans(), min_size=len(original), max_size=len(original)))
    cleaned = "".join(c for c, k in zip(original, keep) if k)
    assert checked(original, cleaned, align(original, cleaned)) == len(cleaned)


def test_difflib_default_is_not_minimal_where_align_is():
    original = example_records()[0]["text"][:3000]
    cleaned = "\n".join(  # the second word of every line deleted
        " ".join(w for i, w in enumerate(line.split(" ")) if i != 1)
        for line in original.split("\n")
    )
    matcher = difflib.SequenceMatcher(None, original, cleaned)  # its junk heuristic is on
    assert sum(b.size for b in matcher.get_matching_blocks()) < 0.9 * len(cleaned)
    assert checked(original, cleaned, align(original, cleaned)) == len(cleaned)


DOC = "\n".join(
    [
        "Home | News | Contact",  # 0
        "The river rose by two metres overnight. [edit]",  # 1
        "Residents were moved to the school?utm_source=feed on the hill.",  # 2
        "",  # 3
        "Officials expect the water to fall soon.",  # 4
        "Share this: Twitter | Facebook",  # 5
    ]
)


def test_whole_lines_become_ranges_and_parts_of_lines_become_cuts():
    cleaned = (
        "The river rose by two metres overnight.\n"
        "Residents were moved to the school on the hill.\n\n"
        "Officials expect the water to fall soon."
    )
    derived = derive(DOC, cleaned, first_line=20)
    assert derived.program.operations == (
        RemoveLines(20, 20),
        RemoveStr(21, " [edit]"),
        RemoveStr(22, "?utm_source=feed"),
        RemoveLines(25, 25),
    )
    assert derived.exact and derived.fidelity == 1.0
    assert derived.deleted == derived.reproduced == len(DOC) - len(cleaned)


def test_an_emptied_line_whose_breaks_were_kept_is_cut_to_an_empty_line():
    derived = derive("Intro\nMENU\nBody", "Intro\n\nBody")
    assert derived.program_text == 'remove_str(line=1, del_str="MENU")' and derived.exact


def test_a_chunk_deleted_entirely_loses_all_its_lines():
    assert derive("Home\nNews\n", "", 7).program.operations == (RemoveLines(7, 9),)
    assert derive("Nothing to cut", "Nothing to cut").program_text == "keep_doc()"


def test_a_run_that_is_not_unique_is_slid_where_it_is_else_counted():
    slid = derive("abab c\nrest", "ab c\nrest")  # "ab" twice; "ba" once: same text
    assert slid.program.operations == (RemoveStr(0, "ba"),) and slid.exact
    stuck = derive("na na na\nrest", "na na\nrest")  # every equivalent cut occurs twice
    assert stuck.program.operations == () and stuck.not_unique == 3 and stuck.fidelity == 0.0
    assert not stuck.exact


def test_replacements_insertions_and_joined_lines_are_counted_never_applied():
    derived = derive(
        "A&nbsp;calm river.\nThe quick\nbrown fox.\nMENU", "A calm river.\nThe quick brown fox."
    )
    assert derived.program.operations == (RemoveLines(3, 3),)  # only the pure deletion
    assert derived.replaced == 6 + 1 and derived.inserted == 1 + 1
    assert not derived.exact and derived.fidelity == 5 / (5 + 7)


words = st.sampled_from(["the", "river", "rose", "[edit]", "Home", "|", "a", ""])
documents = st.lists(st.lists(words, max_size=6).map(" ".join), min_size=1, max_size=8)
plans = st.sampled_from(["keep", "drop", "cut", "empty"])


@given(documents, st.data())
@settings(max_examples=400, deadline=None)
def test_derived_programs_run_as_derived_and_never_cut_what_the_teacher_kept(lines, data):
    """The scripted teacher: per line keep it, drop it, cut a word from it, or empty it."""
    kept: list[str] = []
    for line in lines:
        plan = data.draw(plans)
        if plan == "keep":
            kept.append(line)
        elif plan == "cut":
            tokens = line.split(" ")
            del tokens[data.draw(st.integers(0, len(tokens) - 1))]
            kept.append(" ".join(tokens))
        elif plan == "empty":
            kept.append("")
    original, cleaned = "\n".join(lines), "\n".join(kept)
    derived = derive(original, cleaned)
    executed = edit(original, lower_strict(derived.program.to_text()))
    assert executed.errors == () and executed.text == derived.text
    assert is_subsequence(cleaned, derived.text) and is_subsequence(derived.text, original)
    assert derived.reproduced == len(original) - len(derived.text) <= derived.deleted
    assert derived.exact == (derived.fidelity == 1.0 and derived.inserted == 0)


@given(st.text("ab \n", max_size=30), st.text("abc \n", max_size=30))
@settings(max_examples=400, deadline=None)
def test_any_teacher_text_gives_a_program_that_only_deletes(original, cleaned):
    derived = derive(original, cleaned)
    executed = edit(original, lower_strict(derived.program.to_text()))
    assert executed.errors == () and executed.text == derived.text
    assert is_subsequence(derived.text, original)


CHUNK = Chunk("\n".join(number_lines(DOC)), 0, 5, 60)


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ("", "empty"),
        ("The river rose by two metres overnight.", "no_markers"),
        ("<<<CLEAN\nThe river rose by two metres", "no_end_marker"),
        (
            "<<<CLEAN\nThe river, rising all week long, rose by two metres overnight.\nCLEAN>>>",
            "rewritten",
        ),
        ("<<<CLEAN\nI'm sorry, but I can't help with that.\nCLEAN>>>", "unrelated"),
    ],
)
def test_bad_clean_answers_name_what_is_wrong(answer, kind):
    result = read_clean_answer(answer, CHUNK, max_insertion=20)
    assert isinstance(result, Invalid) and result.kind == kind, result


def test_a_fenced_clean_answer_is_read_between_its_markers():
    answer = "Here you go:\n```\n<<<CLEAN\nThe river rose by two metres overnight.\nCLEAN>>>\n```"
    derived = read_clean_answer(answer, CHUNK, max_insertion=20)
    assert derived.cleaned == "The river rose by two metres overnight."
    assert derived.program.operations[0] == RemoveLines(0, 0)
    assert read_clean_answer("<<<CLEAN\nCLEAN>>>", CHUNK, 20).program.operations == (
        RemoveLines(0, 5),
    )


def test_the_chunk_rubric_follows_the_mode_and_a_rubric_asking_for_other_answers_is_refused(
    tmp_path,
):
    def config(**options) -> AnnotateConfig:
        return AnnotateConfig(inputs=("x",), output=str(tmp_path), teacher_model="t", **options)

    assert config().chunk_rubric == "chunk-v1"
    assert config(deletion_only=True).chunk_rubric == "chunk-deletion-v1"
    assert config(teacher_mode="clean").chunk_rubric == "clean-v1"
    teacher = SimpleNamespace()  # never asked: the rubric is refused first
    with pytest.raises(RubricError, match="asks for program; this annotation needs cleaned_text"):
        Annotator(config(teacher_mode="clean", chunk_rubric="chunk-v1"), teacher)
    with pytest.raises(RubricError, match="needs deletion_program"):
        Annotator(config(deletion_only=True, chunk_rubric="chunk-v1"), teacher)
    rendered = load_rubric("clean-v1").messages(text="Some text", first_line=0, last_line=0)
    assert "<<<TEXT\nSome text\nTEXT>>>" in rendered[1]["content"]


def test_a_folder_annotated_before_the_clean_mode_existed_resumes(tmp_path):
    config = AnnotateConfig(inputs=("x",), output=str(tmp_path / "a"), teacher_model="t")
    prepare(config)
    saved = tmp_path / "a" / "config.yaml"
    older = yaml.safe_load(saved.read_text())
    for key in ("teacher_mode", "deletion_only", "clean_max_new_tokens", "max_insertion"):
        del older[key]
    saved.write_text(yaml.safe_dump(older))
    assert prepare(config) == set()
    with pytest.raises(AnnotationExists, match="teacher_mode"):
        prepare(AnnotateConfig(**{**vars(config), "teacher_mode": "clean", "chunk_rubric": None}))


def test_the_summary_says_how_much_of_the_cleaning_the_programs_reproduce():
    exact = derive("MENU\nText [edit] here", "Text here").to_json()
    partial = derive("A&nbsp;b c\nMENU", "A b c").to_json()
    summary = clean_summary([exact, partial])
    assert summary["chunks"] == 2 and summary["derived exactly"] == 1
    assert summary["teacher deleted characters"] == 5 + 7 + 6 + 5
    assert summary["fidelity (characters)"] == pytest.approx((12 + 5) / 23, abs=1e-6)
    assert summary["inexpressible replaced characters"] == 6


class ScriptedClient:
    """Answers each request with the next completion, and keeps what it was sent."""

    def __init__(self, answers: list[Completion]) -> None:
        self.answers, self.sent = answers, []

    def complete(self, payloads):
        self.sent += payloads
        return [self.answers.pop(0) for _ in payloads]


def test_a_cut_answer_is_recorded_at_once_and_a_missing_marker_is_asked_again():
    teacher = Teacher.__new__(Teacher)  # no server: the client is scripted
    teacher.model = "t"
    teacher.client = ScriptedClient(
        [
            Completion("<<<CLEAN\nThe river", hit_limit=True),
            Completion("The river rose by two metres overnight."),
            Completion("<<<CLEAN\nThe river rose by two metres overnight.\nCLEAN>>>"),
        ]
    )
    read = lambda text: read_clean_answer(text, CHUNK, max_insertion=20)  # noqa: E731
    cut, fixed = teacher.ask([[{"role": "user", "content": "a"}]] * 2, [read, read], 100)
    assert cut.error.kind == "truncated_by_limit" and len(cut.attempts) == 1
    assert fixed.error is None and len(fixed.attempts) == 2
    assert fixed.attempts[0]["error"].startswith("no_markers")
    assert "must follow a line <<<CLEAN" in teacher.client.sent[-1]["messages"][-1]["content"]
