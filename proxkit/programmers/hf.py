"""The transformers backend: a causal LM from a Hub id or a local folder, on CPU or GPU.

Generation is greedy, in one of two ways (`HFSettings.generation`):
- `continuous`: transformers' continuous batching (`continuous.py`). Requests join and leave
  the running batch one by one, so a long output holds only its own slot. Its logits cannot
  pass through proxkit's grammar processor, so with a grammar every output is checked against
  it token by token (`grammar.follows`) and only the ones constrained decoding would have
  steered elsewhere are generated again on the static path, under the grammar: the programs
  are exactly those of constrained static decoding, and none falls outside the grammar.
- `static`: prompts sorted by length, cut into left-padded batches under a token budget, each
  run by `generate` until its longest output ends; the grammar runs as a logits processor.
`auto` picks per device, from `bench/bench_gpu_refine.py`'s measurements (see `auto_generation`).

The doc level's one-pass scoring runs one forward pass per batch and reads the next-token
log-probabilities at each prompt's last position. A batch that runs out of GPU memory is split
in halves and retried (counted in `stats()`); a single prompt that still does not fit raises,
and the runner rejects that document alone.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from proxkit.programmers.continuous import BusyClock, ContinuousGenerator, Generated, unavailable
from proxkit.programmers.grammar import GrammarProcessor, ProgramGrammar, TokenTrie, follows
from proxkit.programmers.lm import Completion, Completions, GenerationError
from proxkit.prompts import Prompt
from proxkit.tokenizer import TokenizerInfo, load_tokenizer

GENERATION_MODES = ("auto", "continuous", "static")
# Longer prompts (a chunk made of one enormous line) are generated on the static path, so
# one request cannot take the continuous batch's whole cache.
CONTINUOUS_MAX_PROMPT_TOKENS = 4096
# Without flash attention, continuous batching attends each step's tokens to all the batch's
# cached tokens under one dense mask (steps x cache): on CPU both stay modest.
CPU_CACHE_TOKENS = 32_768
CPU_STEP_TOKENS = 2_048


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
    max_batch_size: int = 64  # sequences per batch (static) / per step (continuous)
    threads: int = 0  # CPU threads for torch; 0: one per core
    compile: bool = False  # torch.compile the decoder used by one-pass scoring
    generation: str = "auto"  # continuous, static, or auto (per device)
    cache_tokens: int = 0  # continuous batching's KV cache; 0: from free GPU memory / 32k on CPU


def auto_generation(device: str) -> str:
    """Continuous batching only on a GPU with flash attention. Without it, transformers'
    continuous batching attends each step's tokens to every cached token of the batch under
    one dense mask, so a step costs more the more requests run: measured on CPU
    (bench/bench_generation.py), its throughput falls as concurrency grows while static
    batches' rises, and it lost end to end (bench/bench_gpu_refine.py; figures in the README)."""
    if not device.startswith("cuda"):
        return "static"
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    return "continuous" if is_flash_attn_2_available() or is_flash_attn_3_available() else "static"


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

        if settings.generation not in GENERATION_MODES:
            raise ValueError(f"generation must be one of {GENERATION_MODES}")
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
        self.generation = (
            auto_generation(device) if settings.generation == "auto" else settings.generation
        )
        if self.generation == "continuous" and (reason := unavailable()):
            if settings.generation == "continuous":
                from proxkit.config import ConfigError

                raise ConfigError(
                    f"--generation continuous: {reason}; install the tested release "
                    "(pip install 'proxkit[transformers]') or use --generation static"
                )
            self.generation = "static"
        eos = self.tokenizer.eos_token
        self.eos_id = self.tokenizer.backend.token_to_id(eos) if eos else None
        self.pad_id = self.eos_id if self.eos_id is not None else 0
        self.trie: TokenTrie | None = None  # built on the first constrained call
        self.continuous: ContinuousGenerator | None = None  # started on the first call
        self.continuous_stopped: str | None = None  # why continuous batching was given up
        self.clock = BusyClock()
        self.oom_splits = 0
        # One model call at a time: scoring, static batches, and the continuous loop (paused).
        self.exclusive = threading.Lock()

    # -- generation -------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int,
        grammars: Sequence[ProgramGrammar] | None = None,
    ) -> list[Completion | Exception]:
        """Greedy completions in input order; with `grammars`, each output can only be a valid
        program."""
        return self.submit(prompts, max_new_tokens, grammars)()

    def submit(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int,
        grammars: Sequence[ProgramGrammar] | None = None,
    ) -> Completions:
        """Start generating; on the continuous path this returns while the model works."""
        if self.generation == "static" or self.continuous_stopped or not prompts:
            done = self._static(prompts, max_new_tokens, grammars)
            return lambda: done
        fits = [len(p.token_ids) <= CONTINUOUS_MAX_PROMPT_TOKENS for p in prompts]
        queued = [p.token_ids for p, ok in zip(prompts, fits) if ok]
        futures = iter(self._continuous(max_new_tokens).submit(queued, max_new_tokens))
        slots = [next(futures) if ok else None for ok in fits]

        def result() -> list[Completion | Exception]:
            outputs: list[Completion | Exception | None] = [None] * len(prompts)
            again: list[int] = []
            for index, slot in enumerate(slots):
                if slot is None:
                    again.append(index)
                    continue
                generated: Generated = slot.result()
                if generated.error is not None:
                    if not self._continuous_alive():
                        again.append(index)  # the manager died: the static path takes over
                    else:
                        outputs[index] = GenerationError(generated.error)
                    continue
                grammar = grammars[index] if grammars is not None else None
                if grammar is not None and not follows(
                    grammar, generated.tokens, self._trie(), self.eos_id
                ):
                    again.append(index)
                    continue
                outputs[index] = self._completion(list(generated.tokens), max_new_tokens)
            if again:
                redone = self._static(
                    [prompts[i] for i in again],
                    max_new_tokens,
                    [grammars[i] for i in again] if grammars is not None else None,
                )
                for index, completion in zip(again, redone):
                    regenerated = slots[index] is not None and grammars is not None
                    outputs[index] = (
                        Completion(
                            completion.text, completion.tokens, completion.hit_limit, regenerated
                        )
                        if isinstance(completion, Completion)
                        else completion
                    )
            return outputs  # type: ignore[return-value]

        return result

    def _continuous(self, max_new_tokens: int) -> ContinuousGenerator:
        if self.continuous is None:
            on_gpu = self.device.startswith("cuda")
            self.continuous = ContinuousGenerator(
                self.model,
                self.eos_id,
                self.pad_id,
                max_batch_tokens=None
                if on_gpu
                else min(self.settings.batch_tokens, CPU_STEP_TOKENS),
                max_requests=self.settings.max_batch_size,
                cache_tokens=self.settings.cache_tokens or (0 if on_gpu else CPU_CACHE_TOKENS),
                max_prompt_tokens=CONTINUOUS_MAX_PROMPT_TOKENS,
                max_new_tokens=max_new_tokens,
                clock=self.clock,
            )
        return self.continuous

    def _continuous_alive(self) -> bool:
        if self.continuous is not None and not self.continuous.running():
            if self.continuous_stopped is None:
                import sys

                self.continuous_stopped = "the continuous batching thread stopped"
                print(
                    f"warning: {self.continuous_stopped}; generating on static batches from now on",
                    file=sys.stderr,
                )
            return False
        return True

    def _trie(self) -> TokenTrie:
        if self.trie is None:
            self.trie = TokenTrie(self.tokenizer.backend)
        return self.trie

    def _completion(self, row: list[int], max_new_tokens: int) -> Completion:
        ended = self.eos_id is not None and self.eos_id in row
        if ended:
            row = row[: row.index(self.eos_id)]
        return Completion(
            self.tokenizer.backend.decode(row, skip_special_tokens=True),
            len(row),
            hit_limit=not ended and len(row) >= max_new_tokens,
        )

    def _static(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int,
        grammars: Sequence[ProgramGrammar] | None,
    ) -> list[Completion | Exception]:
        from transformers import LogitsProcessorList

        outputs: list[Completion | Exception] = [Completion("")] * len(prompts)

        def run(batch: list[int]) -> None:
            ids, mask = self._padded([prompts[i] for i in batch])
            processors = None
            if grammars is not None and self.eos_id is not None:
                processor = GrammarProcessor(
                    [grammars[i] for i in batch], self._trie(), ids.shape[1], self.eos_id
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
                outputs[index] = self._completion(row, max_new_tokens)

        for batch in _batches(prompts, self.settings.batch_tokens, self.settings.max_batch_size):
            self._halving_on_oom(batch, run)
        return outputs

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
        paused = self.continuous.paused() if self.continuous is not None else nullcontext()
        self.clock.enter()
        try:
            with self.exclusive, paused:
                run(batch)
            return
        except self.torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            self.oom_splits += 1
        finally:
            self.clock.exit()
        if self.device.startswith("cuda"):
            self.torch.cuda.empty_cache()
        half = len(batch) // 2
        self._halving_on_oom(batch[:half], run)
        self._halving_on_oom(batch[half:], run)

    def stats(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "generation": self.generation,
            "continuous_stopped": self.continuous_stopped,
            "oom_splits": self.oom_splits,
            "busy_seconds": round(self.clock.total(), 3),
        }

    def close(self) -> None:
        if self.continuous is not None:
            self.continuous.close()
            self.continuous = None
