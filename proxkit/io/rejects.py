"""Where unusable input goes: a JSONL file of rejects, the first few echoed to stderr.

The file is written like a shard: under a temporary name, moved into place whole when the
writing ends well (`close`), removed when it does not (`abort`), so a failed or interrupted
run leaves no rejects that belong to no output.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO

from proxkit.io.atomic import publish
from proxkit.io.encodable import json_line
from proxkit.io.readers import Reject
from proxkit.io.writers import PARTIAL_SUFFIX

REJECTS_SHOWN = 20


class RejectLog:
    """Writes rejected records to a JSONL file (created on the first reject) and echoes the
    first few to stderr, so every reject is both visible and kept. As a context manager, the
    file is completed only when the block ends without an exception."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(path.name + PARTIAL_SUFFIX)
        self.count = 0
        self.handle: IO[bytes] | None = None

    def add(self, reject: Reject) -> None:
        self.count += 1
        if self.count <= REJECTS_SHOWN:
            where = f"{reject.source}:{reject.position}" if reject.position else reject.source
            print(f"rejected {where}: {reject.reason}", file=sys.stderr)
        elif self.count == REJECTS_SHOWN + 1:
            print(f"more rejects: see {self.path}", file=sys.stderr)
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = self.partial.open("wb")
        self.handle.write(json_line(reject.to_record()))

    @property
    def written(self) -> Path | None:
        """The completed file, if there were rejects."""
        return self.path if self.count else None

    def close(self) -> None:
        if self.handle is None:
            return
        handle, self.handle = self.handle, None
        try:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            publish(self.partial, self.path)
        except BaseException:
            self._discard(handle)
            raise

    def abort(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            self._discard(handle)

    def _discard(self, handle: IO[bytes]) -> None:
        try:
            handle.close()  # may fail to flush (a full disk): the file goes all the same
        finally:
            self.partial.unlink(missing_ok=True)

    def __enter__(self) -> RejectLog:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.abort()
            return
        self.close()
