"""Child processes that never outlive the process that started them.

Every worker proxkit starts (CPU workers for rules, prompt workers, model replicas) first calls
`start_worker`: a watcher thread checks the parent's pid a few times a second and ends the
worker as soon as it changes, whatever ended the parent (`kill -9` included). A worker left
behind would otherwise keep its memory, and a model replica its GPU memory, for ever. Workers
ignore Ctrl-C, which the terminal sends to the whole process group: the parent decides how the
run stops, and stops them. They are started with Ctrl-C and SIGTERM held back
(`signals_held`), so one that arrives while a worker is still importing Python cannot break it
with a traceback: the worker discards it once it ignores Ctrl-C, and the parent receives its
own copy as soon as the worker is started.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context

CHECK_SECONDS = 0.25
HELD = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold back Ctrl-C and SIGTERM in this thread while the block starts worker processes
    (which inherit the mask); they are delivered when the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def die_with_parent(parent_pid: int) -> None:
    """End this process when `parent_pid` is no longer its parent."""
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(CHECK_SECONDS):
            if os.getppid() != parent_pid:
                os._exit(1)  # no clean-up: the parent that would read our results is gone

    threading.Thread(target=watch, name="prox-parent-watch", daemon=True).start()


def start_worker(parent_pid: int) -> None:
    """What every worker process does first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # discards a Ctrl-C held since the start
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)
    die_with_parent(parent_pid)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Spawned worker processes that end when this process ends, however it ends."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=start_worker,
        initargs=(os.getpid(),),
    )


def stop_pool(pool: ProcessPoolExecutor, abort: bool) -> None:
    """Shut a pool down; after a failure or an interrupt, without finishing running batches."""
    if not abort:
        pool.shutdown(cancel_futures=True)
        return
    processes = list(getattr(pool, "_processes", {}).values())  # no public way before 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.kill()
