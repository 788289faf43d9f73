"""The vLLM backend (extra `[vllm]`, CUDA GPUs): offline `LLM.generate` on token-id prompts.

Prompts go in as the exact token ids proxkit built (one BOS, template included), so vLLM
neither re-tokenizes nor adds a second BOS. Prefix caching is on: every prompt of a stage
shares the chat template's prefix. vLLM schedules its own batches; outputs come back in input
order. For the one-pass doc level, one token is sampled with the top-20 log-probabilities and
the keep/drop candidates are read from them (a candidate outside the top 20 gets the 20th
value, an upper bound; trained refining models put both answers at the top).
"""

from __future__ import annotations

from collections.abc import Sequence

from proxkit.programmers.hf import ModelNotFound, missing_model_message
from proxkit.programmers.lm import Completion
from proxkit.prompts import Prompt
from proxkit.tokenizer import TokenizerInfo, load_tokenizer

TOP_LOGPROBS = 20


class VLLMBackend:
    def __init__(self, name_or_path: str, tensor_parallel: int = 1, dtype: str = "auto") -> None:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ModelNotFound(
                "the vllm backend needs vLLM and a CUDA GPU: pip install 'proxkit[vllm]'"
            ) from exc
        self.name = name_or_path
        try:
            self.tokenizer: TokenizerInfo = load_tokenizer(name_or_path)
            self.llm = LLM(
                model=name_or_path,
                tensor_parallel_size=tensor_parallel,
                dtype=dtype,
                enable_prefix_caching=True,
            )
        except Exception as exc:
            raise ModelNotFound(missing_model_message(name_or_path, exc)) from exc

    def _run(self, prompts: Sequence[Prompt], params):
        requests = [{"prompt_token_ids": list(p.token_ids)} for p in prompts]
        return self.llm.generate(requests, params, use_tqdm=False)

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int) -> list[Completion]:
        from vllm import SamplingParams

        params = SamplingParams(
            temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=True
        )
        completions = []
        for output in self._run(prompts, params):
            best = output.outputs[0]
            tokens = len(best.token_ids) - (best.finish_reason == "stop")  # EOS is not counted
            completions.append(Completion(best.text, tokens, best.finish_reason == "length"))
        return completions

    def next_token_logprobs(
        self, prompts: Sequence[Prompt], candidates: Sequence[int]
    ) -> list[list[float]]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=TOP_LOGPROBS)
        results = []
        for output in self._run(prompts, params):
            top = output.outputs[0].logprobs[0]  # {token id: Logprob} at the first position
            floor = min(entry.logprob for entry in top.values())
            results.append([top[c].logprob if c in top else floor for c in candidates])
        return results
