"""Where unusable input goes: a JSONL file of rejects, the first few echoed to stderr."""

from __future__ import annotations

import sys
from pathlib import Path

from proxkit.io.encodable import json_line
from proxkit.io.readers import Reject

REJECTS_SHOWN = 20


class RejectLog:
    """Writes rejected records to a JSONL file (created on the first reject) and echoes the
    first few to stderr, so every reject is both visible and kept."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.handle = None

    def add(self, reject: Reject) -> None:
        self.count += 1
        if self.count <= REJECTS_SHOWN:
            where = f"{reject.source}:{reject.position}" if reject.position else reject.source
            print(f"rejected {where}: {reject.reason}", file=sys.stderr)
        elif self.count == REJECTS_SHOWN + 1:
            print(f"more rejects: see {self.path}", file=sys.stderr)
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = self.path.open("w", encoding="utf-8")
        self.handle.write(json_line(reject.to_record()).decode("utf-8"))

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
