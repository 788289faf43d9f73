"""Reading ahead and finishing behind (`pipeline/overlap.py`): order kept, at most `depth`
items buffered, errors raised to the consumer, threads stopped when the consumer stops, and
a processor's batches in the same order and content as without overlap."""

from __future__ import annotations

import threading
import time

import pytest

from proxkit.io.readers import Document, Reject
from proxkit.pipeline.batch import BatchProcessor
from proxkit.pipeline.overlap import ahead, overlapped
from proxkit.programmers.rules import RulesProgrammer

from conftest import example_records


def test_ahead_keeps_order_and_buffers_at_most_depth():
    produced = []

    def numbers():
        for i in range(50):
            produced.append(i)
            yield i

    consumed = []
    for value in ahead(numbers(), depth=3, name="test"):
        time.sleep(0.002)
        # the producer is at most depth items ahead, plus the one it is putting
        assert len(produced) - len(consumed) <= 3 + 2
        consumed.append(value)
    assert consumed == list(range(50))


def test_an_error_in_the_thread_reaches_the_consumer():
    def failing():
        yield 1
        raise OSError("disk gone")

    stream = ahead(failing(), depth=2, name="test")
    assert next(stream) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(stream)


def test_a_consumer_that_stops_stops_the_threads():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    before = threading.active_count()
    stream = ahead(ahead(endless(), 2, "inner"), 2, "outer")
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    assert closed.wait(5)  # the innermost generator was closed by its own thread
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before


def test_overlapped_batches_equal_plain_ones_and_carry_the_readers_rejects():
    documents = [
        Document(r["id"], r["text"], r, "corpus", i + 1) for i, r in enumerate(example_records())
    ]
    items: list = []
    for i, document in enumerate(documents[:90]):
        items.append(document)
        if i % 25 == 0:
            items.append(Reject("corpus", i, "invalid JSON", "{"))
    batches = [items[i : i + 16] for i in range(0, len(items), 16)]
    processor = BatchProcessor(RulesProgrammer(), RulesProgrammer())
    plain = [processor(b) for b in batches]
    overlapping = list(overlapped(processor, iter(batches), depth=2))
    assert [o.records for o in overlapping] == [p.records for p in plain]
    assert [o.rejects for o in overlapping] == [p.rejects for p in plain]
    assert sum(o.stats.rejected for o in overlapping) == 4
    assert sum(o.stats.documents for o in overlapping) == 90


class LineBackend:
    """A model stand-in whose answers depend on the prompt alone: keep scores from the prompt's
    length, and each chunk's program removes its first line."""

    name = "line-model"

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def generate(self, prompts, max_new_tokens):
        import re

        from proxkit.programmers.lm import Completion

        first = [re.search(r"\[doc\]\n\[(\d+)\]", p.text) for p in prompts]
        return [
            Completion(f"remove_lines(line_start={int(m[1])}, line_end={int(m[1])})") for m in first
        ]

    def next_token_logprobs(self, prompts, candidates):
        return [[0.0, -1.0] if len(p.token_ids) % 3 else [-1.0, 0.0] for p in prompts]


def _model_batches(llama2_dir):
    from proxkit.programmers.lm import LMProgrammer
    from proxkit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(llama2_dir))
    programmer = LMProgrammer(  # the stand-in keeps no grammar: a constrained one is refused
        LineBackend(tokenizer), max_chunk_tokens=300, max_doc_tokens=400, constrained=False
    )
    documents = [
        Document(r["id"], r["text"], r, "corpus", i + 1)
        for i, r in enumerate(example_records()[:48])
    ]
    items: list = [*documents[:20], Reject("corpus", 21, "invalid JSON", "{"), *documents[20:]]
    return programmer, [items[i : i + 12] for i in range(0, len(items), 12)]


def test_prompt_workers_give_the_batches_of_a_run_without_them(llama2_dir):
    programmer, batches = _model_batches(llama2_dir)
    processor = BatchProcessor(programmer, programmer)
    plain = [processor(b) for b in batches]
    assert sum(o.stats.refined for o in plain) > 5  # the stand-in's programs change documents
    with_workers = list(overlapped(processor, iter(batches), depth=2, workers=2))
    assert [o.records for o in with_workers] == [p.records for p in plain]
    assert [o.rejects for o in with_workers] == [p.rejects for p in plain]
    assert sum(o.stats.prompt_worker_fallbacks for o in with_workers) == 0


def test_the_prompt_builder_builds_what_the_programmer_builds_itself(llama2_dir):
    from proxkit.programmers.lm import chunk_inputs
    from proxkit.prompts import doc_prompts

    programmer, batches = _model_batches(llama2_dir)
    texts = [d.text for d in batches[0] if isinstance(d, Document)]
    built = programmer.prompt_builder(("doc", "chunk"))(texts)
    assert built["doc"] == doc_prompts(texts, programmer.tokenizer, 400)
    assert built["chunk"] == chunk_inputs(texts, programmer.tokenizer, programmer.chunker)
    assert programmer.prompt_builder(("chunk",))(texts).keys() == {"chunk"}


def test_a_failing_prompt_worker_leaves_the_batch_to_the_model_process(llama2_dir, capfd):
    programmer, batches = _model_batches(llama2_dir)
    processor = BatchProcessor(programmer, programmer)
    plain = [processor(b) for b in batches]
    programmer.__dict__["tokenizer_fingerprint"] = "not the model's"  # workers refuse to build
    with_workers = list(overlapped(processor, iter(batches), depth=2, workers=1))
    assert [o.records for o in with_workers] == [p.records for p in plain]
    # every batch's prompts were built in the model's process, and counted
    assert [o.stats.prompt_worker_fallbacks for o in with_workers] == [1] * len(batches)
    warnings = capfd.readouterr().err
    assert "prompt worker failed (RuntimeError: tokenizer" in warnings
    assert warnings.count("prompt worker failed") == 1


def test_prompt_workers_run_for_models_on_a_gpu_only_unless_set():
    from proxkit.pipeline.overlap import prompt_workers

    assert prompt_workers(None, "cpu") == 0 and prompt_workers(None, None) == 0
    assert 0 <= prompt_workers(None, "cuda:0") <= 8
    assert prompt_workers(3, "cpu") == 3 and prompt_workers(0, "cuda") == 0
