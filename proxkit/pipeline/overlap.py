"""Keep a model busy: read ahead, start batches on the model, finish them behind.

A model run in one process is split over three threads, each feeding the next through a
queue of at most `depth` batches, so memory stays bounded however long the corpus:
- the reader decompresses and parses the next batches;
- the starter runs each batch's doc stage and has the model write its chunk programs
  (`BatchProcessor.start`);
- the caller's thread waits for each batch's programs, in order, executes them and writes
  (`BatchProcessor.finish`).
So chunking, prompt building and tokenizing of the next batch, and executing and writing of
the last, happen while the model works. Results come out in input order, batch for batch the
same as a run without overlap, so resume and exactly-once output are unchanged.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from proxkit.pipeline.batch import BatchOutput, BatchProcessor, Item

T = TypeVar("T")
_DONE = object()


def ahead(items: Iterator[T], depth: int, name: str) -> Iterator[T]:
    """`items`, computed in a thread up to `depth` ahead of the consumer. An exception in the
    thread is raised to the consumer; a consumer that stops early stops the thread."""
    buffer: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                buffer.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as exc:
            put((_DONE, exc))
        finally:
            close: Callable[[], None] | None = getattr(items, "close", None)
            if close is not None:
                close()  # an upstream `ahead` stops its own thread

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()


def overlapped(
    processor: BatchProcessor, batches: Iterator[list[Item]], depth: int = 2
) -> Iterator[BatchOutput]:
    """`processor` over `batches`, in order, with reading and starting done ahead."""
    read = ahead(batches, depth, "prox-read")

    def start_all() -> Iterator:
        try:
            for batch in read:
                yield processor.start(batch)
        finally:
            read.close()  # type: ignore[attr-defined]

    started = ahead(start_all(), depth, "prox-start")
    try:
        for batch in started:
            yield processor.finish(batch)
    finally:
        close = getattr(started, "close", None)
        if close is not None:
            close()
