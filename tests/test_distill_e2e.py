"""Making a refining model end to end, on CPU: a scripted teacher served by a real HTTP process
-> prox annotate -> prox sft-data -> prox train (a tiny Llama, a few steps) -> prox evaluate ->
prox refine with the trained model. Bad teacher answers are counted and never reach training."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from proxkit.chunking import Chunker
from proxkit.prompts import chunk_prompts, doc_prompts
from proxkit.tokenizer import load_tokenizer

from conftest import start_server
from tiny_model import GOOD, SPAM

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytestmark = pytest.mark.slow

MARKED = {  # document index -> teacher fault marker
    3: "TEACHER:nonjson",
    6: "TEACHER:refuse",
    7: "TEACHER:missing",
    10: "TEACHER:fixable",
    11: "TEACHER:outofrange",
    14: "TEACHER:syntax",
}  # documents 1, 5, 9, ... hold spam lines


def corpus(path: Path, count: int = 40, cuts: bool = False) -> None:
    """Documents with a MENU line, spam in every fourth, "&nbsp;" in every third, and teacher
    fault markers; with `cuts`, also " [edit]" in every other and a rewrite marker."""
    rng = random.Random(7)
    lines = []
    for i in range(count):
        body = rng.sample(GOOD, 4)
        if i % 4 == 1:
            body.insert(1, rng.choice(SPAM))
        body.insert(0, "MENU Home | News | Contact")
        if i % 3 == 0:
            body[2] = body[2].replace(" ", "&nbsp;", 1)
        if cuts and i % 2 == 0:
            body[3] += " [edit]"
        if i in MARKED:
            body.append(f"Note {MARKED[i]}")
        elif cuts and i == 12:
            body.append("Note TEACHER:rewrite")
        lines.append(json.dumps({"id": f"doc-{i:02d}", "text": "\n".join(body)}))
    lines.insert(20, '{"id": "broken", "text": ')  # a malformed record: counted, not fatal
    path.write_text("\n".join(lines) + "\n")


def prox(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "proxkit.cli", *args], capture_output=True, text=True
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def teacher():
    process, url = start_server("--teacher")
    yield url
    process.terminate()
    process.wait(timeout=10)


def test_annotate_sft_train_evaluate_refine(teacher, llama2_dir, tmp_path):
    source = tmp_path / "corpus.jsonl"
    corpus(source)
    annotations = tmp_path / "annotations"
    common = ["--teacher-model", "scripted-teacher", "--api-base", teacher]
    result = prox(
        "annotate", str(source), "-o", str(annotations), *common,
        "--tokenizer", str(llama2_dir), "--sample-size", "100", "--quiet",
    )  # fmt: skip
    assert "rejected" in result.stderr  # the broken record is reported
    records = [json.loads(line) for line in (annotations / "annotations.jsonl").open()]
    assert sorted(r["id"] for r in records) == [f"doc-{i:02d}" for i in range(40)]
    summary = json.loads((annotations / "summary.json").read_text())
    assert summary["rejected_records"] == 1
    assert summary["doc"] == {
        "drop_doc()": 10,
        "failed: missing_field": 1,
        "failed: not_json": 2,
        "fixed on retry": 1,
        "keep_doc()": 27,
        "ok": 37,
    }
    assert summary["chunk"]["failed: out_of_range"] == 1
    assert summary["chunk"]["failed: program_error"] == 1
    by_id = {r["id"]: r for r in records}
    assert by_id["doc-10"]["doc"]["ok"] and len(by_id["doc-10"]["doc"]["attempts"]) == 2
    refused = by_id["doc-06"]["doc"]
    assert not refused["ok"] and refused["attempts"][0]["response"].strip().startswith("I'm sorry")
    for record in records:
        assert record["teacher"] == {
            "model": "scripted-teacher",
            "doc_rubric": "doc-v1",
            "chunk_rubric": "chunk-v1",
        }
    kept = by_id["doc-00"]["chunks"][0]
    assert kept["program"] == (
        'remove_lines(line_start=0, line_end=0)\nnormalize(source_str="&nbsp;", target_str=" ")'
    )

    # A re-run of the same command resumes: nothing is asked again, nothing is duplicated.
    prox("annotate", str(source), "-o", str(annotations), *common, "--tokenizer", str(llama2_dir), "--sample-size", "100", "--quiet")  # fmt: skip
    assert len((annotations / "annotations.jsonl").read_text().splitlines()) == 40

    sft = tmp_path / "sft"
    prox("sft-data", str(annotations), "-o", str(sft), "--tokenizer", str(llama2_dir), "--validation-fraction", "0.25")  # fmt: skip
    manifest = json.loads((sft / "manifest.json").read_text())
    assert manifest["documents"]["train"] + manifest["documents"]["validation"] == 40
    assert manifest["left_out"] == {"chunk: teacher failed": 2, "doc: teacher failed": 3}
    tokenizer = load_tokenizer(str(llama2_dir))
    chunker = Chunker(tokenizer.backend)
    examples = [
        json.loads(line) for s in ("train", "validation") for line in (sft / f"{s}.jsonl").open()
    ]
    failed = {"doc-03", "doc-06", "doc-07"}
    assert not any(e["stage"] == "doc" and e["doc_id"] in failed for e in examples)
    assert not any(e["id"] in ("doc-11/chunk-0", "doc-14/chunk-0") for e in examples)
    for example in examples:  # the inference prompt builders give the very same ids
        text = by_id[example["doc_id"]]["text"]
        if example["stage"] == "doc":
            prompt = doc_prompts([text], tokenizer)[0]
        else:
            index = int(example["id"].rsplit("-", 1)[1])
            prompt = chunk_prompts(chunker([text])[0], tokenizer)[index]
        assert example["prompt_ids"] == list(prompt.token_ids)
        answer = tokenizer.backend.decode(example["completion_ids"], skip_special_tokens=False)
        assert answer.strip() == example["completion"].strip()
        assert example["completion_ids"][-1] == 2  # EOS ends the answer

    base = tmp_path / "base"
    from proxkit.testing import random_llama

    random_llama(base, llama2_dir)
    trained = tmp_path / "trained"
    prox("train", str(sft), "--base-model", str(base), "-o", str(trained), "--max-steps", "40", "--learning-rate", "3e-3", "--batch-size", "8", "--quiet")  # fmt: skip
    report = json.loads((trained / "training.json").read_text())
    assert report["steps"] == 40
    assert report["validation_loss_after"] < report["validation_loss_before"] * 0.5

    settings = tmp_path / "settings.yaml"
    settings.write_text("chunk_max_new_tokens: 24\ndevice: cpu\nbackend: transformers\n")
    evaluation = tmp_path / "evaluation.json"
    prox("evaluate", str(sft / "heldout.jsonl"), "--programmer", str(trained), "--config", str(settings), "--json", str(evaluation))  # fmt: skip
    scores = json.loads(evaluation.read_text())
    heldout = [json.loads(line) for line in (sft / "heldout.jsonl").open()]
    assert scores["doc"]["documents"] == sum(bool(r["doc"]["ok"]) for r in heldout)
    assert 0 <= scores["doc"]["drop"]["accuracy"] <= 1
    assert scores["doc"]["keep_score_calibration"]["ece"] is not None
    assert scores["chunk"]["malformed_rate"] == 0.0  # constrained decoding
    rules = prox("evaluate", str(sft / "heldout.jsonl"), "--programmer", "rules")
    assert "line_removal f1" in rules.stdout

    refined = tmp_path / "refined"
    prox("refine", str(source), "-o", str(refined), "--doc-programmer", str(trained), "--chunk-programmer", str(trained), "--config", str(settings), "--limit", "6", "--quiet")  # fmt: skip
    assert json.loads((refined / "stats.json").read_text())["documents"] == 6
    prox("report", str(refined))
    html = (refined / "report.html").read_text()
    assert "Doc-level keep score of 6 documents" in html and "keep score 0." in html


def test_clean_mode_annotate_sft_train_evaluate(teacher, llama2_dir, tmp_path):
    """Clean-then-diff on the scripted cleaning teacher (tests/openai_server.py): every deletion
    it makes comes back as a program, and the programs train and evaluate like any others."""
    from proxkit.config import RefineConfig
    from proxkit.evaluate.run import evaluate
    from proxkit.synth.sft import SFTConfig, write_sft_data
    from proxkit.testing import random_llama
    from proxkit.train.trainer import TrainConfig, train

    source = tmp_path / "corpus.jsonl"
    corpus(source, count=16, cuts=True)
    annotations = tmp_path / "annotations"
    prox(
        "annotate", str(source), "-o", str(annotations), "--teacher-model", "scripted-teacher",
        "--api-base", teacher, "--tokenizer", str(llama2_dir), "--teacher-mode", "clean", "--quiet",
    )  # fmt: skip
    summary = json.loads((annotations / "summary.json").read_text())
    assert summary["chunk"]["failed: unrelated"] == 1  # doc 11: a refusal between the markers
    assert summary["chunk"]["failed: no_end_marker"] == 1  # doc 14
    assert summary["chunk"]["failed: rewritten"] == 1  # doc 12: a sentence added, twice
    assert summary["chunk"]["fixed on retry"] == 1  # doc 10: no markers, then good
    records = {r["id"]: r for r in map(json.loads, (annotations / "annotations.jsonl").open())}
    assert {r["teacher"]["chunk_rubric"] for r in records.values()} == {"clean-v1"}
    first = records["doc-00"]["chunks"][0]
    assert first["program"] == (
        'remove_lines(line_start=0, line_end=0)\nremove_str(line=3, del_str=" [edit]")'
    )
    assert first["cleaned"].count("\n") == 3 and "MENU" not in first["cleaned"]
    derived = [c for r in records.values() for c in r["chunks"] or [] if c["ok"]]
    assert len(derived) == summary["clean"]["chunks"] == summary["chunk"]["ok"]
    for chunk in derived:  # every deletion of the teacher's is reproduced
        numbers = chunk["derivation"]
        replaced = numbers["inexpressible_chars"]["replaced"]
        assert numbers["reproduced_chars"] == numbers["deleted_chars"] - replaced
        assert numbers["exact"] == (replaced == 0) and (replaced == 0) == (
            "&nbsp;" not in chunk["text"]
        )
    assert summary["clean"]["inexpressible replaced characters"] > 0

    sft = tmp_path / "sft"
    manifest = write_sft_data(SFTConfig(str(annotations), str(sft), str(llama2_dir), 0.25))
    assert manifest["left_out"]["chunk: teacher failed"] == 3
    random_llama(tmp_path / "base", llama2_dir)
    report = train(
        TrainConfig(str(sft), str(tmp_path / "base"), str(tmp_path / "trained"), max_steps=6,
                    learning_rate=3e-3, batch_size=4),
        progress=False,
    )  # fmt: skip
    assert report["validation_loss_after"] < report["validation_loss_before"]
    settings = {"chunk_max_new_tokens": 24, "device": "cpu", "deletion_only": True}
    settings["backend"] = "transformers"
    model = str(tmp_path / "trained")
    scores = evaluate(
        str(sft / "heldout.jsonl"),
        RefineConfig(doc_programmer=model, chunk_programmer=model, **settings),
    )
    characters = scores["chunk"]["characters"]
    assert characters["teacher_deleted"] > 0 and scores["chunk"]["malformed_rate"] == 0.0
    assert (
        characters["under_deleted"] + characters["deleted"] - characters["over_deleted"]
        == (characters["teacher_deleted"])
    )


def test_teacher_request_failures_are_recorded_and_not_asked_again(teacher, llama2_dir, tmp_path):
    from proxkit.synth.annotate import AnnotateConfig, run_annotate

    source = tmp_path / "in.jsonl"
    texts = {"fine": "A plain paragraph of text.", "down": "Text FAULT:always500 here."}
    source.write_text("".join(json.dumps({"id": k, "text": t}) + "\n" for k, t in texts.items()))
    config = AnnotateConfig(
        inputs=(str(source),),
        output=str(tmp_path / "out"),
        teacher_model="scripted-teacher",
        api_base=teacher,
        tokenizer=str(llama2_dir),
        max_retries=1,
    )
    summary = run_annotate(config, progress=False)
    assert summary["doc"] == {"failed: request_failed": 1, "keep_doc()": 1, "ok": 1}
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "annotations.jsonl").open())}
    attempts = records["down"]["doc"]["attempts"]
    assert len(attempts) == 1 and attempts[0]["response"] is None
    assert "HTTP 500" in attempts[0]["error"]


def test_lora_training_saves_a_merged_standard_checkpoint(llama2_dir, tmp_path):
    from proxkit.programmers.hf import TransformersBackend
    from proxkit.synth.sft import SFTConfig, write_sft_data
    from proxkit.testing import random_llama
    from proxkit.train.trainer import TokenizerMismatch, TrainConfig, train

    pytest.importorskip("peft")
    records = [
        {
            "id": f"d{i}",
            "text": f"Line {i} of a document.\nAnother line.",
            "doc": {"ok": True, "program": "drop_doc()" if i % 2 else "keep_doc()"},
            "chunks": None,
        }
        for i in range(24)
    ]
    annotations = tmp_path / "annotations.jsonl"
    annotations.write_text("".join(json.dumps(r) + "\n" for r in records) + "not json\n")
    manifest = write_sft_data(
        SFTConfig(str(annotations), str(tmp_path / "sft"), str(llama2_dir), 0.25)
    )
    assert manifest["unreadable_annotation_lines"] == 1
    random_llama(tmp_path / "base", llama2_dir)
    report = train(
        TrainConfig(
            str(tmp_path / "sft"),
            str(tmp_path / "base"),
            str(tmp_path / "lora"),
            lora_rank=8,
            max_steps=30,
            batch_size=8,
            learning_rate=1e-2,
        ),
        progress=False,
    )
    assert report["method"] == "lora (rank 8)"
    assert report["validation_loss_after"] < report["validation_loss_before"]
    assert not (tmp_path / "lora" / "adapter_config.json").exists()  # merged, not an adapter
    assert TransformersBackend(str(tmp_path / "lora")).tokenizer.fingerprint()

    other = tmp_path / "other_tokenizer"
    other.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (other / name).write_text((llama2_dir / name).read_text())
    config = json.loads((other / "tokenizer_config.json").read_text())
    (other / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<unk>"}))
    for name in ("config.json", "model.safetensors"):
        (other / name).write_bytes((tmp_path / "base" / name).read_bytes())
    with pytest.raises(TokenizerMismatch, match="rebuild them with prox sft-data"):
        train(TrainConfig(str(tmp_path / "sft"), str(other), str(tmp_path / "x")), progress=False)


def test_the_answer_only_loss_is_the_causal_lm_loss(tmp_path, llama2_dir):
    """prox train runs the LM head on answer tokens only; the loss is transformers' own."""
    import torch

    from proxkit.testing import random_llama
    from proxkit.train.trainer import IGNORE, answer_loss, collate

    model = random_llama(tmp_path / "m", llama2_dir)
    examples = [
        {"input_ids": list(range(5, 25)), "labels": [IGNORE] * 15 + list(range(20, 25))},
        {"input_ids": list(range(7, 19)), "labels": [IGNORE] * 9 + list(range(16, 19))},
    ]
    batch = collate(2)(examples)
    expected = model(**batch).loss
    assert answer_loss(model, batch).item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.isfinite(expected)
