"""`prox execute` and `prox prompts`: stored programs re-run, bad records rejected and counted."""

from __future__ import annotations

import gzip
import json

from typer.testing import CliRunner

from proxkit.cli import app

from conftest import read_jsonl, write_jsonl

runner = CliRunner()
BODY = "\n".join(f"line {i} of a page with several words" for i in range(12))
RECORDS = [
    {
        "id": "refined",
        "text": BODY,
        "url": "https://example.com/a",
        "metadata": {
            "doc_program": "keep_doc()",
            "chunk_program": 'remove_lines(line_start=0, line_end=2)\nnormalize(source_str="several", target_str="many")',
        },
    },
    {
        "id": "dropped",
        "text": BODY,
        "metadata": {"doc_program": "drop_doc()", "chunk_program": "keep_doc()"},
    },
    {
        "id": "chunk-only",
        "text": BODY,
        "metadata": {"chunk_program": "remove_lines(line_start=11, line_end=11)"},
    },
    {"id": "nothing-stored", "text": BODY},
]


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_execute_runs_stored_programs_and_keeps_order_ids_and_fields(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    result = invoke("execute", str(source), "-o", str(tmp_path / "out.jsonl"), "-q")
    assert result.exit_code == 0, result.output
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == ["refined", "dropped", "chunk-only", "nothing-stored"]
    assert out[0]["text"] == "\n".join(f"line {i} of a page with many words" for i in range(3, 12))
    assert out[0]["url"] == "https://example.com/a"
    assert out[0]["metadata"]["prox"]["chunk"]["removed_lines"] == [[0, 2]]
    assert out[1]["text"] == "" and out[1]["raw_content"] == BODY
    assert "chunk" not in out[1]["metadata"]["prox"]  # dropped at doc level: chunk not run
    assert out[2]["text"] == BODY.rsplit("\n", 1)[0]
    assert out[3]["text"] == BODY and all(r["raw_content"] == BODY for r in out)
    stats = json.loads((tmp_path / "out.stats.json").read_text())
    assert (stats["documents"], stats["kept"], stats["dropped"], stats["refined"]) == (4, 3, 1, 2)


def test_execute_on_its_own_output_reproduces_it(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    invoke("execute", str(source), "-o", str(tmp_path / "first.jsonl.gz"), "-q")
    invoke(
        "execute", str(tmp_path / "first.jsonl.gz"), "-o", str(tmp_path / "second.jsonl.gz"), "-q"
    )
    assert read_jsonl(tmp_path / "first.jsonl.gz") == read_jsonl(tmp_path / "second.jsonl.gz")


def test_execute_retunes_thresholds_and_stage(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    invoke(
        "execute", str(source), "-o", str(tmp_path / "a.jsonl"), "-q", "--short-doc-words", "100"
    )
    assert read_jsonl(tmp_path / "a.jsonl")[0]["text"] == ""  # 63 words <= 100
    invoke("execute", str(source), "-o", str(tmp_path / "b.jsonl"), "-q", "--stage", "chunk")
    assert read_jsonl(tmp_path / "b.jsonl")[1]["text"] == BODY  # drop_doc() not run


def test_bad_records_are_rejected_with_file_and_line_and_the_run_goes_on(tmp_path):
    source = tmp_path / "bad.jsonl"
    lines = [
        json.dumps(RECORDS[0]),
        '{"id": "no-text", "metadata": {}}',
        "{this is not json",
        json.dumps(
            {"id": "bad-program", "text": BODY, "metadata": {"doc_program": ["keep_doc()"]}}
        ),
        json.dumps({"id": "number-text", "text": 42}),
        "[1, 2]",
        json.dumps(RECORDS[3]),
    ]
    source.write_text("\n".join(lines) + "\n")
    result = invoke("execute", str(source), "-o", str(tmp_path / "out.jsonl"), "-q")
    assert result.exit_code == 0
    assert f"{source}:3: invalid JSON" in result.output  # CliRunner mixes stderr in
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["refined", "nothing-stored"]
    rejects = read_jsonl(tmp_path / "out.rejects.jsonl")
    assert sorted((r["position"], r["reason"]) for r in rejects) == [
        (2, "record has no 'text' field"),
        (
            3,
            "invalid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        (4, "refining failed: StoredProgramError: metadata.doc_program is not a string (got list)"),
        (5, "'text' is not a string (got int)"),
        (6, "record is not a JSON object (got list)"),
    ]
    assert all(r["raw"] for r in rejects)  # nothing is lost
    stats = json.loads((tmp_path / "out.stats.json").read_text())
    assert (stats["documents"], stats["rejected"]) == (2, 5)


def test_existing_output_is_refused_without_overwrite(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    assert invoke("execute", str(source), "-o", str(tmp_path / "out.jsonl"), "-q").exit_code == 0
    again = invoke("execute", str(source), "-o", str(tmp_path / "out.jsonl"), "-q")
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert (
        invoke(
            "execute", str(source), "-o", str(tmp_path / "out.jsonl"), "-q", "--overwrite"
        ).exit_code
        == 0
    )


def test_missing_input_is_a_clear_error(tmp_path):
    result = invoke("execute", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl"))
    assert result.exit_code == 2 and "no input files match" in result.output


def test_reference_mode_from_the_command_line(tmp_path):
    record = {
        "id": "q",
        "text": BODY,
        "metadata": {"chunk_program": "keep_doc() \nremove_lines(line_end=5, line_start=3)"},
    }
    source = write_jsonl(tmp_path / "in.jsonl", [record])
    invoke("execute", str(source), "-o", str(tmp_path / "s.jsonl"), "-q")
    invoke("execute", str(source), "-o", str(tmp_path / "r.jsonl"), "-q", "--mode", "reference")
    assert read_jsonl(tmp_path / "s.jsonl")[0]["metadata"]["prox"]["chunk"]["removed_lines"] == [
        [3, 5]
    ]
    assert read_jsonl(tmp_path / "r.jsonl")[0]["metadata"]["prox"]["chunk"]["removed_lines"] == []


def test_prompts_writes_one_record_per_model_call(tmp_path, llama2_dir):
    long_body = "\n".join(f"line {i} " + "text " * 60 for i in range(100))
    source = tmp_path / "in.jsonl.gz"
    with gzip.open(source, "wt") as handle:
        for record in ({"id": "short", "text": "Menu\nHello."}, {"id": "long", "text": long_body}):
            handle.write(json.dumps(record) + "\n")
    result = invoke(
        "prompts",
        str(source),
        "-o",
        str(tmp_path / "p.jsonl"),
        "--stage",
        "chunk",
        "--tokenizer",
        str(llama2_dir),
    )
    assert result.exit_code == 0, result.output
    prompts = read_jsonl(tmp_path / "p.jsonl")
    assert [(p["id"], p["chunk_index"]) for p in prompts[:2]] == [("short", 0), ("long", 0)]
    assert prompts[0]["prompt"].endswith("[doc]\n[000]Menu\n[001]Hello.\n[/doc] [/INST]")
    long_chunks = [p for p in prompts if p["id"] == "long"]
    assert len(long_chunks) > 3 and long_chunks[-1]["last_line"] == 99
    assert all(p["num_tokens"] < 1600 for p in prompts)
    invoke(
        "prompts",
        str(source),
        "-o",
        str(tmp_path / "d.jsonl"),
        "--stage",
        "doc",
        "--tokenizer",
        str(llama2_dir),
    )
    docs = read_jsonl(tmp_path / "d.jsonl")
    assert [d["truncated"] for d in docs] == [False, True] and docs[1]["num_tokens"] <= 2000


def test_every_refine_flag_reaches_the_configuration(tmp_path, monkeypatch):
    import proxkit.cli
    from proxkit.pipeline.stats import RunStats

    captured = {}

    def fake_run(config, progress=True):
        captured["config"] = config
        return RunStats(documents=1)

    monkeypatch.setattr(proxkit.cli, "run", fake_run)
    flags = {
        "--doc-keep-fraction": "0.3",
        "--batch-tokens": "123",
        "--api-key-env": "KEY",
        "--max-retries": "7",
        "--short-doc-words": "3",
        "--error-limit": "5",
        "--shard-size": "2MiB",
        "--workers": "3",
        "--doc-scoring": "generate",
        "--backend": "openai",
        "--api-base": "http://127.0.0.1:1/v1",
    }
    args = [
        "refine",
        "in.jsonl",
        "-o",
        str(tmp_path / "o"),
        "--no-constrained",
        "--stages",
        "chunk",
    ]
    result = runner.invoke(app, args + [x for pair in flags.items() for x in pair])
    assert result.exit_code == 0, result.output
    config = captured["config"]
    assert (
        config.doc_keep_fraction,
        config.batch_tokens,
        config.api_key_env,
        config.max_retries,
    ) == (0.3, 123, "KEY", 7)
    assert (config.thresholds.short_doc_words, config.thresholds.error_limit) == (3, 5)
    assert (config.shard_bytes, config.workers, config.doc_scoring, config.backend) == (
        2 * 1024**2,
        3,
        "generate",
        "openai",
    )
    assert (config.constrained, config.stages, config.inputs) == (False, ("chunk",), ("in.jsonl",))
