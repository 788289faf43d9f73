"""Model programmers on a tiny Llama model trained at test time, loaded from disk like a
released checkpoint: one-pass doc scoring against greedy generation, batching, refine."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from proxkit.config import RefineConfig
from proxkit.io.readers import Document
from proxkit.pipeline.batch import build_processor
from proxkit.pipeline.run import run
from proxkit.programmers import make_programmer
from proxkit.programmers.hf import HFSettings, ModelNotFound, TransformersBackend
from proxkit.programmers.lm import DocScoring, LMProgrammer
from proxkit.prompts import doc_prompts

from tiny_model import make_documents

# Exact comparisons need fp32 (the default on a GPU is bfloat16).
FP32 = HFSettings(dtype="float32")
# The transformers backend by name (`auto` takes vLLM where it is installed).
TRANSFORMERS = RefineConfig(backend="transformers")


@pytest.fixture(scope="session")
def trained_model(tiny_model):
    return tiny_model(120)


@pytest.fixture(scope="session")
def undecided_model(tiny_model):
    """Trained so little that keep and drop are nearly tied: the hard case for the scorer."""
    return tiny_model(40)


def documents(count: int = 24, seed: int = 99) -> tuple[list[Document], list[bool]]:
    pairs = make_documents(count, seed)
    return [
        Document(str(i), text, {"text": text}, "mem", i + 1) for i, (text, _) in enumerate(pairs)
    ], [k for _, k in pairs]


@pytest.mark.parametrize("model", ["trained_model", "undecided_model"])
def test_one_pass_doc_level_picks_what_greedy_generation_writes(model, request):
    backend = TransformersBackend(str(request.getfixturevalue(model)))
    docs, _ = documents()
    generated = LMProgrammer(backend, DocScoring("generate")).write("doc", docs)
    scored = LMProgrammer(backend, DocScoring("forward")).write("doc", docs)
    assert all(w.program in ("keep_doc()", "drop_doc()") for w in generated)
    assert [w.program for w in scored] == [w.program for w in generated]
    assert all(0.0 < w.info["keep_score"] < 1.0 for w in scored)


def test_the_trained_model_learned_the_task_and_scores_are_confident(trained_model):
    docs, keep = documents()
    scored = LMProgrammer(TransformersBackend(str(trained_model))).write("doc", docs)
    assert [w.program == "keep_doc()" for w in scored] == keep
    assert all((w.info["keep_score"] > 0.9) == k for w, k in zip(scored, keep))


def test_threshold_and_keep_fraction(undecided_model):
    backend = TransformersBackend(str(undecided_model))
    docs, _ = documents(20)
    scores = [w.info["keep_score"] for w in LMProgrammer(backend).write("doc", docs)]
    strict = LMProgrammer(backend, DocScoring(keep_threshold=1.0)).write("doc", docs)
    assert all(w.program == "drop_doc()" for w in strict)
    fraction = LMProgrammer(backend, DocScoring(keep_fraction=0.25)).write("doc", docs)
    kept = [i for i, w in enumerate(fraction) if w.program == "keep_doc()"]
    assert len(kept) == 5 and sorted(kept) == sorted(
        sorted(range(20), key=lambda i: -scores[i])[:5]
    )


def test_batched_results_equal_one_at_a_time_in_input_order(trained_model):
    backend = TransformersBackend(str(trained_model), FP32)
    docs, _ = documents(9)
    texts = [d.text * (1 + i % 3) for i, d in enumerate(docs)]  # different lengths: padding
    prompts = doc_prompts(texts, backend.tokenizer)
    batched = backend.generate(prompts, 8)
    assert batched == [backend.generate([p], 8)[0] for p in prompts]
    together = backend.next_token_logprobs(prompts, [1, 2, 3])
    for prompt, row in zip(prompts, together):
        single = backend.next_token_logprobs([prompt], [1, 2, 3])[0]
        assert row == pytest.approx(single, rel=1e-4, abs=1e-4)  # GPU kernels differ by batch


def test_compiled_scoring_gives_the_eager_log_probs(trained_model):
    eager = TransformersBackend(str(trained_model), FP32)
    compiled = TransformersBackend(str(trained_model), HFSettings(dtype="float32", compile=True))
    docs, _ = documents(6)
    prompts = doc_prompts([d.text * (1 + i % 2) for i, d in enumerate(docs)], eager.tokenizer)
    expected = eager.next_token_logprobs(prompts, [1, 2, 3])
    for got, want in zip(compiled.next_token_logprobs(prompts, [1, 2, 3]), expected):
        assert got == pytest.approx(want, abs=1e-3)


def test_refine_with_a_model_folder(trained_model, tmp_path):
    docs, keep = documents(16)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in docs))
    config = RefineConfig(
        inputs=(str(source),),
        output=str(tmp_path / "out"),
        doc_programmer=str(trained_model),
        chunk_programmer=str(trained_model),
        backend="transformers",
        chunk_max_new_tokens=8,
        output_format="jsonl",
    )
    stats = run(config, progress=False)
    records = [
        json.loads(line)
        for line in (tmp_path / "out" / "part-00000-00000.jsonl").read_text().splitlines()
    ]
    assert [r["id"] for r in records] == [d.id for d in docs]
    assert [r["metadata"]["doc_program"] == "keep_doc()" for r in records] == keep
    assert all("keep_score" in r["metadata"]["prox"]["doc_info"] for r in records)
    kept = [r for r in records if r["metadata"]["doc_program"] == "keep_doc()"]
    assert all("chunk_program" in r["metadata"] for r in kept)
    assert stats.programmers["chunk"]["prompts"] == len(kept)
    assert stats.programmers["doc"]["prompts"] == 16
    assert stats.documents == 16
    processor = build_processor(config)  # one model for both stages, loaded once
    assert processor.doc_programmer is processor.chunk_programmer


def test_program_cache_sends_each_distinct_prompt_once(trained_model):
    docs, _ = documents(6)
    duplicated = docs + [Document(f"copy{d.id}", d.text, {}, "mem", 0) for d in docs]
    programmer = LMProgrammer(TransformersBackend(str(trained_model)), DocScoring("generate"))
    first = programmer.write("doc", duplicated)
    stats = programmer.stats("doc")
    assert {k: stats[k] for k in ("prompts", "cache_hits", "cache_hit_rate", "model_prompts")} == {
        "prompts": 12,
        "cache_hits": 6,
        "cache_hit_rate": 0.5,
        "model_prompts": 6,
    }
    # " keep_doc() " and " drop_doc() " are 5 tokens each with Llama-2's vocabulary; then EOS
    assert stats["output_tokens"] == {5: 6} and stats["generated_tokens"] == 30
    assert stats["outputs_at_token_limit"] == 0
    assert [w.program for w in first[:6]] == [w.program for w in first[6:]]
    programmer.write("doc", docs)
    assert programmer.stats("doc")["cache_hits"] == 12
    assert programmer.stats("chunk")["prompts"] == 0


def test_a_missing_model_says_how_to_pass_a_local_folder_or_use_rules(tmp_path):
    with pytest.raises(ModelNotFound, match=r"pass its local folder.*--doc-programmer rules"):
        make_programmer("gair-prox/web-doc-refining-lm", TRANSFORMERS)
    with pytest.raises(ModelNotFound):
        make_programmer(str(tmp_path), TRANSFORMERS)  # a folder without a model
