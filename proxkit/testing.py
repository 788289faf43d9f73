"""Random-weight Llama models saved like a real checkpoint, and the reference decoding that
proxkit's own decode loop is checked against, for tests and benchmarks.

No test or benchmark downloads weights: they build a Llama-architecture model here (with the
real Llama-2 vocabulary when its tokenizer folder is given) and load it through the same code
path as a released refining model. `generate_reference` is transformers' `generate` on the
transformers backend's batches, with the grammar as a mask of every disallowed token at every
step (`MaskEveryStep`): what the decode loop must write token for token.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxkit.programmers.grammar import ProgramGrammar
    from proxkit.programmers.hf import TransformersBackend
    from proxkit.prompts import Prompt

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


class MaskEveryStep:
    """The reference for constrained greedy decoding: a transformers logits processor that
    lists each row's allowed tokens from its text so far and masks all others."""

    def __init__(
        self, grammars: Sequence[ProgramGrammar], model: TransformersBackend, prompt_length: int
    ) -> None:
        self.grammars, self.model, self.prompt_length = grammars, model, prompt_length

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        from proxkit.programmers.grammar import allowed_tokens

        trie, eos = self.model._steering().trie, self.model.eos_id
        mask = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(input_ids[:, self.prompt_length :].tolist()):
            grammar = self.grammars[row]
            if eos in ids:
                mask[row, eos] = 0
                continue
            state = grammar.feed(grammar.start(), "".join(trie.text_of[t] for t in ids))
            allowed = allowed_tokens(grammar, state, trie) if state is not None else []
            if state is not None and grammar.accepts(state):
                allowed.append(eos)
            mask[row, allowed or [eos]] = 0
        return scores + mask


def generate_reference(
    model: TransformersBackend,
    prompts: Sequence[Prompt],
    limit: int,
    grammars: Sequence[ProgramGrammar] | None = None,
) -> list[list[int]]:
    """Greedy tokens from transformers' `generate`, the prompts as one batch, EOS kept."""
    import torch
    from transformers import LogitsProcessorList

    ids, mask = model._padded(prompts)
    processors = (
        LogitsProcessorList([MaskEveryStep(grammars, model, ids.shape[1])]) if grammars else None
    )
    with torch.inference_mode():
        out = model.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=limit,
            do_sample=False,
            eos_token_id=model.eos_id,
            pad_token_id=model.pad_id,
            logits_processor=processors,
        )[:, ids.shape[1] :].tolist()
    return [row[: row.index(model.eos_id) + 1] if model.eos_id in row else row for row in out]
