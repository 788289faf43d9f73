"""Random-weight Llama models saved like a real checkpoint, for tests and benchmarks.

No test or benchmark downloads weights: they build a Llama-architecture model here (with the
real Llama-2 vocabulary when its tokenizer folder is given) and load it through the same code
path as a released refining model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

# The released 0.3B refining LMs' shape.
REFINING_LM_0_3B = dict(
    hidden_size=1280,
    intermediate_size=2048,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_key_value_heads=1,
)
SMALL = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=1,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=1,
)
# TINY with heads of 32 dimensions, the smallest vLLM's CPU attention takes.
TINY_VLLM = {**TINY, "num_attention_heads": 2}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
)


def random_llama(folder: Path, tokenizer_dir: Path, seed: int = 0, **shape: Any):
    """Save a random-weight Llama with the tokenizer's files into `folder`; returns the model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=32000,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        **(shape or TINY),
    )
    model = LlamaForCausalLM(config)
    save(model, folder, tokenizer_dir)
    return model


def save(model: Any, folder: Path, tokenizer_dir: Path) -> Path:
    """Save a model and copy its tokenizer files next to it, as a checkpoint folder."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, folder / name)
    return folder
