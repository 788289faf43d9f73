"""The local engine: batches refined on this machine.

- Rules and stored programs: worker processes, one per core (`--workers`), at most two
  batches per worker in flight, results in input order.
- A model: loaded once, in this process (on `--device`, or the one device of `--gpus`), with
  reading and prompt building ahead (in worker processes on a GPU machine) and executing and
  writing behind the model's work (`overlap.py`).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from proxkit.config import RefineConfig
from proxkit.pipeline.batch import (
    BatchOutput,
    Item,
    build_processor,
    close_programmers,
    model_device,
    programmer_stats,
    uses_models,
)
from proxkit.pipeline.overlap import overlapped, prompt_workers
from proxkit.pipeline.workers import signals_held, stop_pool, worker_pool


def map_ordered(
    function: Callable[[list[Item]], BatchOutput],
    batches: Iterator[list[Item]],
    pool: ProcessPoolExecutor | None,
    workers: int,
) -> Iterator[BatchOutput]:
    """Results in input order, with at most 2 batches per worker in flight."""
    if pool is None:
        yield from map(function, batches)
        return
    pending: deque[Future[BatchOutput]] = deque()

    def submit(batch: list[Item]) -> None:
        with signals_held():  # a submission may start a worker process
            pending.append(pool.submit(function, batch))

    for batch in itertools.islice(batches, 2 * workers):
        submit(batch)
    while pending:
        result = pending.popleft().result()
        for batch in itertools.islice(batches, 1):
            submit(batch)
        yield result


class LocalEngine:
    def __init__(self, config: RefineConfig) -> None:
        self.model = uses_models(config)
        if self.model and len(config.replicas) == 1:
            config = dataclasses.replace(config, device=config.replicas[0])
        self.processor = build_processor(config)
        self.workers = 1 if self.model else config.workers or os.cpu_count() or 1
        self.prompt_workers = prompt_workers(config.prompt_workers, model_device(self.processor))
        self.pool = worker_pool(self.workers) if self.workers > 1 else None

    def map_batches(self, batches: Iterator[list[Item]]) -> Iterator[BatchOutput]:
        if self.model:
            return overlapped(self.processor, batches, workers=self.prompt_workers)
        return map_ordered(self.processor, batches, self.pool, self.workers)

    def programmer_stats(self) -> dict[str, Any]:
        return programmer_stats(self.processor)

    def close(self, abort: bool = False) -> None:
        if self.pool is not None:
            stop_pool(self.pool, abort)
        close_programmers(self.processor)
