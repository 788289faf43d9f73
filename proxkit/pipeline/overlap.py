"""Keep a model busy: read and build prompts ahead, start batches on the model, finish behind.

A model run in one process is split over three threads, each feeding the next through a
queue of at most `depth` batches, so memory stays bounded however long the corpus:
- the reader decompresses and parses the next batches, and hands each batch's texts to the
  prompt workers (`workers` processes), which build its doc prompts, chunks and chunk prompts
  (`BatchProcessor.prompt_builder`);
- the starter runs each batch's doc stage and has the model write its chunk programs
  (`BatchProcessor.start`);
- the caller's thread waits for each batch's programs, in order, executes them and writes
  (`BatchProcessor.finish`).
So reading, chunking and tokenizing of the next batches, and executing and writing of the
last, happen while the model works. Prompt building runs in processes because in a thread it
would hold the interpreter lock the model's thread needs to launch its work (measured in
`bench/bench_model_path.py`); the workers build the chunk inputs of every document of a batch
before the doc stage has dropped any, which costs spare cores, not the model's time. Without
workers (and on a CPU, where the model uses the cores) the starter builds them itself. If a
worker fails, the starter builds that batch and every later one itself (said once), so errors
are handled document by document as without workers. Results come out in input order, batch for batch the
same as a run without overlap, so resume and exactly-once output are unchanged.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from proxkit.io.readers import Document
from proxkit.pipeline.batch import BatchOutput, BatchProcessor, Item
from proxkit.pipeline.records import original_text
from proxkit.pipeline.workers import signals_held, stop_pool, worker_pool

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


def prompt_workers(configured: int | None, device: str | None) -> int:
    """Prompt worker processes: as configured, else with a model on a GPU one per core but two
    (the model's thread and the writer's), at most 8; none with a model on the CPU."""
    if configured is not None:
        return configured
    if device is None or not device.startswith("cuda"):
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 2))


def overlapped(
    processor: BatchProcessor, batches: Iterator[list[Item]], depth: int = 2, workers: int = 0
) -> Iterator[BatchOutput]:
    """`processor` over `batches`, in order, with reading, prompt building (in `workers`
    processes) and starting done ahead."""
    build = processor.prompt_builder() if workers else None
    pool = worker_pool(workers) if build is not None else None
    failed = threading.Event()  # a worker failed: the model's process builds from then on

    def read_all() -> Iterator[tuple[list[Item], Future | None, bool]]:
        """Each batch, its inputs being built, and whether workers were to build them."""
        for batch in batches:
            texts = [original_text(item) for item in batch if isinstance(item, Document)]
            wanted = pool is not None and bool(texts)
            if not wanted or failed.is_set():
                yield batch, None, wanted
                continue
            with signals_held():  # a submission may start a worker process
                built = pool.submit(build, texts)
            yield batch, built, wanted

    read = ahead(read_all(), depth + workers, "prox-read")

    def start_all() -> Iterator:
        try:
            for batch, built, wanted in read:
                prepared = _result(built, failed)
                yield processor.start(batch, prepared), wanted and prepared is None
        finally:
            read.close()  # type: ignore[attr-defined]

    started = ahead(start_all(), depth, "prox-start")
    finished = False
    try:
        for batch, fell_back in started:
            output = processor.finish(batch)
            output.stats.prompt_worker_fallbacks += fell_back
            yield output
        finished = True
    finally:
        close = getattr(started, "close", None)
        if close is not None:
            close()
        if pool is not None:
            stop_pool(pool, abort=not finished)


def _result(built: Future | None, failed: threading.Event) -> dict[str, list] | None:
    """A batch's inputs from the prompt workers; None (the starter builds them) if they
    failed, and after a first failure, said once, every later batch's too."""
    if built is None or failed.is_set():
        return None
    try:
        return built.result()
    except Exception as exc:
        failed.set()
        print(
            f"warning: prompt worker failed ({type(exc).__name__}: {exc}); "
            "prompts are built in the model's process from now on",
            file=sys.stderr,
        )
        return None
