"""The transformers backend: a causal LM from a Hub id or a local folder, on CPU or GPU.

Prompts are sorted by length and cut into batches under a token budget, so padding stays
small; generation is greedy under `torch.inference_mode`, left-padded, and outputs come back in
input order. The doc level's one-pass scoring runs a single forward pass per batch and reads
the next-token log-probabilities at each prompt's last position.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from proxkit.programmers.grammar import GrammarProcessor, ProgramGrammar, TokenTrie
from proxkit.prompts import Prompt
from proxkit.tokenizer import TokenizerInfo, load_tokenizer


class ModelNotFound(RuntimeError):
    """The model could not be loaded from a folder, the local cache or the Hub."""


def missing_model_message(name: str, exc: Exception) -> str:
    return (
        f"could not load model {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
        "If the Hugging Face Hub is unreachable, download the model elsewhere and pass its local "
        "folder (for example --doc-programmer /models/web-doc-refining-lm), or use the rule "
        "programmer with --doc-programmer rules --chunk-programmer rules."
    )


@dataclass(frozen=True)
class HFSettings:
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu
    batch_tokens: int = 16_384  # prompt tokens per forward batch (padding included)
    max_batch_size: int = 64
    threads: int = 0  # CPU threads for torch; 0: one per core
    compile: bool = False  # torch.compile the decoder used by one-pass scoring


def _batches(
    prompts: Sequence[Prompt], batch_tokens: int, max_batch_size: int
) -> Iterator[list[int]]:
    """Indices grouped by similar length, each group's padded size within the budget."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].token_ids))
    batch: list[int] = []
    for index in order:
        longest = len(prompts[index].token_ids)  # sorted: the newest is the longest
        if batch and (longest * (len(batch) + 1) > batch_tokens or len(batch) >= max_batch_size):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


class TransformersBackend:
    def __init__(self, name_or_path: str, settings: HFSettings = HFSettings()) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.name = name_or_path
        self.settings = settings
        if settings.threads or not torch.cuda.is_available():
            torch.set_num_threads(settings.threads or os.cpu_count() or 1)
        device = settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype: Any = settings.dtype
        if dtype == "auto":
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        else:
            dtype = getattr(torch, dtype)
        try:
            self.tokenizer: TokenizerInfo = load_tokenizer(name_or_path)
            self.model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype).to(device)
        except Exception as exc:
            raise ModelNotFound(missing_model_message(name_or_path, exc)) from exc
        self.model.eval()
        # Only one-pass scoring uses the compiled decoder: its shapes vary by batch alone,
        # while generate's growing KV cache would recompile at every step.
        self.scoring_decoder = self.model.get_decoder()
        if settings.compile:
            self.scoring_decoder = torch.compile(self.scoring_decoder, dynamic=True)
        self.device = device
        eos = self.tokenizer.eos_token
        self.eos_id = self.tokenizer.backend.token_to_id(eos) if eos else None
        self.pad_id = self.eos_id if self.eos_id is not None else 0
        self.trie: TokenTrie | None = None  # built on the first constrained call

    def _padded(self, prompts: Sequence[Prompt]) -> tuple[Any, Any]:
        """Left-padded input ids and attention mask."""
        longest = max(len(p.token_ids) for p in prompts)
        ids = [[self.pad_id] * (longest - len(p.token_ids)) + list(p.token_ids) for p in prompts]
        mask = [[0] * (longest - len(p.token_ids)) + [1] * len(p.token_ids) for p in prompts]
        torch = self.torch
        return (
            torch.tensor(ids, dtype=torch.long, device=self.device),
            torch.tensor(mask, dtype=torch.long, device=self.device),
        )

    supports_grammars = True

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int,
        grammars: Sequence[ProgramGrammar] | None = None,
    ) -> list[str]:
        """Greedy completions; with `grammars`, each output can only be a valid program."""
        from transformers import LogitsProcessorList

        outputs: list[str] = [""] * len(prompts)
        for batch in _batches(prompts, self.settings.batch_tokens, self.settings.max_batch_size):
            ids, mask = self._padded([prompts[i] for i in batch])
            processors = None
            if grammars is not None and self.eos_id is not None:
                if self.trie is None:
                    self.trie = TokenTrie(self.tokenizer.backend)
                processor = GrammarProcessor(
                    [grammars[i] for i in batch], self.trie, ids.shape[1], self.eos_id
                )
                processors = LogitsProcessorList([processor])
            with self.torch.inference_mode():
                generated = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=self.eos_id,
                    pad_token_id=self.pad_id,
                    logits_processor=processors,
                )
            for index, row in zip(batch, generated[:, ids.shape[1] :].tolist()):
                if self.eos_id is not None and self.eos_id in row:
                    row = row[: row.index(self.eos_id)]
                outputs[index] = self.tokenizer.backend.decode(row, skip_special_tokens=True)
        return outputs

    def next_token_logprobs(
        self, prompts: Sequence[Prompt], candidates: Sequence[int]
    ) -> list[list[float]]:
        torch = self.torch
        results: list[list[float]] = [[] for _ in prompts]
        for batch in _batches(prompts, self.settings.batch_tokens, self.settings.max_batch_size):
            ids, mask = self._padded([prompts[i] for i in batch])
            with torch.inference_mode():
                # Left padding puts every prompt's last token at the final position; only that
                # position's logits are needed, so the LM head runs on one row per prompt.
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                hidden = self.scoring_decoder(
                    input_ids=ids, attention_mask=mask, position_ids=positions
                ).last_hidden_state
                logits = self.model.get_output_embeddings()(hidden[:, -1]).float()
                logprobs = torch.log_softmax(logits, dim=-1)[:, list(candidates)]
            for index, row in zip(batch, logprobs.tolist()):
                results[index] = row
        return results
