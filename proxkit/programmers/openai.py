"""The OpenAI-compatible backend: any server with the `/v1/completions` API (vLLM, SGLang,
llama.cpp server, TGI, hosted APIs), or `/v1/chat/completions` (`--api-mode chat`: the system
and user messages are sent and the server applies its own chat template).

Requests run concurrently (bounded), each with a timeout, and are retried with exponential
backoff and jitter on 429, 5xx, connection errors, timeouts and bodies that are not JSON. A
request that still fails comes back as a `GenerationError` in its slot: the programmer keeps
that document unrefined and records why, and the run goes on. A server that no longer answers
at all stops the run (`BackendGone`): the finished units stay, and the same command resumes.

What the run asks of the server is checked at start-up, never assumed (`BackendCannot`):
- `--constrained`: the grammar goes with every request, the first way the server takes it:
  1. `vllm_xargs`: the exact ProX automaton, run by proxkit's logits processor, which every
     vLLM engine (`vllm serve` included) loads where proxkit is installed: the same programs
     as the offline vLLM and transformers backends. Probed by a sampled request, which that
     processor (and nothing else) refuses by name.
  2. `structured_outputs.grammar` (vLLM without proxkit) as Lark, or 3. `ebnf` (SGLang) as
     xgrammar's EBNF (`server_grammar.grammar_text`): the server's own engine keeps the
     context-free part of the grammar. Probed by forcing `keep_doc()`, then `drop_doc()`, on
     one prompt (a server that ignores the field cannot write both), and by one chunk grammar.
  Every output is checked against the exact automaton when it comes back; one outside it (a
  normalize source written twice, which no context-free grammar can forbid) is a
  `GenerationError`: the document stays unrefined, counted, and the program is never applied.
- `--doc-scoring forward`: the exact log-probabilities of the keep and drop tokens, asked as
  `logprob_token_ids` (vLLM) on the prompt's own token ids (completions mode only: in chat
  mode the server templates the prompt, so the answer's tokens are not known exactly).

`OpenAIClient` is the request machinery alone; teacher annotation (`proxkit.synth`) sends its
own chat requests through it.

Prompts are sent as text without their leading BOS token, because completion servers add BOS
themselves (sending it as text would make the model read two). The tokenizer (for chunking
and prompts) is the model's own: `--tokenizer` when the served model name is not a local
folder or Hub id.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from proxkit.programmers.base import BackendCannot, BackendGone
from proxkit.programmers.grammar import ProgramGrammar
from proxkit.programmers.lm import DROP, KEEP, Completion, GenerationError
from proxkit.programmers.server_grammar import ARGUMENT, grammar_text, to_args
from proxkit.prompts import SYSTEM_MESSAGE, Prompt, doc_prompts
from proxkit.tokenizer import TokenizerInfo, TokenizerNotFound, load_tokenizer

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
Read = TypeVar("Read")


@dataclass(frozen=True)
class OpenAISettings:
    api_base: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 32
    timeout: float = 120.0
    max_retries: int = 4
    backoff: float = 0.5  # seconds before the first retry; doubles, capped at 30 s
    api: str = "completions"  # or "chat": system + user messages, templated by the server

    @classmethod
    def from_config(cls, config: Any, api: str) -> OpenAISettings:
        """From any configuration with the server fields (refine's or annotate's)."""
        return cls(
            api_base=config.api_base,
            api_key_env=config.api_key_env,
            max_concurrency=config.max_concurrency,
            timeout=config.request_timeout,
            max_retries=config.max_retries,
            api=api,
        )


class Unanswered(GenerationError):
    """A request that never got an HTTP answer (connection errors, timeouts): the server may
    be gone, which the backend then checks."""


class OpenAIClient:
    """Sends request bodies to one endpoint, concurrently, with retries; knows no prompts."""

    def __init__(self, settings: OpenAISettings) -> None:
        if not settings.api_base:
            raise ValueError("the openai backend needs --api-base (e.g. http://127.0.0.1:8000/v1)")
        if settings.api not in ("completions", "chat"):
            raise ValueError(f"api mode must be completions or chat, got {settings.api!r}")
        self.settings = settings
        self.base = settings.api_base.rstrip("/")
        self.url = self.base + ("/chat/completions" if settings.api == "chat" else "/completions")
        key = os.environ.get(settings.api_key_env)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def run(self, payloads: Sequence[dict]) -> list[str | Exception]:
        """The answer text of every request body, or a `GenerationError`, in input order."""
        return [a if isinstance(a, Exception) else a.text for a in self.complete(payloads)]

    def complete(self, payloads: Sequence[dict]) -> list[Completion | Exception]:
        """Like `run`, with the generated token count and whether the token limit ended it."""
        return self.send(payloads, self._completion)

    def send(
        self, payloads: Sequence[dict], read: Callable[[dict], Read], url: str | None = None
    ) -> list[Read | Exception]:
        """`read(body)` of every answer, in input order; a body `read` cannot use (it raises
        KeyError, IndexError, TypeError or ValueError) is a `GenerationError`, not retried."""
        return asyncio.run(self._run_all(payloads, read, url or self.url))

    def _completion(self, body: dict) -> Completion:
        choice = body["choices"][0]
        text = choice["message"]["content"] if self.settings.api == "chat" else choice["text"]
        if not isinstance(text, str):
            raise TypeError(f"response text is not a string: {text!r}")
        usage = body.get("usage")
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        return Completion(
            text,
            tokens if isinstance(tokens, int) else 0,
            hit_limit=choice.get("finish_reason") == "length",
        )

    async def _run_all(self, payloads: Sequence[dict], read, url: str) -> list:
        import httpx

        limits = httpx.Limits(max_connections=self.settings.max_concurrency)
        semaphore = asyncio.Semaphore(self.settings.max_concurrency)
        async with httpx.AsyncClient(
            limits=limits, timeout=self.settings.timeout, headers=self.headers
        ) as client:

            async def one(payload: dict):
                async with semaphore:
                    return await self._request(client, payload, read, url)

            return list(await asyncio.gather(*(one(p) for p in payloads)))

    async def _request(self, client, payload: dict, read, url: str):
        import httpx

        reason, answered = "no attempt made", False
        for attempt in range(self.settings.max_retries + 1):
            if attempt:
                delay = min(self.settings.backoff * 2 ** (attempt - 1), 30.0)
                await asyncio.sleep(delay * (0.5 + random.random()))
            try:
                response = await client.post(url, json=payload)
            except httpx.TimeoutException:
                reason, answered = f"timed out after {self.settings.timeout:g} s", False
                continue
            except httpx.TransportError as exc:
                reason, answered = f"connection error: {type(exc).__name__}: {exc}", False
                continue
            answered = True
            if response.status_code in RETRY_STATUS:
                reason = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code >= 400:
                return GenerationError(f"HTTP {response.status_code}: {response.text[:200]}")
            try:
                body = response.json()
            except ValueError:
                reason = f"unreadable response body: {response.text[:200]!r}"
                continue
            try:
                return read(body)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                return GenerationError(
                    f"unexpected response ({type(exc).__name__}: {exc}): {response.text[:200]!r}"
                )
        failed = Unanswered if not answered else GenerationError
        return failed(f"gave up after {self.settings.max_retries + 1} attempts: {reason}")

    def alive(self) -> bool:
        """Whether the server answers at all (any HTTP status on its model list)."""
        import httpx

        try:
            httpx.get(self.base + "/models", headers=self.headers, timeout=self.settings.timeout)
        except httpx.HTTPError:
            return False
        return True


@dataclass(frozen=True)
class GrammarField:
    """One way a server takes a grammar: the request fields carrying a ProX grammar, and those
    carrying a grammar that allows only one text (`forcing`; None where the way is probed by
    its refusal of a sampled request instead)."""

    name: str
    fields: Callable[[ProgramGrammar], dict]
    forcing: Callable[[str], dict] | None


GRAMMAR_FIELDS = (
    GrammarField("vllm_xargs", lambda g: {"vllm_xargs": to_args(g)}, None),
    GrammarField(
        "structured_outputs",
        lambda g: {"structured_outputs": {"grammar": grammar_text(g, "lark")}},
        lambda text: {"structured_outputs": {"grammar": f"start: {json.dumps(text)}"}},
    ),
    GrammarField(
        "ebnf",
        lambda g: {"ebnf": grammar_text(g, "ebnf")},
        lambda text: {"ebnf": f"root ::= {json.dumps(text)}"},
    ),
)
PROBE_TOKENS = 16  # enough for a forced answer, few enough to be quick


class OpenAIBackend:
    """A refining model behind a server: proxkit's prompts in, program text out.

    `grammars` and `token_logprobs`: what the run will ask of the server (`--constrained`,
    `--doc-scoring forward`), found out now; a server that cannot is refused here."""

    def __init__(
        self,
        model: str,
        settings: OpenAISettings,
        tokenizer: str | None = None,
        grammars: bool = False,
        token_logprobs: bool = False,
    ) -> None:
        self.client = OpenAIClient(settings)
        self.name = model
        self.settings = settings
        try:
            self.tokenizer: TokenizerInfo = load_tokenizer(tokenizer or model)
        except TokenizerNotFound as exc:
            raise TokenizerNotFound(
                f"{exc}; for a served model, pass its tokenizer with --tokenizer FOLDER_OR_HUB_ID"
            ) from exc
        self.counters = {"requests": 0, "outside_grammar": 0}
        self.probe = doc_prompts(["A short document to probe the server."], self.tokenizer)[0]
        self.grammar_field = self._find_grammar_field() if grammars else None
        self.supports_grammars = self.grammar_field is not None
        if token_logprobs:
            self._check_token_logprobs()

    def _prompt_text(self, prompt: Prompt) -> str:
        bos = self.tokenizer.bos_token
        return prompt.text[len(bos) :] if bos and prompt.text.startswith(bos) else prompt.text

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int,
        grammars: Sequence[ProgramGrammar] | None = None,
    ) -> list[Completion | Exception]:
        """Greedy completions in input order; with `grammars`, only programs of the grammar
        (others become `GenerationError`s)."""
        if grammars is None:
            return self._send([self._payload(p, max_new_tokens) for p in prompts])
        if self.grammar_field is None:
            raise BackendCannot("grammars were not probed on this server: pass grammars=True")
        fields = self.grammar_field.fields
        completions = self._send(
            [{**self._payload(p, max_new_tokens), **fields(g)} for p, g in zip(prompts, grammars)]
        )
        return [self._checked(c, g) for c, g in zip(completions, grammars)]

    def next_token_logprobs(
        self, prompts: Sequence[Prompt], candidates: Sequence[int]
    ) -> list[list[float]]:
        """The exact log-probability of each candidate as the next token, on the prompt's own
        token ids."""
        payloads = [self._logprobs_payload(p.token_ids, candidates) for p in prompts]
        results = self._send(payloads, _candidate_logprobs(candidates))
        for result in results:
            if isinstance(result, Exception):
                raise GenerationError(f"keep scores from the server: {result}")
        return results  # type: ignore[return-value]

    def stats(self) -> dict[str, Any]:
        grammar = self.grammar_field.name if self.grammar_field is not None else None
        return {"engine": "openai", "grammar": grammar, **self.counters}

    def _payload(self, prompt: Prompt, max_new_tokens: int) -> dict:
        request = {"model": self.name, "max_tokens": max_new_tokens, "temperature": 0.0}
        if self.settings.api == "chat":
            system = {"role": "system", "content": SYSTEM_MESSAGE}
            return {**request, "messages": [system, {"role": "user", "content": prompt.user}]}
        return {**request, "prompt": self._prompt_text(prompt)}

    def _logprobs_payload(self, token_ids: Sequence[int], candidates: Sequence[int]) -> dict:
        return {
            "model": self.name,
            "prompt": list(token_ids),
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": len(candidates),
            "logprob_token_ids": list(candidates),
            "return_tokens_as_token_ids": True,
        }

    def _send(self, payloads: Sequence[dict], read: Callable[[dict], Any] | None = None) -> list:
        """The client's answers; a request nobody answered stops the run if the server is
        gone (rather than leaving every later document unrefined)."""
        self.counters["requests"] += len(payloads)
        answers = self.client.send(payloads, read or self.client._completion)
        unanswered = next((a for a in answers if isinstance(a, Unanswered)), None)
        if unanswered is not None and not self.client.alive():
            raise BackendGone(f"the server at {self.client.base} does not answer ({unanswered})")
        return answers

    def _checked(self, completion: Completion | Exception, grammar: ProgramGrammar):
        """The completion if the exact automaton takes it (cut by the token limit: as far as
        it goes), else a `GenerationError`."""
        if isinstance(completion, Exception):
            return completion
        state = grammar.feed(grammar.start(), completion.text)
        if state is not None and (completion.hit_limit or grammar.accepts(state)):
            return completion
        self.counters["outside_grammar"] += 1
        return GenerationError(
            f"the server wrote a program outside the grammar: {completion.text[:200]!r}"
        )

    def _find_grammar_field(self) -> GrammarField:
        reasons = []
        for way in GRAMMAR_FIELDS:
            reason = self._probe_grammar(way)
            if reason is None:
                return way
            reasons.append(f"{way.name}: {reason}")
        raise BackendCannot(
            f"--constrained: the server at {self.client.base} keeps no ProX grammar "
            f"({'; '.join(reasons)}); run it where proxkit is installed (a vLLM server then "
            "loads proxkit's grammar), or pass --no-constrained"
        )

    def _probe_grammar(self, way: GrammarField) -> str | None:
        """Why the server does not keep grammars sent this way; None if it does."""
        if way.forcing is None:
            # proxkit's logits processor refuses a sampled request under its grammar, by name.
            sampled = {**self._payload(self.probe, 1), "temperature": 1.0}
            [answer] = self._send([{**sampled, **way.fields(ProgramGrammar("doc"))}])
            if (
                isinstance(answer, Exception)
                and "HTTP 400" in str(answer)
                and ARGUMENT in str(answer)
            ):
                return None
            return str(answer) if isinstance(answer, Exception) else "not read by the server"
        text = self.probe.user
        chunk = ProgramGrammar("chunk", 0, 0, text)
        keep, drop, program = self._send(
            [
                {**self._payload(self.probe, PROBE_TOKENS), **way.forcing(KEEP)},
                {**self._payload(self.probe, PROBE_TOKENS), **way.forcing(DROP)},
                {**self._payload(self.probe, PROBE_TOKENS), **way.fields(chunk)},
            ]
        )
        for answer in (keep, drop, program):
            if isinstance(answer, Exception):
                return str(answer)
        if keep.text.strip() != KEEP or drop.text.strip() != DROP:
            return f"ignored (forced to {KEEP} and {DROP}, it wrote {keep.text!r}, {drop.text!r})"
        checked = self._checked(program, chunk)
        return str(checked) if isinstance(checked, Exception) else None

    def _check_token_logprobs(self) -> None:
        if self.settings.api == "chat":
            raise BackendCannot(
                "--doc-scoring forward: in chat mode the server templates the prompt, so the "
                "keep and drop tokens cannot be scored exactly; use --doc-scoring generate"
            )
        # The vocabulary's last two tokens: never the top ones, so a server that returns its
        # top log-probabilities instead of the asked ones is caught.
        size = self.tokenizer.backend.get_vocab_size(with_added_tokens=False)
        candidates = [size - 1, size - 2]
        payload = self._logprobs_payload(self.probe.token_ids, candidates)
        [answer] = self._send([payload], _candidate_logprobs(candidates))
        if isinstance(answer, Exception):
            raise BackendCannot(
                f"--doc-scoring forward: the server at {self.client.base} gives no "
                f"log-probabilities of chosen tokens (logprob_token_ids): {answer}; use "
                "--doc-scoring generate"
            )


def _candidate_logprobs(candidates: Sequence[int]) -> Callable[[dict], list[float]]:
    """Reads the log-probabilities of `candidates` at the first generated position (vLLM
    returns them beside the sampled token's, keyed "token_id:N")."""

    def read(body: dict) -> list[float]:
        first = body["choices"][0]["logprobs"]["top_logprobs"][0]
        return [float(first[f"token_id:{c}"]) for c in candidates]

    return read
