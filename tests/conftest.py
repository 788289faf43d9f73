"""Shared fixtures: the real Llama-2 tokenizer (skipped where ../shared is absent) and a tiny
tokenizer trained on the fly, both as folders loaded through the real loading code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import strategies as st

from proxkit.program import DropDoc, KeepDoc, Normalize, RemoveAllLines, RemoveLines

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub

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


@pytest.fixture(scope="session")
def refiner(tmp_path_factory: pytest.TempPathFactory, llama2_dir: Path) -> Path:
    """A tiny refining model trained for both stages (tests/tiny_model.py), saved as a folder."""
    pytest.importorskip("torch")
    from tiny_model import build_tiny_model

    folder = tmp_path_factory.mktemp("refiner")
    return build_tiny_model(folder, llama2_dir, steps=200, chunk_level=True)


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
