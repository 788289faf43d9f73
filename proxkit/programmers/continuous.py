"""transformers' continuous batching behind a submit-and-collect interface.

One `ContinuousBatchingManager` (transformers >= 5.23; see `pyproject.toml`) runs for the
backend's whole life in its own thread: requests are added as they come, a finished sequence
frees its slot at once, and the KV cache is paged. `submit` adds a batch of prompts and returns
a future per prompt; a collector thread routes finished results to their futures, so several
batches can be in flight at once (the runner hands over the next batch while the model still
works on this one). If the manager's thread stops (a fatal error), the futures still waiting
fail with its reason instead of waiting forever.

The manager's thread is not a daemon thread, so a program that ends without `close()` would
hang; a watcher thread closes the manager when the main thread ends.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

PAGE_TOKENS = 256


@dataclass(frozen=True)
class Generated:
    """The raw result of one request: generated ids (end of sequence included when the model
    ended it), or the reason it failed."""

    tokens: tuple[int, ...]
    error: str | None = None


def unavailable() -> str | None:
    """Why this transformers cannot run continuous batching the way proxkit drives it, or None."""
    try:
        from transformers import ContinuousBatchingConfig  # noqa: F401
        from transformers.generation.continuous_batching import ContinuousBatchingManager
        from transformers.generation.continuous_batching.utils import WorkloadHints  # noqa: F401
    except ImportError as exc:
        return f"this transformers has no continuous batching API proxkit knows ({exc})"
    if not hasattr(ContinuousBatchingManager, "pause"):
        return "this transformers' continuous batching cannot be paused"
    return None


class BusyClock:
    """Seconds during which the model had work, counted once however many callers overlap."""

    def __init__(self) -> None:
        import time

        self.now = time.perf_counter
        self.lock = threading.Lock()
        self.active = 0
        self.since = 0.0
        self.seconds = 0.0

    def enter(self) -> None:
        with self.lock:
            if self.active == 0:
                self.since = self.now()
            self.active += 1

    def exit(self) -> None:
        with self.lock:
            self.active -= 1
            if self.active == 0:
                self.seconds += self.now() - self.since

    def total(self) -> float:
        with self.lock:
            return self.seconds + (self.now() - self.since if self.active else 0.0)


class ContinuousGenerator:
    """Greedy generation through one long-lived continuous-batching manager."""

    def __init__(
        self,
        model: Any,
        eos_id: int | None,
        pad_id: int,
        max_batch_tokens: int | None,
        max_requests: int,
        cache_tokens: int,
        max_prompt_tokens: int,
        max_new_tokens: int,
        clock: BusyClock,
    ) -> None:
        from transformers import ContinuousBatchingConfig, GenerationConfig
        from transformers.generation.continuous_batching.utils import WorkloadHints

        on_gpu = model.device.type == "cuda"
        # On a GPU the manager sizes its cache from free memory; elsewhere it must be told.
        blocks = max(1, cache_tokens // PAGE_TOKENS) if cache_tokens or not on_gpu else None
        settings = ContinuousBatchingConfig(
            page_size=PAGE_TOKENS,
            num_blocks=blocks,
            max_batch_tokens=max_batch_tokens,
            max_requests_per_batch=max_requests,
            max_memory_percent=0.7 if on_gpu else None,  # leaves room for one-pass scoring
        )
        generation = GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_id if eos_id is not None else -1,
            pad_token_id=pad_id,
        )
        hints = WorkloadHints(max_prompt_tokens, max_new_tokens, max_requests)
        self.manager = model.init_continuous_batching(generation, settings, hints)
        if on_gpu:
            self.manager.warmup()  # captures CUDA graphs once, before the first request
        self.manager.start()
        self.clock = clock
        self.ids = itertools.count()
        self.lock = threading.Lock()
        self.waiting: dict[str, Future[Generated]] = {}
        self.closed = threading.Event()
        threading.Thread(target=self._collect, name="prox-collect", daemon=True).start()
        # Not a daemon: interpreter shutdown waits until the manager is fully stopped.
        threading.Thread(target=self._close_with_main, name="prox-watch", daemon=False).start()

    def submit(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int
    ) -> list[Future[Generated]]:
        futures = []
        for token_ids in prompts:
            request_id = f"prox-{next(self.ids)}"
            future: Future[Generated] = Future()
            with self.lock:
                if not self.waiting:
                    self.clock.enter()
                self.waiting[request_id] = future
            added = self.manager.add_request(
                input_ids=list(token_ids), request_id=request_id, max_new_tokens=max_new_tokens
            )
            if added is None:  # the manager refuses requests: it has stopped
                self._fail(request_id, "continuous batching stopped accepting requests")
            futures.append(future)
        return futures

    def running(self) -> bool:
        return self.manager.is_running()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The model to ourselves: the loop waits at a step boundary, keeping its requests
        and cache. (Two threads running one transformers model at once corrupt each other's
        results: measured, see tests/test_generation.py.)"""
        if not self.manager.is_running():
            yield
            return
        try:
            pause = self.manager.pause()
            pause.__enter__()
        except RuntimeError:  # the loop stopped in between: nothing to pause
            yield
            return
        try:
            yield
        finally:
            pause.__exit__(None, None, None)

    def _fail(self, request_id: str, reason: str) -> None:
        with self.lock:
            future = self.waiting.pop(request_id, None)
            if future is not None and not self.waiting:
                self.clock.exit()
        if future is not None and not future.done():
            future.set_result(Generated((), reason))

    def _collect(self) -> None:
        while not self.closed.is_set():
            result = self.manager.get_result(timeout=0.1)
            if result is None:
                if not self.manager.is_running():
                    error = self.manager.background_thread_status.fatal_error
                    reason = f"continuous batching stopped: {error or 'manager not running'}"
                    with self.lock:
                        stranded = list(self.waiting)
                    for request_id in stranded:
                        self._fail(request_id, reason)
                    self.closed.wait(0.1)
                continue
            if not result.is_finished():
                continue
            with self.lock:
                future = self.waiting.pop(result.request_id, None)
                if future is not None and not self.waiting:
                    self.clock.exit()
            if future is not None:
                future.set_result(Generated(tuple(result.generated_tokens), result.error))

    def _close_with_main(self) -> None:
        threading.main_thread().join()
        self.close()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if self.manager.is_running():  # nothing still waiting is wanted: no flush
            self.manager.stop(block=True, timeout=10, hard_stop=True)
        with self.lock:
            stranded = list(self.waiting)
        for request_id in stranded:
            self._fail(request_id, "the model was closed before this request finished")
