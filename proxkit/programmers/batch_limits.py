"""How much one model batch may hold, so that the default batches fill the device.

On a GPU the limits follow from its free memory once the model is loaded and from the model's
shape: a batch of padded prompt tokens needs their KV cache (and that of the tokens generated
after them), one layer's activations at a time, a row of attention scores per head where the
attention kernel writes them out, and per sequence its float32 logits. A quarter of the free
memory is left to the allocator and to other kernels' workspaces; a batch that still runs out
of memory is split in halves by the backend and counted (`oom_splits`). On a CPU the limits
are the ones measured there (`bench/bench_lm.py`): larger batches do not go faster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CPU_BATCH_TOKENS = 16_384
CPU_MAX_BATCH_SIZE = 64
# Rows decoded together. A decode step reads the weights once for all rows and spends
# 2 x parameters FLOPs per row, so with bf16 weights it turns compute-bound near
# peak FLOP/s / memory bandwidth rows (~300 on an H100 or H200, 989 TFLOP/s over 3.35-4.8 TB/s);
# past that, more rows add time per step, not throughput.
DECODE_ROWS = 512
HEADROOM = 0.25
# The released models' longest prompts: 2,000-token doc prompts, 1,500-token chunks + template.
PROMPT_TOKENS = 2048
NEW_TOKENS = 256


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int

    @classmethod
    def of(cls, config: Any) -> ModelShape:
        """From a transformers model config (Llama-style names)."""
        heads = config.num_attention_heads
        return cls(
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            vocab=config.vocab_size,
        )


@dataclass(frozen=True)
class BatchLimits:
    batch_tokens: int  # padded prompt tokens per batch
    max_batch_size: int  # sequences per batch


def per_token_bytes(shape: ModelShape, dtype_bytes: int) -> int:
    """Device memory one padded prompt token of a batch needs."""
    head_dim = shape.hidden // shape.heads
    kv = 2 * shape.layers * shape.kv_heads * head_dim * dtype_bytes
    generated = kv * NEW_TOKENS // PROMPT_TOKENS  # the outputs' cache, spread over the prompt
    # one layer's transients: residual, norm, q/k/v/output (6 h), the MLP's gate, up, product
    # (3 f); twice, for tensors the allocator has not yet reused
    activations = 2 * (6 * shape.hidden + 3 * shape.intermediate) * dtype_bytes
    scores = shape.heads * PROMPT_TOKENS * dtype_bytes  # a row of attention scores per head
    return kv + generated + activations + scores


def per_sequence_bytes(shape: ModelShape) -> int:
    """Device memory one sequence of a batch needs besides its tokens: float32 logits of one
    position, their log-softmax and the copies logits processors make."""
    return 4 * shape.vocab * 4


def gpu_batch_limits(free_bytes: int, shape: ModelShape, dtype_bytes: int) -> BatchLimits:
    """The largest batches that fit in `free_bytes` of device memory, HEADROOM left over."""
    usable = int(free_bytes * (1 - HEADROOM))
    rows = DECODE_ROWS
    tokens = (usable - rows * per_sequence_bytes(shape)) // per_token_bytes(shape, dtype_bytes)
    rows = max(1, min(rows, tokens // 64))  # small devices: fewer, longer rows
    tokens = (usable - rows * per_sequence_bytes(shape)) // per_token_bytes(shape, dtype_bytes)
    return BatchLimits(max(int(tokens), 1), rows)


def batch_limits(model: Any, device: str) -> BatchLimits:
    """The limits for `model`, loaded on `device`: from its free memory on CUDA."""
    if not device.startswith("cuda"):
        return BatchLimits(CPU_BATCH_TOKENS, CPU_MAX_BATCH_SIZE)
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return gpu_batch_limits(free, ModelShape.of(model.config), model.dtype.itemsize)
