"""The transformers backend: a causal LM from a Hub id or a local folder, on CPU or GPU.

Generation is greedy, on batches of prompts of similar length (left-padded, cut under a token
budget), by proxkit's own decode loop over the model's KV cache:
- a row that ends (EOS or the token limit) stops costing steps: once a quarter of a batch has
  ended, the ended rows leave the batch and its cache, so a long output holds only its own row;
- with grammars (`--constrained`), each step's choices go through `grammar.GreedyRows`: the
  model's best token is checked against the automaton and only a refused one is replaced by
  the best allowed token, which is what masking every other token would choose.
The doc level's one-pass scoring runs one forward pass per batch and reads the next-token
log-probabilities at each prompt's last position. A batch that runs out of GPU memory is split
in halves and retried (counted in `stats()`); a single prompt that still does not fit raises,
and the runner rejects that document alone.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from proxkit.programmers.batch_limits import batch_limits
from proxkit.programmers.grammar import GreedyRows, ProgramGrammar, Steering, TokenTrie
from proxkit.programmers.lm import Completion
from proxkit.prompts import Prompt
from proxkit.tokenizer import TokenizerInfo, load_tokenizer

# Ended rows leave a batch once they are this share of it: compacting copies the whole KV
# cache, so it is done a few times per batch, not at every ended row.
COMPACT_AT = 0.25


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
    batch_tokens: int = 0  # prompt tokens per forward batch (padding included); 0: batch_limits.py
    max_batch_size: int = 0  # sequences per batch; 0: from batch_limits.py as well
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
    supports_grammars = True

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
        if not settings.batch_tokens or not settings.max_batch_size:
            limits = batch_limits(self.model, device)
            self.settings = settings = dataclasses.replace(
                settings,
                batch_tokens=settings.batch_tokens or limits.batch_tokens,
                max_batch_size=settings.max_batch_size or limits.max_batch_size,
            )
        # Only one-pass scoring uses the compiled decoder: its shapes vary by batch alone,
        # while decoding's growing KV cache would recompile at every step.
        self.scoring_decoder = self.model.get_decoder()
        if settings.compile:
            self.scoring_decoder = torch.compile(self.scoring_decoder, dynamic=True)
        self.device = device
        eos = self.tokenizer.eos_token
        self.eos_id = self.tokenizer.backend.token_to_id(eos) if eos else None
        self.pad_id = self.eos_id if self.eos_id is not None else 0
        self.steering: Steering | None = None
        self.counters = {"oom_splits": 0, "decode_steps": 0, "row_steps": 0, "compactions": 0}
        self.busy_seconds = 0.0
        # One model call at a time (doc scoring and chunk generation may come from two threads).
        self.exclusive = threading.Lock()

    # -- generation -------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int,
        grammars: Sequence[ProgramGrammar] | None = None,
    ) -> list[Completion]:
        """Greedy completions in input order; with `grammars`, each output can only be a valid
        program."""
        outputs: list[Completion] = [Completion("")] * len(prompts)

        def run(batch: list[int]) -> None:
            chosen = [grammars[i] for i in batch] if grammars is not None else None
            rows = self._decode([prompts[i] for i in batch], max_new_tokens, chosen)
            for index, row in zip(batch, rows):
                outputs[index] = self._completion(row, max_new_tokens)

        for batch in _batches(prompts, self.settings.batch_tokens, self.settings.max_batch_size):
            self._halving_on_oom(batch, run)
        return outputs

    def _decode(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int,
        grammars: Sequence[ProgramGrammar] | None,
    ) -> list[list[int]]:
        """Greedy tokens for one batch; EOS ends a row (and is kept at its end)."""
        from transformers import DynamicCache

        torch = self.torch
        eos = self.eos_id
        steer = (
            GreedyRows(grammars, self._steering())
            if grammars is not None and eos is not None
            else None
        )
        ids, mask = self._padded(prompts)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        written: list[list[int]] = [[] for _ in prompts]
        active = list(range(len(prompts)))  # batch row -> prompt
        ended = 0  # rows of the batch that ended but still take part in its steps

        def forward(input_ids: Any) -> Any:
            """Next-token logits after `input_ids`, given the cache, mask and positions."""
            return self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1]

        with torch.inference_mode():
            logits = forward(ids)
            positions = positions[:, -1:]
            running = list(range(len(active)))  # batch rows still writing
            for _ in range(max_new_tokens):
                live = logits[running] if len(running) < len(active) else logits
                rows = [active[r] for r in running]
                tokens = steer.choose(live, rows) if steer is not None else live.argmax(-1).tolist()
                self.counters["decode_steps"] += 1
                self.counters["row_steps"] += len(active)
                still = []
                for r, prompt, token in zip(running, rows, tokens):
                    written[prompt].append(token)
                    if token != eos and len(written[prompt]) < max_new_tokens:
                        still.append(r)
                if not still:
                    break
                ended += len(running) - len(still)
                running = still
                next_ids = torch.full((len(active), 1), self.pad_id, device=self.device)
                next_ids[running, 0] = torch.tensor(
                    [written[active[r]][-1] for r in running], device=self.device
                )
                if ended >= COMPACT_AT * len(active):
                    keep = torch.tensor(running, device=self.device)
                    cache.batch_select_indices(keep)
                    mask, positions, next_ids = mask[keep], positions[keep], next_ids[keep]
                    active = [active[r] for r in running]
                    running = list(range(len(active)))
                    ended = 0
                    self.counters["compactions"] += 1
                mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
                positions = positions + 1
                logits = forward(next_ids)
        return written

    def _steering(self) -> Steering:
        """Built on the first constrained call: the vocabulary's trie takes a moment."""
        if self.steering is None:
            self.steering = Steering(TokenTrie(self.tokenizer.backend), self.eos_id)  # type: ignore[arg-type]
        return self.steering

    def _completion(self, row: list[int], max_new_tokens: int) -> Completion:
        ended = self.eos_id is not None and self.eos_id in row
        if ended:
            row = row[: row.index(self.eos_id)]
        return Completion(
            self.tokenizer.backend.decode(row, skip_special_tokens=True),
            len(row),
            hit_limit=not ended and len(row) >= max_new_tokens,
        )

    # -- one-pass scoring -------------------------------------------------------------------

    def next_token_logprobs(
        self, prompts: Sequence[Prompt], candidates: Sequence[int]
    ) -> list[list[float]]:
        torch = self.torch
        results: list[list[float]] = [[] for _ in prompts]

        def run(batch: list[int]) -> None:
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

        for batch in _batches(prompts, self.settings.batch_tokens, self.settings.max_batch_size):
            self._halving_on_oom(batch, run)
        return results

    # -- shared -----------------------------------------------------------------------------

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

    def _halving_on_oom(self, batch: list[int], run: Callable[[list[int]], None]) -> None:
        """Run a batch; out of GPU memory, run its halves instead (a single prompt raises)."""
        try:
            with self.exclusive:
                started = time.perf_counter()
                try:
                    run(batch)
                finally:
                    self.busy_seconds += time.perf_counter() - started
            return
        except self.torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            self.counters["oom_splits"] += 1
        if self.device.startswith("cuda"):
            self.torch.cuda.empty_cache()
        half = len(batch) // 2
        self._halving_on_oom(batch[:half], run)
        self._halving_on_oom(batch[half:], run)

    def stats(self) -> dict[str, Any]:
        return {
            "device": self.device,
            **self.counters,
            "steps_corrected_by_grammar": self.steering.corrected if self.steering else 0,
            "batch_tokens": self.settings.batch_tokens,
            "max_batch_size": self.settings.max_batch_size,
            "busy_seconds": round(self.busy_seconds, 3),
        }
