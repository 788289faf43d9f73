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
