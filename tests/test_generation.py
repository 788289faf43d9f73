"""Generation on a tiny refining model trained at test time for both stages: proxkit's decode
loop (ended rows leave the batch; the grammar checks the model's choice first) writes exactly
what transformers' `generate` writes, token for token, without the grammar and with it (where
`generate` masks every disallowed token at every step); a batch out of GPU memory is halved;
whole refine runs (overlapped, on model replicas) give the same bytes."""

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
from proxkit.testing import generate_reference

from conftest import write_jsonl
from tiny_model import make_documents


def backend(folder, **settings) -> TransformersBackend:
    return TransformersBackend(str(folder), HFSettings(dtype="float32", **settings))


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


@pytest.mark.parametrize("trained", [True, False])
def test_the_decode_loop_writes_what_generate_writes(trained, refiner, tmp_path, llama2_dir):
    from proxkit.testing import random_llama

    folder = refiner
    if not trained:  # random weights: the grammar replaces nearly every choice
        folder = tmp_path / "random"
        random_llama(folder, llama2_dir, seed=3)
    model = backend(folder, max_batch_size=64, batch_tokens=1 << 20)
    lengths = set()
    for stage, (prompts, grammars, limit) in prompts_and_grammars(model.tokenizer, 8).items():
        prompts, grammars = prompts[:12], grammars[:12]
        for chosen in (None, grammars):
            expected = generate_reference(model, prompts, limit, chosen)
            got = model._decode(prompts, limit, chosen)
            assert got == expected, (stage, chosen is not None)
            lengths |= {len(row) for row in got}
    if trained:
        assert len(lengths) >= 3  # outputs of different lengths: rows left the batch
        assert model.counters["compactions"] > 0
    else:
        assert model.stats()["steps_corrected_by_grammar"] > 0


def test_outputs_that_hit_the_token_limit_are_marked(refiner):
    model = backend(refiner)
    prompts, _, _ = prompts_and_grammars(model.tokenizer)["chunk"]
    cut = model.generate(prompts, 3)
    assert all(c.hit_limit and c.tokens == 3 for c in cut)


def test_a_batch_out_of_gpu_memory_is_halved_and_a_lone_prompt_raises(refiner, monkeypatch):
    model = backend(refiner)
    prompts, _, limit = prompts_and_grammars(model.tokenizer)["doc"]
    expected = model.generate(prompts, limit)
    forward = model.model.forward

    def at_most_three(input_ids, **kwargs):
        if input_ids.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(input_ids=input_ids, **kwargs)

    monkeypatch.setattr(model.model, "forward", at_most_three)
    assert [c.text for c in model.generate(prompts, limit)] == [c.text for c in expected]
    splits = model.counters["oom_splits"]
    assert splits > 0 and model.stats()["oom_splits"] == splits
    monkeypatch.setattr(
        model.model, "forward", lambda **kwargs: (_ for _ in ()).throw(torch.OutOfMemoryError())
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
        backend="transformers",
        chunk_max_new_tokens=48,
        batch_size=8,
        doc_keep_fraction=0.75,  # some documents with spam lines reach the chunk stage
        dtype="float32",
        **options,
    )
    stats = run(config, progress=False)
    return gzip.decompress((tmp_path / name / "part-00000-00000.jsonl.gz").read_bytes()), stats


def test_a_refine_run_writes_the_same_programs_whatever_the_batches(refiner, tmp_path):
    """Batches of one against batches of 64 rows that leave as they end: the same programs
    and texts (keep scores differ in the last float digits, padding changes the sums)."""
    one_by_one, single_stats = refine(tmp_path, refiner, "single", max_batch_size=1)
    batched, stats = refine(tmp_path, refiner, "batched")
    records = [json.loads(line) for line in batched.splitlines()]
    alone = [json.loads(line) for line in one_by_one.splitlines()]

    def written(record):
        meta = record["metadata"]
        return record["text"], meta.get("doc_program"), meta.get("chunk_program")

    assert [written(r) for r in records] == [written(r) for r in alone]
    scores = [r["metadata"]["prox"]["doc_info"]["keep_score"] for r in records]
    assert scores == pytest.approx(
        [r["metadata"]["prox"]["doc_info"]["keep_score"] for r in alone], abs=1e-5
    )
    assert {r["metadata"]["prox"]["doc"]["outcome"] for r in records} == {"kept", "dropped"}
    assert any("remove_lines" in r["metadata"].get("chunk_program", "") for r in records)
    chunk = stats.programmers["chunk"]
    assert chunk["model_prompts"] == single_stats.programmers["chunk"]["model_prompts"] > 0
    assert sum(chunk["output_tokens"].values()) == chunk["model_prompts"]
    assert stats.programmers["model"]["busy_seconds"] > 0


def test_model_replicas_give_the_bytes_of_one(refiner, tmp_path):
    one, _ = refine(tmp_path, refiner, "one")
    two, stats = refine(tmp_path, refiner, "two", replicas=("cpu", "cpu"), threads=1)
    assert two == one
    assert stats.programmers["model"]["replicas"] == 2
    assert stats.programmers["doc"]["prompts"] == 40  # both replicas' counts, summed
