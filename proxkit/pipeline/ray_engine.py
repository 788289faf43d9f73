"""The Ray engine (`--engine ray`, extra `[ray]`): the same batches through Ray Data.

The runner's units, completion records, readers and writers stay as they are; only "refine
these batches, in order" runs on the cluster. Batches go through `Dataset.map_batches` a window
at a time, with order preserved: as tasks for CPU programmers (rules, stored programs), as an
actor pool for model programmers, each actor loading the model once (with GPUs if asked).
Documents and results cross the cluster pickled: they are proxkit's own dataclasses, never
model output. Because batches are the same as in a local run, so are the output records.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from typing import Any

from proxkit.config import RefineConfig
from proxkit.pipeline.batch import BatchOutput, BatchProcessor, Item, build_processor, uses_models


def _refine_task(rows: dict[str, Any], processor: BatchProcessor) -> dict[str, list[bytes]]:
    return {"output": [pickle.dumps(processor(pickle.loads(b))) for b in rows["batch"]]}


class _RefineActor:
    """Holds the programmers (a model, loaded once per actor) for many batches."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.processor = build_processor(RefineConfig.from_dict(config))

    def __call__(self, rows: dict[str, Any]) -> dict[str, list[bytes]]:
        return _refine_task(rows, self.processor)


class RayEngine:
    def __init__(self, config: RefineConfig) -> None:
        try:
            import ray
        except ImportError as exc:
            raise RuntimeError("--engine ray needs Ray: pip install 'proxkit[ray]'") from exc
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            ray.init(
                address=config.ray_address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        self.config = config
        self.models = uses_models(config)
        # Models are loaded by the cluster's actors, never by this driver.
        self.processor = None if self.models else build_processor(config)
        cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        self.window = max(4, 4 * cpus)  # batches in flight through one Ray Data execution

    def map_batches(self, batches: Iterator[list[Item]]) -> Iterator[BatchOutput]:
        import itertools

        while window := list(itertools.islice(batches, self.window)):
            dataset = self.ray.data.from_items(
                [{"batch": pickle.dumps(b)} for b in window], override_num_blocks=len(window)
            )
            if self.models:
                # The driver's processor holds no model for the cluster; actors build their own.
                refined = dataset.map_batches(
                    _RefineActor,
                    fn_constructor_kwargs={"config": self.config.to_dict()},
                    batch_size=1,
                    concurrency=self.config.ray_actors,
                    num_gpus=self.config.ray_gpus_per_actor,
                )
            else:
                refined = dataset.map_batches(
                    _refine_task, fn_kwargs={"processor": self.processor}, batch_size=1
                )
            for row in refined.iter_rows():
                yield pickle.loads(row["output"])

    def programmer_stats(self) -> dict[str, Any]:
        return {}  # counted in the actors and tasks, which keep them

    def close(self, abort: bool = False) -> None:
        if self.started:
            self.ray.shutdown()
