"""Shared fixtures. The suite runs in parallel processes (pytest-xdist, `-n` in pyproject's
addopts), so what is costly to make is made once per run and shared by every worker:

- `llama2_dir`: the real Llama-2 tokenizer (tests skip where ../shared is absent).
- `tiny_tokenizer_dir`: a small BPE tokenizer trained on the fly.
- `tiny_model(steps, chunk_level=False)`: the folder of a tiny Llama refining model trained at
  test time (tests/tiny_model.py), one per (steps, chunk_level); `refiner` is the one trained for
  both stages (200 steps), `vllm_refiner` the same with heads vLLM's CPU attention takes.
- `example_output`: the shipped example corpus refined by the rule programmer (`prox refine
  examples/web_docs.jsonl.gz --doc-programmer rules --chunk-programmer rules`), a run folder.
- `built_once(tmp_path_factory, name, build)`: the helper behind them, for your own: `build(folder)`
  runs once per test run, under a file lock, in a folder every worker sees.

What they return is shared: read it, never write into it (copy it to `tmp_path` first). Tests
must be safe beside each other: write under `tmp_path`, bind servers to port 0, and take no
machine-wide resource without a lock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import strategies as st

from proxkit.program import DropDoc, KeepDoc, Normalize, RemoveAllLines, RemoveLines

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
# Parallel workers, each with torch's threads, are more threads than cores: OpenMP threads that
# spin while waiting for a descheduled partner made torch-bound tests 6x slower on the 2-core
# machine. Waiting threads sleep instead (read when torch loads, so before any import of it;
# the `prox` processes tests start inherit it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PROXKIT_SHARED", REPO.parent / "shared"))
LLAMA2 = SHARED / "tokenizers" / "llama2"
EXAMPLES = REPO / "examples"
EXAMPLE_CORPUS = EXAMPLES / "web_docs.jsonl.gz"


@pytest.fixture(scope="session")
def llama2_dir() -> Path:
    if not (LLAMA2 / "tokenizer.json").is_file():
        pytest.skip(f"Llama-2 tokenizer not found at {LLAMA2}")
    return LLAMA2


def built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """The folder `name`, filled by `build(folder)` once per test run: the first process to
    need it builds it under a file lock in the run's temporary root (which every xdist worker
    shares), the others wait for it and reuse it. A build that failed is tried again."""
    from filelock import FileLock

    root = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # popen-gwN/ -> the run's own pytest-N/
    folder = root / "built-once" / name
    folder.parent.mkdir(exist_ok=True)
    with FileLock(f"{folder}.lock"):
        if not (folder.parent / f"{name}.done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder.parent / f"{name}.done").touch()
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, llama2_dir: Path):
    """`tiny_model(steps, chunk_level=False)`: a tiny refining model (tests/tiny_model.py) as a
    folder, trained once per run for each (steps, chunk_level)."""
    pytest.importorskip("torch")
    from tiny_model import build_tiny_model

    def trained(steps: int = 120, chunk_level: bool = False) -> Path:
        name = f"tiny-model-{steps}-steps" + ("-chunk-level" if chunk_level else "")
        return built_once(
            tmp_path_factory,
            name,
            lambda folder: build_tiny_model(
                folder, llama2_dir, steps=steps, chunk_level=chunk_level
            ),
        )

    return trained


@pytest.fixture(scope="session")
def refiner(tiny_model) -> Path:
    """A tiny refining model trained for both stages (tests/tiny_model.py), saved as a folder."""
    return tiny_model(200, chunk_level=True)


@pytest.fixture(scope="session")
def vllm_refiner(tmp_path_factory: pytest.TempPathFactory, llama2_dir: Path) -> Path:
    """`refiner` with heads of 32 dimensions, the smallest vLLM's CPU attention takes."""
    pytest.importorskip("torch")
    from proxkit.testing import TINY_VLLM

    from tiny_model import build_tiny_model

    def build(folder: Path) -> None:
        build_tiny_model(folder, llama2_dir, steps=200, chunk_level=True, shape=TINY_VLLM)

    return built_once(tmp_path_factory, "tiny-vllm-refiner", build)


@pytest.fixture(scope="session")
def example_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example corpus refined by the rule programmer: a run folder (shards, stats.json,
    config.yaml), made once per run."""
    from proxkit.config import RefineConfig
    from proxkit.pipeline.run import run

    def refine(folder: Path) -> None:
        config = RefineConfig(
            inputs=(str(EXAMPLE_CORPUS),),
            output=str(folder / "out"),
            doc_programmer="rules",
            chunk_programmer="rules",
            workers=1,
        )
        run(config, progress=False)

    return built_once(tmp_path_factory, "example-output", refine) / "out"


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small BPE tokenizer with a BOS post-processor, like Llama's, trained on local text."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"])
    corpus = [
        "[000]Home | About | Contact",
        "The quick brown fox jumps over the lazy dog.",
        "Copyright 2024. All rights reserved. Privacy policy.",
    ] * 50
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    folder = tmp_path_factory.mktemp("tiny_tokenizer")
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {"bos_token": "<s>", "eos_token": "</s>", "tokenizer_class": "PreTrainedTokenizerFast"}
        )
    )
    return folder


def write_jsonl(path: Path, records: list[dict]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def refine_records(
    tmp_path: Path, name: str, records: list[dict], **options
) -> tuple[list[dict], dict]:
    """`records` refined in-process by `prox refine`'s runner into one JSONL file: the output
    records and the run's statistics."""
    from proxkit.config import RefineConfig
    from proxkit.pipeline.run import run

    source = write_jsonl(tmp_path / f"{name}.jsonl", records)
    options = {"output_format": "jsonl", "workers": 1, **options}
    config = RefineConfig(inputs=(str(source),), output=str(tmp_path / name), **options)
    stats = run(config, progress=False)
    return read_jsonl(tmp_path / name / "part-00000-00000.jsonl"), stats.to_dict()


def example_records() -> list[dict]:
    """The shipped example corpus, as records."""
    return read_jsonl(EXAMPLE_CORPUS)


def read_jsonl(path: Path) -> list[dict]:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# Random ProX operations, for property tests of the parser and executor.
line_numbers = st.integers(min_value=0, max_value=10_000)
ranges = st.tuples(line_numbers, line_numbers).map(lambda r: RemoveLines(min(r), max(r)))
texts = st.text(st.characters(exclude_characters="\n"), max_size=30)
operations = st.one_of(
    st.just(KeepDoc()),
    st.just(DropDoc()),
    st.just(RemoveAllLines()),
    ranges,
    st.builds(Normalize, texts, texts),
)


OPENAI_SERVER = Path(__file__).with_name("openai_server.py")


def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    """Start tests/openai_server.py as a real process on 127.0.0.1; (process, base URL)."""
    process = subprocess.Popen(
        [sys.executable, str(OPENAI_SERVER), *args], stdout=subprocess.PIPE, text=True
    )
    line = process.stdout.readline()
    assert line.startswith("READY"), line
    return process, f"http://127.0.0.1:{line.split()[1]}/v1"
