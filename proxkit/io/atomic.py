"""Files that appear whole or not at all: written under a temporary name, flushed to disk
(fsync), then renamed into place, and the folder flushed too, so a crash, a full disk or a
torn network write leaves either the old content or the new, never a part of it.

Temporary names end in `TEMPORARY_SUFFIX` and carry the writer's pid (ranks of one run may
write the same file at once); a write that fails removes its own, and a run that resumes
removes those a killed writer left. A state file damaged anyway (edited by hand, torn by a
network file system's client) is read as `DamagedFile`, which names it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TEMPORARY_SUFFIX = ".tmp"


class DamagedFile(ValueError):
    """A state file that exists but cannot be read as what it should hold."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} is damaged ({reason})")
        self.path = path
        self.reason = reason


def read_json(path: Path) -> Any:
    """The JSON value in `path`; `DamagedFile` when it is not valid UTF-8 JSON."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DamagedFile(path, f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    except ValueError as exc:
        reason = "empty" if path.stat().st_size == 0 else f"not valid JSON: {exc}"
        raise DamagedFile(path, reason) from None


def temporary_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")


def fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable (a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename itself is still atomic
    finally:
        os.close(descriptor)


def fsync_file(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def publish(temporary: Path, path: Path) -> None:
    """Move a complete, flushed file into place."""
    os.replace(temporary, path)
    fsync_folder(path.parent)


def _write_temporary(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    try:
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: readers see the old content or the new, nothing between."""
    temporary = _write_temporary(path, data)
    try:
        publish(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def create_once(path: Path, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists; False when another writer was first.
    The file appears complete or not at all (a hard link of a flushed temporary file)."""
    temporary = _write_temporary(path, data)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        temporary.unlink(missing_ok=True)
    fsync_folder(path.parent)
    return True
