"""The replica engine: one model process per device on this node (`--gpus 0,1`).

Each replica is a spawned process that loads the model on its own device (`cuda:1`, or `cpu`
with its share of the cores) and refines the batches it is sent with reading and writing
overlapped (`overlap.py`). This process reads, sends each batch to the replica with the fewest
batches in flight, and yields the outputs in input order, so the output is byte for byte that
of one replica: the batches are the same, only where they run differs.

A replica that fails to load its model stops the run before any work is sent; a replica that
dies during the run (a driver error, the OOM killer) is named with its device and stops the
run with the unit unfinished, so re-running the command resumes it. Replicas end with this
process, however it ends (`workers.py`).
"""

from __future__ import annotations

import dataclasses
import os
import queue
from collections import Counter, deque
from collections.abc import Iterator
from multiprocessing import get_context
from typing import Any

from proxkit.config import RefineConfig
from proxkit.pipeline.batch import (
    BatchOutput,
    Item,
    build_processor,
    close_programmers,
    programmer_stats,
)
from proxkit.pipeline.overlap import overlapped
from proxkit.pipeline.workers import signals_held, start_worker

IN_FLIGHT = 3  # batches per replica: one running, the next ones read and started


class ReplicaFailed(RuntimeError):
    """A model replica could not start, or died during the run."""


def _replica(
    index: int,
    config: dict[str, Any],
    device: str,
    threads: int,
    inbox: Any,
    results: Any,
    parent: int,
) -> None:
    """A replica's life: load the model, then refine what arrives until told to stop."""
    start_worker(parent)
    try:
        settings = RefineConfig.from_dict({**config, "device": device, "replicas": ()})
        processor = build_processor(dataclasses.replace(settings, threads=threads))
    except BaseException as exc:  # sent as text: any exception, picklable or not
        results.put(("failed", index, f"{type(exc).__name__}: {exc}"))
        return
    results.put(("ready", index, None))
    numbers: deque[int] = deque()

    def batches() -> Iterator[list[Item]]:
        for number, batch in iter(inbox.get, None):
            numbers.append(number)
            yield batch

    for output in overlapped(processor, batches()):
        results.put(("output", index, (numbers.popleft(), output)))
    results.put(("stats", index, programmer_stats(processor)))
    close_programmers(processor)


class ReplicaEngine:
    def __init__(self, config: RefineConfig) -> None:
        context = get_context("spawn")
        self.devices = list(config.replicas)
        on_cpu = sum(not d.startswith("cuda") for d in self.devices)
        threads = config.threads or max(1, (os.cpu_count() or 1) // max(on_cpu, 1))
        self.results = context.Queue()
        self.inboxes = [context.Queue() for _ in self.devices]
        self.processes = [
            context.Process(
                target=_replica,
                args=(i, config.to_dict(), device, threads, inbox, self.results, os.getpid()),
                name=f"prox-replica-{i}",
                daemon=True,
            )
            for i, (device, inbox) in enumerate(zip(self.devices, self.inboxes))
        ]
        with signals_held():
            for process in self.processes:
                process.start()
        self.stats: dict[int, dict[str, Any]] = {}
        ready: set[int] = set()
        while len(ready) < len(self.processes):
            kind, replica, payload = self._receive()
            if kind == "failed":
                self.close()
                raise ReplicaFailed(
                    f"model replica on {self.devices[replica]} failed to start: {payload}"
                )
            ready.add(replica)

    def _receive(self) -> tuple[str, int, Any]:
        """The next message from any replica: (kind, replica index, payload)."""
        while True:
            try:
                kind, replica, payload = self.results.get(timeout=1.0)
            except queue.Empty:
                for process, device in zip(self.processes, self.devices):
                    if not process.is_alive():
                        raise ReplicaFailed(
                            f"model replica on {device} died (exit code {process.exitcode}); "
                            "its unit is not marked complete: run the same command to resume"
                        ) from None
                continue
            return kind, replica, payload

    def map_batches(self, batches: Iterator[list[Item]]) -> Iterator[BatchOutput]:
        in_flight = [0] * len(self.processes)
        finished: dict[int, BatchOutput] = {}
        sent = written = 0
        exhausted = False
        while True:
            while not exhausted and min(in_flight) < IN_FLIGHT:
                batch = next(batches, None)
                if batch is None:
                    exhausted = True
                    break
                replica = in_flight.index(min(in_flight))
                self.inboxes[replica].put((sent, batch))
                in_flight[replica] += 1
                sent += 1
            if exhausted and written == sent:
                return
            kind, replica, payload = self._receive()
            if kind != "output":
                continue
            number, output = payload
            in_flight[replica] -= 1
            finished[number] = output
            while written in finished:
                yield finished.pop(written)
                written += 1

    def programmer_stats(self) -> dict[str, Any]:
        """Stops the replicas, which then report what they counted."""
        self._stop()
        return merge_programmer_stats(list(self.stats.values()))

    def _stop(self) -> None:
        waiting = {i for i, p in enumerate(self.processes) if p.is_alive()} - set(self.stats)
        for replica in waiting:
            self.inboxes[replica].put(None)
        while waiting:
            try:
                kind, replica, payload = self.results.get(timeout=30)
            except queue.Empty:
                break
            if kind == "stats":
                self.stats[replica] = payload
                waiting.discard(replica)

    def close(self, abort: bool = False) -> None:
        """After a finished run the replicas have already stopped; after a failed or
        interrupted one they are killed, abandoning their batches (the unit is redone)."""
        for process in self.processes:
            process.join(timeout=0 if abort else 10)
            if process.is_alive():
                process.kill()
                process.join()


def merge_programmer_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum what each replica counted, stage by stage; rates are recomputed."""
    merged: dict[str, Any] = {}
    for part in parts:
        for section, numbers in part.items():
            into = merged.setdefault(section, {})
            for name, value in numbers.items():
                if isinstance(value, bool) or not isinstance(value, (int, float, dict)):
                    into.setdefault(name, value)
                elif isinstance(value, dict):
                    into[name] = dict(Counter(into.get(name, {})) + Counter(value))
                else:
                    into[name] = into.get(name, 0) + value
    for numbers in merged.values():
        if numbers.get("prompts"):
            numbers["cache_hit_rate"] = round(numbers["cache_hits"] / numbers["prompts"], 4)
    merged.setdefault("model", {})["replicas"] = len(parts)
    return merged
