"""Teacher annotation pieces: sampling, answer validation, rubrics, SFT answers, resume."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxkit.chunking import Chunk
from proxkit.config import ConfigError, load_flat
from proxkit.io.readers import Document
from proxkit.prompts import answer_ids, answer_text, doc_prompts
from proxkit.synth.annotate import AnnotateConfig, AnnotationExists, prepare, summarize
from proxkit.synth.rubric import RubricError, load_rubric
from proxkit.synth.sample import LENGTH_EDGES, allocate, sample_documents, stratum
from proxkit.synth.sft import split_of
from proxkit.synth.teacher import DocLabel, Invalid, read_chunk_answer, read_doc_answer
from proxkit.tokenizer import load_tokenizer


def docs(lengths: list[int]) -> list[Document]:
    return [Document(f"d{i}", "w " * n, {}, "mem", i + 1) for i, n in enumerate(lengths)]


def test_sample_is_proportional_to_strata_and_seeded():
    corpus = docs([10] * 600 + [150] * 300 + [5000] * 100)  # three strata, 60/30/10 %
    sample = sample_documents(corpus, 100, seed=1)
    assert Counter(sample.strata) == {0: 60, 2: 30, len(LENGTH_EDGES): 10}
    assert sample.populations == {0: 600, 2: 300, len(LENGTH_EDGES): 100}
    again = sample_documents(list(reversed(corpus)), 100, seed=1)
    assert [d.id for d in again.documents] == [d.id for d in sample.documents]
    other = sample_documents(corpus, 100, seed=2)
    assert {d.id for d in other.documents} != {d.id for d in sample.documents}


def test_a_sample_larger_than_the_corpus_takes_everything_once():
    corpus = docs([10, 60, 60, 500])
    sample = sample_documents(corpus, 50)
    assert sorted(d.id for d in sample.documents) == ["d0", "d1", "d2", "d3"]


@given(st.dictionaries(st.integers(0, 7), st.integers(1, 500), min_size=1), st.integers(1, 400))
def test_allocation_sums_to_the_size_and_never_exceeds_a_stratum(populations, size):
    counts = allocate(populations, size)
    assert sum(counts.values()) == min(size, sum(populations.values()))
    assert all(0 <= counts[s] <= populations[s] for s in populations)


def test_stratum_edges():
    assert [stratum("w " * n) for n in (0, 49, 50, 3199, 3200)] == [0, 0, 1, 6, 7]


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ("", "empty"),
        ("I'm sorry, but I can't help with that.", "not_json"),
        ('{"educational_value": 3,}', "not_json"),
        ("[1, 2]", "not_json"),
        ('{"educational_value": 3}', "missing_field"),
        ('{"educational_value": 3, "format_readability": 6}', "bad_value"),
        ('{"educational_value": "3", "format_readability": 2}', "bad_value"),
        ('{"educational_value": true, "format_readability": 2}', "bad_value"),
        ('{"educational_value": 2.5, "format_readability": 2}', "bad_value"),
    ],
)
def test_bad_doc_answers_name_what_is_wrong(answer, kind):
    result = read_doc_answer(answer)
    assert isinstance(result, Invalid) and result.kind == kind


def test_doc_answers_in_prose_or_fences_are_read_and_mapped_by_minimums():
    fenced = (
        'Here:\n```json\n{"educational_value": 4.0, "format_readability": 1, "reason": "x"}\n```'
    )
    label = read_doc_answer(fenced)
    assert label == DocLabel(4, 1, "x")
    assert label.program(2, 2) == "drop_doc()" and label.program(2, 1) == "keep_doc()"


CHUNK = Chunk("[010]Home | About\n[011]Real text here&nbsp;ok\n[012]Footer", 10, 12, 20)


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ("remove_lines(line_start=9, line_end=10)", "out_of_range"),
        ("remove_lines(line_start=12, line_end=13)", "out_of_range"),
        ("remove_lines(line_start=11, line_end=10)", "program_error"),  # reversed
        ('normalize(source_str="missing", target_str="")', "source_not_in_chunk"),
        ('normalize(source_str="[011]", target_str="")', "source_not_in_chunk"),
        ("remove_lines(line_start=10,", "program_error"),
        ("drop_doc()", "program_error"),
        ("keep_doc()\nremove_lines(line_start=10, line_end=10)", "program_error"),
        ("The program is below.", "program_error"),
        ("```python\n```", "empty"),
    ],
)
def test_bad_chunk_programs_are_refused(answer, kind):
    result = read_chunk_answer(answer, CHUNK)
    assert isinstance(result, Invalid) and result.kind == kind, result


def test_good_chunk_programs_come_back_canonical():
    answer = "```python\nremove_lines(10, 10)\nnormalize(source_str='&nbsp;', target_str=' ')\n```"
    program = read_chunk_answer(answer, CHUNK)
    assert program.to_text() == (
        'remove_lines(line_start=10, line_end=10)\nnormalize(source_str="&nbsp;", target_str=" ")'
    )


def test_packaged_rubrics_render_and_a_broken_one_is_named(tmp_path):
    doc = load_rubric("doc-v1")
    _, user = doc.messages(document="Some {{ braces }} text")
    assert doc.version == "doc-v1" and "Some {{ braces }} text" in user["content"]
    chunk = load_rubric("chunk-v1").messages(chunk="[003]x", first_line=3, last_line=3)
    assert "between 3 and 3" in chunk[1]["content"] and "[003]x" in chunk[1]["content"]
    broken = tmp_path / "mine.yaml"
    broken.write_text("version: mine-1\nsystem: hi\n")
    with pytest.raises(RubricError, match=r"mine\.yaml: missing user"):
        load_rubric(str(broken))
    with pytest.raises(RubricError, match="doc-v1"):
        load_rubric("doc-v9")


def test_answers_are_the_llama2_assistant_turn(llama2_dir):
    tokenizer = load_tokenizer(str(llama2_dir))
    prompt = doc_prompts(["A page."], tokenizer)[0]
    assert answer_text(tokenizer, prompt, "keep_doc()") == " keep_doc() </s>"
    ids = answer_ids(tokenizer, prompt, "keep_doc()")
    assert tokenizer.backend.decode(list(ids), skip_special_tokens=False) == "keep_doc() </s>"
    assert ids[-1] == 2
    # The one-pass scorer's first answer token is the one training teaches.
    assert (
        ids[0]
        == tokenizer.backend.encode(prompt.text + " keep_doc()", add_special_tokens=False).ids[
            len(prompt.token_ids)
        ]
    )


def test_split_is_by_document_and_near_the_fraction():
    splits = [split_of(f"doc-{i}", 0, 0.2) for i in range(2000)]
    assert 0.17 < splits.count("validation") / 2000 < 0.23
    assert split_of("doc-7", 0, 0.2) == split_of("doc-7", 0, 0.2)


def test_flat_configs_come_from_yaml_and_flags(tmp_path):
    path = tmp_path / "annotate.yaml"
    path.write_text("inputs: [a.jsonl]\noutput: out\nteacher_model: t\nstages: doc\nseed: 3\n")
    config = load_flat(AnnotateConfig, path, {"seed": 5, "sample_size": None})
    assert config.inputs == ("a.jsonl",) and config.stages == ("doc",) and config.seed == 5
    path.write_text("inputs: [a.jsonl]\noutput: out\nteacher_model: t\nsample_sise: 3\n")
    with pytest.raises(ConfigError, match="sample_sise"):
        load_flat(AnnotateConfig, path, {})


def test_resume_drops_a_cut_last_line_and_other_settings_are_refused(tmp_path):
    config = AnnotateConfig(inputs=("x",), output=str(tmp_path / "a"), teacher_model="t")
    assert prepare(config) == set()
    annotations = tmp_path / "a" / "annotations.jsonl"
    annotations.write_text(json.dumps({"id": "one"}) + "\n" + '{"id": "tw')
    assert prepare(config) == {"one"}
    assert annotations.read_text() == json.dumps({"id": "one"}) + "\n"
    with pytest.raises(AnnotationExists, match="seed"):
        prepare(
            AnnotateConfig(inputs=("x",), output=str(tmp_path / "a"), teacher_model="t", seed=1)
        )


def test_summary_counts_outcomes():
    ok = {"ok": True, "program": "keep_doc()", "attempts": [{}], "error": None}
    retried = {"ok": True, "program": "drop_doc()", "attempts": [{}, {}], "error": None}
    failed = {"ok": False, "program": None, "attempts": [{}], "error": "request_failed"}
    records = [
        {"doc": ok, "chunks": [ok, failed]},
        {"doc": retried, "chunks": None, "chunks_skipped": "dropped at doc level"},
        {"doc": failed, "chunks": [ok]},
    ]
    assert summarize(records) == {
        "documents": 3,
        "doc": {
            "drop_doc()": 1,
            "failed: request_failed": 1,
            "fixed on retry": 1,
            "keep_doc()": 1,
            "ok": 2,
        },
        "chunk": {
            "documents skipped (dropped at doc level)": 1,
            "failed: request_failed": 1,
            "ok": 2,
        },
    }


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_one_pass_scoring_reads_the_tokens_training_teaches(llama2_dir, tmp_path):
    from proxkit.programmers.lm import answer_separator, answer_tokens

    chatml = tmp_path / "chatml"
    shutil.copytree(llama2_dir, chatml)
    config = json.loads((chatml / "tokenizer_config.json").read_text())
    (chatml / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHATML}))
    for folder, separator in ((llama2_dir, " "), (chatml, "")):
        tokenizer = load_tokenizer(str(folder))
        assert answer_separator(tokenizer) == separator
        prompt = doc_prompts(["A page about rivers."], tokenizer)[0]
        prefix, keep, drop = answer_tokens(tokenizer, prompt.text, separator)
        for answer, first in (("keep_doc()", keep), ("drop_doc()", drop)):
            taught = answer_ids(tokenizer, prompt, answer)
            assert list(taught[: len(prefix) + 1]) == [*prefix, first]
