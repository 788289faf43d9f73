"""Prepare what the GPU check carries to a lent GPU machine, into `bench/gpu/carry/` (ignored).

The lent machine has Python, torch and transformers but no `../shared` and no network: the
Llama-2 tokenizer of the released models is copied here, and wheels for modules it may lack
(`--wheels`, built for its Python and platform) are downloaded from the package index. The
run tool carries at most 64 MiB: the total is checked, and over it nothing is left half-made.

    python bench/gpu/prepare.py                          # the tokenizer only
    python bench/gpu/prepare.py --wheels accelerate      # + wheels for Python 3.12, manylinux
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CARRY = HERE / "carry"
LIMIT_BYTES = 64 * 2**20
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
)


class TooLarge(RuntimeError):
    """What would be carried exceeds the run tool's limit."""


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def prepare(
    carry: Path,
    tokenizer: Path,
    wheels: list[str],
    python_version: str = "3.12",
    limit: int = LIMIT_BYTES,
) -> int:
    """Fill `carry` afresh; returns its size in bytes (raises TooLarge past `limit`)."""
    if carry.exists():
        shutil.rmtree(carry)
    (carry / "llama2").mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (tokenizer / name).is_file():
            shutil.copy(tokenizer / name, carry / "llama2" / name)
    if not (carry / "llama2" / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{tokenizer} holds no tokenizer.json")
    if wheels:
        subprocess.run(
            [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--only-binary=:all:", "--python-version", python_version,
                "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64",
                "--dest", str(carry / "wheels"), *wheels,
            ],
            check=True,
        )  # fmt: skip
    size = folder_bytes(carry)
    if size > limit:
        shutil.rmtree(carry)
        raise TooLarge(f"{size / 2**20:.1f} MiB to carry, over the {limit / 2**20:.0f} MiB limit")
    return size


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tokenizer", type=Path, default=HERE.parents[2] / "shared" / "tokenizers" / "llama2"
    )
    parser.add_argument("--wheels", nargs="*", default=[], help="packages to carry as wheels")
    parser.add_argument("--python-version", default="3.12")
    args = parser.parse_args()
    try:
        size = prepare(CARRY, args.tokenizer, args.wheels, args.python_version)
    except (TooLarge, FileNotFoundError, subprocess.CalledProcessError) as exc:
        sys.exit(f"error: {exc}")
    print(f"{CARRY}: {size / 2**20:.1f} MiB to carry (limit {LIMIT_BYTES / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
