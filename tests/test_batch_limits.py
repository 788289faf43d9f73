"""Default batch sizes: from free memory on a GPU (`batch_limits.py`), the measured ones on CPU."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxkit.programmers.batch_limits import (
    CPU_BATCH_TOKENS,
    CPU_MAX_BATCH_SIZE,
    DECODE_ROWS,
    HEADROOM,
    ModelShape,
    gpu_batch_limits,
    per_sequence_bytes,
    per_token_bytes,
)
from proxkit.testing import REFINING_LM_0_3B

GIB = 1 << 30
REFINER = ModelShape(
    layers=REFINING_LM_0_3B["num_hidden_layers"],
    hidden=REFINING_LM_0_3B["hidden_size"],
    intermediate=REFINING_LM_0_3B["intermediate_size"],
    heads=REFINING_LM_0_3B["num_attention_heads"],
    kv_heads=REFINING_LM_0_3B["num_key_value_heads"],
    vocab=32000,
)


def test_the_refiner_on_an_h100_gets_batches_of_hundreds_of_thousands_of_tokens():
    limits = gpu_batch_limits(78 * GIB, REFINER, dtype_bytes=2)
    assert limits.max_batch_size == DECODE_ROWS
    # 256 chunk prompts of 1,500 tokens in one batch, where 16,384 tokens held 10
    assert limits.batch_tokens >= 256 * 1500
    # the KV cache of the 0.3B shape: 2 x 24 layers x 1 head x 80 dims x 2 bytes per token
    assert per_token_bytes(REFINER, 2) > 2 * 24 * 80 * 2


@given(st.integers(1 << 20, 200 * GIB), st.sampled_from([2, 4]))
@settings(max_examples=200)
def test_a_batch_never_needs_more_than_the_memory_left_after_headroom(free, dtype_bytes):
    limits = gpu_batch_limits(free, REFINER, dtype_bytes)
    assert limits.batch_tokens >= 1 and 1 <= limits.max_batch_size <= DECODE_ROWS
    needed = limits.batch_tokens * per_token_bytes(
        REFINER, dtype_bytes
    ) + limits.max_batch_size * per_sequence_bytes(REFINER)
    assert needed <= free * (1 - HEADROOM) or limits.batch_tokens == 1


@given(st.integers(1 << 24, 100 * GIB), st.integers(1 << 24, 100 * GIB))
def test_more_free_memory_never_gives_smaller_batches(a, b):
    low, high = sorted((a, b))
    small, large = gpu_batch_limits(low, REFINER, 2), gpu_batch_limits(high, REFINER, 2)
    assert small.batch_tokens <= large.batch_tokens
    assert small.max_batch_size <= large.max_batch_size


def test_the_transformers_backend_fills_in_the_cpu_limits_and_reports_them(tmp_path):
    import pytest

    pytest.importorskip("torch")
    from proxkit.programmers.hf import HFSettings, TransformersBackend
    from proxkit.testing import TINY, random_llama

    from conftest import LLAMA2

    if not (LLAMA2 / "tokenizer.json").is_file():
        pytest.skip("needs the Llama-2 tokenizer")
    random_llama(tmp_path / "model", LLAMA2, **TINY)
    backend = TransformersBackend(str(tmp_path / "model"), HFSettings(device="cpu"))
    stats = backend.stats()
    assert (stats["batch_tokens"], stats["max_batch_size"]) == (
        CPU_BATCH_TOKENS,
        CPU_MAX_BATCH_SIZE,
    )
    chosen = TransformersBackend(
        str(tmp_path / "model"), HFSettings(device="cpu", batch_tokens=999)
    ).settings
    assert (chosen.batch_tokens, chosen.max_batch_size) == (999, CPU_MAX_BATCH_SIZE)
