"""The ProX grammar inside vLLM: a logits processor for vLLM's engine (`vllm.v1` interface).

A request carries its grammar in `SamplingParams.extra_args["prox_grammar"]` (`server_grammar.to_args`:
stage, first and last line, chunk text); requests without it are left alone. Each step, for
every row under a grammar, the model's best token is checked against the automaton and only
a refused one is replaced by the best allowed token (`grammar.Steering`): exactly what
masking every disallowed token would make greedy decoding choose, at one automaton step per
row while the model writes valid programs. Rows follow the tokens vLLM really sampled, read
from each request's live output list. Only greedy requests (temperature 0, proxkit's only
kind) can be steered this way; a sampled request with a grammar is refused.

vLLM loads this class from the `vllm.logits_processors` entry point in pyproject.toml wherever
proxkit is installed, `vllm serve` included (requests then send the grammar as `vllm_xargs`,
`openai.py`, and a server keeps the same guarantee as the offline engine); proxkit's vLLM
backend passes it to `LLM(logits_processors=[...])` only where the entry point is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from proxkit.programmers.grammar import ProgramGrammar, State, Steering, TokenTrie
from proxkit.programmers.server_grammar import ARGUMENT, from_args


@dataclass
class _Row:
    grammar: ProgramGrammar
    output: list[int]  # vLLM's live list of the request's generated tokens
    state: State | None
    consumed: int = 0  # tokens of `output` already fed to the automaton
    expected: tuple[int, State | None] | None = None  # the token checked last step, its state


class ProgramGrammarProcessor(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        grammar = from_args(sampling_params.extra_args)
        if grammar is not None and sampling_params.temperature > 0:
            raise ValueError(f"{ARGUMENT} steers greedy decoding only (temperature 0)")

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.model_path = vllm_config.model_config.tokenizer
        self.steering: Steering | None = None  # built on the first request with a grammar
        self.rows: dict[int, _Row] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, _prompt, output in batch_update.added:
            grammar = from_args(params.extra_args) if params is not None else None
            if grammar is None:
                self.rows.pop(index, None)
            else:
                self.rows[index] = _Row(grammar, output, grammar.start())
        for a, b, direction in batch_update.moved:
            row_a, row_b = self.rows.pop(a, None), self.rows.pop(b, None)
            if row_a is not None:
                self.rows[b] = row_a
            if direction == MoveDirectionality.SWAP and row_b is not None:
                self.rows[a] = row_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        steer = self._steering()
        indices = sorted(self.rows)
        best = logits[indices].argmax(-1).tolist()
        for index, token in zip(indices, best):
            row = self.rows[index]
            for written in row.output[row.consumed :]:  # what was sampled since the last step
                if row.expected is not None and row.expected[0] == written:
                    row.state = row.expected[1]
                else:
                    row.state = steer.after(row.grammar, row.state, written)
                row.expected = None
            row.consumed = len(row.output)
            after = steer.after(row.grammar, row.state, token)
            if after is None:
                token = steer.best_allowed(row.grammar, row.state, logits[index])
                after = steer.after(row.grammar, row.state, token)
                value = logits[index, token].clone()
                logits[index] = float("-inf")
                logits[index, token] = value
            row.expected = (token, after)
        return logits

    def _steering(self) -> Steering:
        if self.steering is None:
            from proxkit.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(self.model_path)
            eos = tokenizer.backend.token_to_id(tokenizer.eos_token)
            self.steering = Steering(TokenTrie(tokenizer.backend), eos)
        return self.steering
