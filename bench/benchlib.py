"""What the benchmark scripts share: the Llama-2 tokenizer beside the checkout, a printed
table of result rows, and the optional JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LLAMA2 = REPO.parent / "shared" / "tokenizers" / "llama2"


def print_table(rows: list[dict[str, Any]], width: int) -> None:
    header = list(rows[0])
    print("  ".join(f"{h:>{width}}" for h in header))
    for row in rows:
        print("  ".join(f"{row[h]!s:>{width}}" for h in header))


def write_json(path: Path | None, data: Any) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))
