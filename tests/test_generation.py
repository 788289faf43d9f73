"""Generation paths on a tiny refining model trained at test time for both stages: continuous
batching writes exactly what static batches write, token for token, with and without the
grammar; a batch out of GPU memory is halved; whole refine runs (overlapped, on model
replicas) give the same bytes whichever path and however many replicas."""

from __future__ import annotations

import gzip
import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch

from proxkit.chunking import Chunker, chunk_content
from proxkit.config import RefineConfig
from proxkit.programmers.grammar import ProgramGrammar
from proxkit.programmers.hf import HFSettings, TransformersBackend
from proxkit.prompts import chunk_prompts, doc_prompts

from conftest import write_jsonl
from tiny_model import make_documents


def backend(folder, generation: str) -> TransformersBackend:
    return TransformersBackend(str(folder), HFSettings(dtype="float32", generation=generation))


def prompts_and_grammars(tokenizer, count: int = 20):
    texts = [text for text, _ in make_documents(count, seed=7)]
    chunks = [c for doc in Chunker(tokenizer.backend)(texts) for c in doc]
    grammars = [
        ProgramGrammar("chunk", c.first_line, c.last_line, chunk_content(c.text)) for c in chunks
    ]
    return {
        "doc": (doc_prompts(texts, tokenizer), [ProgramGrammar("doc")] * len(texts), 8),
        "chunk": (chunk_prompts(chunks, tokenizer), grammars, 48),
    }


def test_continuous_batching_writes_what_static_batches_write(refiner):
    static, continuous = backend(refiner, "static"), backend(refiner, "continuous")
    lengths = set()
    for stage, (prompts, grammars, limit) in prompts_and_grammars(static.tokenizer).items():
        free = static.generate(prompts, limit)
        for chosen in (None, grammars):
            expected = static.generate(prompts, limit, chosen)
            got = continuous.generate(prompts, limit, chosen)
            assert [(c.text, c.tokens, c.hit_limit) for c in got] == [
                (c.text, c.tokens, c.hit_limit) for c in expected
            ], (stage, chosen is not None)
            lengths |= {c.tokens for c in expected}
        # Redone under the grammar: exactly the outputs that free decoding wrote outside it.
        outside = [(f.text, f.tokens) != (e.text, e.tokens) for f, e in zip(free, expected)]
        assert [c.regenerated for c in got] == outside
        assert sum(outside) < len(outside) / 2  # the model learned the task
    assert continuous.continuous_stopped is None
    assert len(lengths) >= 3  # outputs of different lengths: the case continuous batching is for
    continuous.close()


def test_outputs_that_hit_the_token_limit_are_marked(refiner):
    model = backend(refiner, "continuous")
    prompts, _, _ = prompts_and_grammars(model.tokenizer)["chunk"]
    cut = model.generate(prompts, 3)
    assert all(c.hit_limit and c.tokens == 3 for c in cut)
    model.close()


def test_a_batch_out_of_gpu_memory_is_halved_and_a_lone_prompt_raises(refiner, monkeypatch):
    model = backend(refiner, "static")
    prompts, _, limit = prompts_and_grammars(model.tokenizer)["doc"]
    expected = model.generate(prompts, limit)
    generate = model.model.generate

    def at_most_three(input_ids, **kwargs):
        if input_ids.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return generate(input_ids=input_ids, **kwargs)

    monkeypatch.setattr(model.model, "generate", at_most_three)
    assert [c.text for c in model.generate(prompts, limit)] == [c.text for c in expected]
    assert model.oom_splits > 0 and model.stats()["oom_splits"] == model.oom_splits
    monkeypatch.setattr(
        model.model, "generate", lambda **kwargs: (_ for _ in ()).throw(torch.OutOfMemoryError())
    )
    with pytest.raises(torch.OutOfMemoryError):
        model.generate(prompts[:1], limit)


def refine(tmp_path, folder, name: str, **options) -> tuple[bytes, dict]:
    from proxkit.pipeline.run import run

    source = tmp_path / "in.jsonl"
    if not source.exists():
        records = [{"id": str(i), "text": t} for i, (t, _) in enumerate(make_documents(40, 3))]
        write_jsonl(source, records)
    config = RefineConfig(
        inputs=(str(source),),
        output=str(tmp_path / name),
        doc_programmer=str(folder),
        chunk_programmer=str(folder),
        chunk_max_new_tokens=48,
        batch_size=8,
        doc_keep_fraction=0.75,  # some documents with spam lines reach the chunk stage
        dtype="float32",
        **options,
    )
    stats = run(config, progress=False)
    return gzip.decompress((tmp_path / name / "part-00000-00000.jsonl.gz").read_bytes()), stats


@pytest.fixture(scope="module")
def static_run(refiner, tmp_path_factory) -> tuple[bytes, dict]:
    """One refine run with static batches, one process: what every other path must write."""
    return refine(tmp_path_factory.mktemp("runs"), refiner, "static", generation="static")


def test_a_refine_run_gives_the_same_bytes_on_every_path(refiner, static_run, tmp_path):
    static, static_stats = static_run
    continuous, stats = refine(tmp_path, refiner, "continuous", generation="continuous")
    assert continuous == static
    records = [json.loads(line) for line in static.splitlines()]
    assert {r["metadata"]["prox"]["doc"]["outcome"] for r in records} == {"kept", "dropped"}
    assert any("remove_lines" in r["metadata"].get("chunk_program", "") for r in records)
    chunk = stats.programmers["chunk"]
    assert chunk["model_prompts"] == static_stats.programmers["chunk"]["model_prompts"] > 0
    assert sum(chunk["output_tokens"].values()) == chunk["model_prompts"]
    assert stats.programmers["model"]["generation"] == "continuous"
    assert stats.programmers["model"]["busy_seconds"] > 0


def test_model_replicas_give_the_bytes_of_one(refiner, static_run, tmp_path):
    one, _ = static_run
    two, stats = refine(
        tmp_path, refiner, "two", generation="static", replicas=("cpu", "cpu"), threads=1
    )
    assert two == one
    assert stats.programmers["model"]["replicas"] == 2
    assert stats.programmers["doc"]["prompts"] == 40  # both replicas' counts, summed
