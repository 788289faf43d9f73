"""Records every writer can carry: what UTF-8 and JSON cannot hold is replaced, and kept aside.

JSON lets a record hold strings with lone surrogates (`"\\ud800"` is valid JSON, but no UTF-8
file can carry the code point) and Python's reader accepts `NaN` and `Infinity`, which JSON
writers must refuse. Real crawls hold both. proxkit's one policy, applied where a record is read
(`readers.py`), to every string and number in it (text, id, passthrough fields at any depth,
object keys):
- a lone surrogate becomes U+FFFD, the replacement character;
- NaN and +/-Infinity become null;
- each original is kept, losslessly, as its JSON text with the surrogates escaped
  (`"caf\\udce9"`, `NaN`), in `metadata.prox.unencodable`: a list of `{"path": JSON Pointer,
  "original": JSON text}` (`"original_key"` for a key; a key that cleans to one already there
  keeps its value aside in the entry), so `json.loads` gives the exact value.
Parquet values of types JSON has no form for are converted where they are read
(`readers.py`) and noted in the same list as `{"path": "/column", "arrow_type": "..."}`:
binary as base64 text, timestamps, dates, times, durations and decimals as Arrow's text of them
(`2024-05-01 12:00:00.000000Z`, `1.50`), map entries as `[key, value]` pairs; the Arrow type
says how to read the value back exactly.
Programs run on the cleaned text, `raw_content` is the cleaned original, every output file is
valid UTF-8 (JSONL) or valid Parquet, and the records changed are counted in the summary and
`stats.json` (`records_with_unencodable_values`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

SURROGATES = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"

Unencodable = list[dict[str, str]]


def _has_surrogates(value: str) -> bool:
    return not value.isascii() and SURROGATES.search(value) is not None


def _string(value: str, path: str, found: Unencodable) -> str:
    if not _has_surrogates(value):
        return value
    # ensure_ascii: the surrogates become \\udXXX escapes, so the entry itself is clean
    found.append({"path": path, "original": json.dumps(value)})
    return SURROGATES.sub(REPLACEMENT, value)


def pointer(path: str, token: str | int) -> str:
    return f"{path}/{str(token).replace('~', '~0').replace('/', '~1')}"


def _clean(value: Any, path: str, found: Unencodable) -> Any:
    if isinstance(value, str):
        return _string(value, path, found)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        found.append({"path": path, "original": json.dumps(value)})
        return None
    if isinstance(value, dict):
        cleaned = {}
        for key, item in value.items():
            name = key
            if isinstance(key, str) and _has_surrogates(key):
                name = SURROGATES.sub(REPLACEMENT, key)
                entry = {"path": pointer(path, name), "original_key": json.dumps(key)}
                if name in value or name in cleaned:  # two keys clean to one: keep this value aside
                    found.append({**entry, "original": json.dumps(item, default=str)})
                    continue
                found.append(entry)
            cleaned[name] = _clean(item, pointer(path, name), found)
        return cleaned
    if isinstance(value, list):
        return [_clean(item, pointer(path, i), found) for i, item in enumerate(value)]
    return value


def clean_record(record: dict[str, Any]) -> tuple[dict[str, Any], Unencodable]:
    """The record with every unencodable value replaced, and what was replaced (with paths
    as JSON Pointers, `/text`, `/meta/title`, `/tags/2`). Unchanged records come back as is."""
    found: Unencodable = []
    cleaned = _clean(record, "", found)
    return (cleaned if found else record), found


def json_line(record: dict[str, Any]) -> bytes:
    """The record as one UTF-8 JSON line that any strict reader accepts (no NaN, no lone
    surrogates): a record that still holds such values (one not read by proxkit) is cleaned
    first, never written broken."""
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False, default=str)
        return (text + "\n").encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        cleaned, _ = clean_record(record)
        text = json.dumps(cleaned, ensure_ascii=False, allow_nan=False, default=str)
        return (text + "\n").encode("utf-8")
