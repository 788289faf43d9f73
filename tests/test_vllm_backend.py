"""The vLLM backend on vLLM's CPU build (or a GPU), against the transformers backend on the
same weights: greedy programs token for token (both stages, with and without the grammar,
fp32), keep scores within 1e-4, the program cache, a refused request, whole `prox refine`
runs (one engine, two replicas, killed and resumed). Skipped cleanly where vLLM is not
installed; one engine serves the module (an engine takes tens of seconds to start on CPU)."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("vllm")

from proxkit.io.readers import Document
from proxkit.pipeline.batch import BatchProcessor, model_device
from proxkit.pipeline.overlap import overlapped
from proxkit.programmers.hf import HFSettings, TransformersBackend
from proxkit.programmers.lm import DocScoring, LMProgrammer
from proxkit.programmers.vllm import VLLMBackend, VLLMSettings, cores_text, device_name

from conftest import write_jsonl
from tiny_model import make_documents

# One worker runs every vLLM test: an engine per module, and no two engines at once on the cores.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vllm")]
# Tests start engines without compiling (start-up in seconds, not a minute) and with a small
# KV cache; the compiled engine is measured by bench/bench_engines.py.
SETTINGS = VLLMSettings(dtype="float32", compile=False, kv_cache_gib=1)
ENGINE_FLAGS = ["--backend", "vllm", "--dtype", "float32", "--no-compile", "--kv-cache-gib", "1"]


@pytest.fixture(scope="module")
def engines(vllm_refiner):
    vllm = VLLMBackend(str(vllm_refiner), SETTINGS)
    yield vllm, TransformersBackend(str(vllm_refiner), HFSettings(dtype="float32"))
    vllm.close()


def documents(count: int, seed: int = 3) -> list[Document]:
    return [
        Document(str(i), text, {}, "mem", i)
        for i, (text, _) in enumerate(make_documents(count, seed))
    ]


def test_cores_text():
    assert cores_text([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8" and cores_text([3]) == "3"


def test_the_engine_names_its_device_as_runners_read_it():
    assert device_name("auto", on_cpu=True) == "cpu" and device_name("cpu", on_cpu=True) == "cpu"
    assert device_name("auto", on_cpu=False) == "cuda"  # a GPU: prompt workers by default
    assert device_name("cuda:1", on_cpu=False) == "cuda:1"


def test_prompt_workers_feed_the_engine_what_it_builds_itself(engines):
    """Prompts built in a worker process reach vLLM as they would from the model's process:
    the same records, batch for batch (fresh program caches, so the engine writes both)."""
    vllm, _ = engines
    batches = [documents(24)[i : i + 8] for i in range(0, 24, 8)]

    def processor() -> BatchProcessor:
        programmer = LMProgrammer(vllm, DocScoring(keep_fraction=0.75), chunk_max_new_tokens=40)
        return BatchProcessor(programmer, programmer)

    alone = processor()
    plain = [alone(batch) for batch in batches]
    assert model_device(alone) == "cpu"
    sent = vllm.counters["requests"]
    built_apart = list(overlapped(processor(), iter(batches), workers=1))
    assert vllm.counters["requests"] > sent
    assert [o.records for o in built_apart] == [p.records for p in plain]
    assert sum(o.stats.prompt_worker_fallbacks for o in built_apart) == 0
    assert any(r["metadata"].get("chunk_program") for o in plain for r in o.records)


@pytest.mark.parametrize("constrained", [True, False])
def test_vllm_writes_the_programs_transformers_writes(engines, constrained):
    vllm, hf = engines
    docs = documents(24)
    for scoring in ("forward", "generate"):
        ours = LMProgrammer(vllm, DocScoring(scoring), constrained=constrained)
        reference = LMProgrammer(hf, DocScoring(scoring), constrained=constrained)
        for stage in ("doc", "chunk"):
            got, expected = ours.write(stage, docs), reference.write(stage, docs)
            assert [w.program for w in got] == [w.program for w in expected], (stage, scoring)
            if stage == "doc" and scoring == "forward":
                scores = [w.info["keep_score"] for w in got]
                assert scores == pytest.approx([w.info["keep_score"] for w in expected], abs=1e-4)
        chunk_programs = [w.program for w in got]
    assert any("remove_lines" in p for p in chunk_programs)  # the model learned the task


def test_exact_keep_scores_even_for_answers_outside_the_top_tokens(engines, llama2_dir, tmp_path):
    """Log-probabilities of exactly the asked tokens, not a top-k list with a floor."""
    vllm, hf = engines
    from proxkit.prompts import doc_prompts

    prompts = doc_prompts([text for text, _ in make_documents(6, 1)], vllm.tokenizer)
    rare = [31999, 17, 5000]  # tokens a trained model puts far below its top 20
    got, expected = vllm.next_token_logprobs(prompts, rare), hf.next_token_logprobs(prompts, rare)
    assert [v for row in got for v in row] == pytest.approx(
        [v for row in expected for v in row], abs=1e-4
    )


def test_the_program_cache_sends_each_prompt_once(engines):
    vllm, _ = engines
    programmer = LMProgrammer(vllm)
    docs = documents(8)
    first = programmer.write("chunk", docs)
    sent = vllm.counters["requests"]
    again = programmer.write("chunk", docs + docs)
    assert vllm.counters["requests"] == sent  # every prompt came from the cache
    assert [w.program for w in again] == [w.program for w in first] * 2
    assert programmer.stats("chunk")["cache_hits"] >= len(docs) * 2


def test_a_request_vllm_refuses_leaves_its_document_unrefined(engines):
    vllm, _ = engines
    programmer = LMProgrammer(vllm, max_chunk_tokens=8000)
    too_long = Document("long", " ".join(["word"] * 6000), {}, "mem", 0)  # > 4096 positions
    written = programmer.write("chunk", [*documents(2), too_long])
    assert written[0].program and written[1].program
    assert written[2].program is None and "refused" in written[2].info["failed"]
    assert vllm.stats()["refused_requests"] >= 1


def refine(tmp_path: Path, model: Path, name: str, *flags: str) -> subprocess.Popen:
    corpus = tmp_path / "corpus"
    if not corpus.exists():
        corpus.mkdir()
        records = [{"id": str(i), "text": t} for i, (t, _) in enumerate(make_documents(48, 5))]
        for part in range(3):  # three work units
            write_jsonl(corpus / f"part-{part}.jsonl", records[part * 16 : (part + 1) * 16])
    command = [
        sys.executable, "-m", "proxkit.cli", "refine", str(corpus), "-o", str(tmp_path / name),
        "--doc-programmer", str(model), "--chunk-programmer", str(model),
        "--batch-size", "8", "--doc-keep-fraction", "0.75", "--chunk-max-new-tokens", "40",
        "-q", *flags,
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, err[-3000:]
    return out


def records(output: Path) -> list[dict]:
    rows = []
    for shard in sorted(output.glob("part-*")):
        rows += [json.loads(line) for line in gzip.decompress(shard.read_bytes()).splitlines()]
    return rows


def test_auto_takes_vllm_where_it_is_installed_for_the_device():
    from vllm.platforms import current_platform

    from proxkit.programmers import pick_backend

    assert pick_backend("auto", api_base="http://127.0.0.1:8000/v1") == "openai"
    assert pick_backend("transformers", "cpu") == "transformers"
    if current_platform.is_cpu():  # vLLM's CPU build
        assert pick_backend("auto") == pick_backend("auto", "cpu") == "vllm"
        assert pick_backend("auto", "cuda") == "transformers"
    else:
        assert pick_backend("auto", "cpu") == "transformers"


def shard_bytes(output: Path) -> dict[str, bytes]:
    return {p.name: gzip.decompress(p.read_bytes()) for p in sorted(output.glob("part-*"))}


def test_refine_runs_one_engine_two_replicas_and_resumes_after_a_kill(vllm_refiner, tmp_path):
    refiner = vllm_refiner
    hf = refine(
        tmp_path, refiner, "transformers", "--backend", "transformers", "--dtype", "float32"
    )
    finished(hf)
    one = refine(tmp_path, refiner, "vllm", *ENGINE_FLAGS)
    summary = finished(one)
    assert "prox refine" in summary

    def written(record):
        meta = record["metadata"]
        return record["text"], meta.get("doc_program"), meta.get("chunk_program")

    expected = records(tmp_path / "transformers")
    assert [written(r) for r in records(tmp_path / "vllm")] == [written(r) for r in expected]
    stats = json.loads((tmp_path / "vllm" / "stats.json").read_text())
    assert stats["programmers"]["model"]["engine"] == "vllm"

    two = refine(tmp_path, refiner, "replicas", *ENGINE_FLAGS, "--replicas", "cpu,cpu")
    finished(two)
    assert shard_bytes(tmp_path / "replicas") == shard_bytes(tmp_path / "vllm")

    killed = refine(tmp_path, refiner, "killed", *ENGINE_FLAGS)
    done = tmp_path / "killed" / "_prox" / "done"
    deadline = time.monotonic() + 600
    while not (done.is_dir() and any(done.iterdir())) and time.monotonic() < deadline:
        assert killed.poll() is None, killed.communicate()[1][-3000:]
        time.sleep(0.2)
    os.kill(killed.pid, signal.SIGKILL)  # one unit finished, the others not
    killed.communicate()
    assert len(list(done.iterdir())) < 3
    finished(refine(tmp_path, refiner, "killed", *ENGINE_FLAGS))
    assert shard_bytes(tmp_path / "killed") == shard_bytes(tmp_path / "vllm")
