"""Stopping a run from outside: Ctrl-C or SIGTERM ends it cleanly, a second Ctrl-C at once.

The first SIGINT or SIGTERM raises `Interrupted` in the main thread, so the run unwinds as
after any failure: the file being written is removed, no unit is marked complete that is not,
worker processes and model replicas are stopped, the output's lock is released. The caller then
says how to resume and exits with 130 (SIGINT) or 143 (SIGTERM). A second signal while that
happens exits at once, with the same status. While the main thread holds signals back (as it
does while it starts worker processes), one that another thread received waits for it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop by a signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signal = signal.Signals(signum).name
        self.exit_code = 128 + signum


@contextmanager
def interruptible() -> Iterator[None]:
    """Turn the first SIGINT/SIGTERM into `Interrupted`, and a second into an immediate exit."""
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    received: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        if signum in signal.pthread_sigmask(signal.SIG_BLOCK, []):
            # Another thread took the signal while this one holds it back (`workers.py`: a
            # worker process is being started): hand it back, to arrive when the hold ends.
            signal.pthread_kill(threading.get_ident(), signum)
            return
        if received:
            os._exit(128 + signum)
        received.append(signum)
        raise Interrupted(signum)

    for number in SIGNALS:
        signal.signal(number, stop)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
