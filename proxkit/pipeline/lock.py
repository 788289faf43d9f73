"""One writer per output: a run holds a lock on its output for as long as it writes.

The lock is an advisory `flock` on `_prox/lock` in a folder output (`NAME.lock` beside a single
output file), taken without waiting. Its file names the holder (pid, host, start, command), so
a second run on the same output stops at once and says who holds it. The kernel releases the
lock when its holder dies, however it dies: a lock left by a killed run (`kill -9`, a lost
node) is simply free, and the next run says it takes it over. A run that ends empties the file.

Slurm-array ranks (`--rank R --world-size N`) write one folder together: each holds a shared
lock on `_prox/lock` and its own rank's lock (`_prox/lock-rank-R-of-N`), so ranks run side by
side, but a whole run cannot start beside them, nor a second copy of the same rank.
`flock` works on local file systems; on NFS only where the server supports locks (NFSv4).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

from proxkit.io.readers import record_format


class OutputLocked(RuntimeError):
    """Another run is writing this output."""


def lock_paths(output: Path, rank: int, world_size: int) -> tuple[Path, Path | None]:
    """(the output's lock, this rank's own lock or None for a whole run)."""
    if record_format(str(output)) is not None:
        return output.with_name(output.name + ".lock"), None
    folder = output / "_prox"
    if world_size == 1:
        return folder / "lock", None
    return folder / "lock", folder / f"lock-rank-{rank:05d}-of-{world_size:05d}"


def _holder(path: Path) -> str | None:
    """Who a lock file names, or None when it names no one."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return None
    if not holder:
        return None
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('started')})"


def _take(path: Path, exclusive: bool, holders: list[Path], output: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        named = [h for h in map(_holder, holders) if h is not None]
        who = ", ".join(named) or "another process"
        raise OutputLocked(
            f"{output} is being written by {who}; wait for it to end, or stop it and run "
            "the same command to resume"
        ) from None
    return handle


def _rank_locks(path: Path) -> list[Path]:
    return sorted(path.parent.glob("lock-rank-*")) if path.name == "lock" else []


@contextmanager
def output_lock(output: Path, rank: int = 0, world_size: int = 1) -> Iterator[str | None]:
    """Hold the output's lock while the block runs; yields a message when it takes over a
    lock left by a run that did not end (else None). Raises OutputLocked when it is held."""
    main, own = lock_paths(output, rank, world_size)
    with ExitStack() as stack:
        shared = _take(main, own is None, [main, *_rank_locks(main)], output)
        stack.callback(shared.close)
        handle = shared
        if own is not None:
            handle = _take(own, True, [own], output)
            stack.callback(handle.close)
        left = _holder(Path(handle.name))
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "command": sys.argv,
                }
            )
        )
        handle.flush()
        try:
            yield (
                f"taking over the lock left by {left}, which ended without releasing it"
                if left
                else None
            )
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
