"""The OpenAI-compatible backend: any server with the `/v1/completions` API (vLLM, SGLang,
llama.cpp server, TGI, hosted APIs), or `/v1/chat/completions` (`--api-mode chat`: the system
and user messages are sent and the server applies its own chat template).

Requests run concurrently (bounded), each with a timeout, and are retried with exponential
backoff and jitter on 429, 5xx, connection errors, timeouts and unreadable bodies. A request
that still fails comes back as a `GenerationError` in its slot: the programmer keeps that
document unrefined and records why, and the run goes on.

`OpenAIClient` is the request machinery alone; teacher annotation (`proxkit.synth`) sends its
own chat requests through it.

Prompts are sent as text without their leading BOS token, because completion servers add BOS
themselves (sending it as text would make the model read two). The tokenizer (for chunking
and prompts) is the model's own: `--tokenizer` when the served model name is not a local
folder or Hub id.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from proxkit.programmers.lm import Completion, GenerationError
from proxkit.prompts import SYSTEM_MESSAGE, Prompt
from proxkit.tokenizer import TokenizerInfo, TokenizerNotFound, load_tokenizer

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


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


class OpenAIClient:
    """Sends request bodies to one endpoint, concurrently, with retries; knows no prompts."""

    def __init__(self, settings: OpenAISettings) -> None:
        if not settings.api_base:
            raise ValueError("the openai backend needs --api-base (e.g. http://127.0.0.1:8000/v1)")
        if settings.api not in ("completions", "chat"):
            raise ValueError(f"api mode must be completions or chat, got {settings.api!r}")
        self.settings = settings
        endpoint = "/chat/completions" if settings.api == "chat" else "/completions"
        self.url = settings.api_base.rstrip("/") + endpoint
        key = os.environ.get(settings.api_key_env)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def run(self, payloads: Sequence[dict]) -> list[str | Exception]:
        """The answer text of every request body, or a `GenerationError`, in input order."""
        return [a if isinstance(a, Exception) else a.text for a in self.complete(payloads)]

    def complete(self, payloads: Sequence[dict]) -> list[Completion | Exception]:
        """Like `run`, with the generated token count and whether the token limit ended it."""
        return asyncio.run(self._run_all(payloads))

    async def _run_all(self, payloads: Sequence[dict]) -> list[Completion | Exception]:
        import httpx

        limits = httpx.Limits(max_connections=self.settings.max_concurrency)
        semaphore = asyncio.Semaphore(self.settings.max_concurrency)
        async with httpx.AsyncClient(
            limits=limits, timeout=self.settings.timeout, headers=self.headers
        ) as client:

            async def one(payload: dict) -> Completion | Exception:
                async with semaphore:
                    return await self._request(client, payload)

            return list(await asyncio.gather(*(one(p) for p in payloads)))

    async def _request(self, client, payload: dict) -> Completion | Exception:
        import httpx

        reason = "no attempt made"
        for attempt in range(self.settings.max_retries + 1):
            if attempt:
                delay = min(self.settings.backoff * 2 ** (attempt - 1), 30.0)
                await asyncio.sleep(delay * (0.5 + random.random()))
            try:
                response = await client.post(self.url, json=payload)
            except httpx.TimeoutException:
                reason = f"timed out after {self.settings.timeout:g} s"
                continue
            except httpx.TransportError as exc:
                reason = f"connection error: {type(exc).__name__}: {exc}"
                continue
            if response.status_code in RETRY_STATUS:
                reason = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code >= 400:
                return GenerationError(f"HTTP {response.status_code}: {response.text[:200]}")
            try:
                body = response.json()
                choice = body["choices"][0]
                text = (
                    choice["message"]["content"] if self.settings.api == "chat" else choice["text"]
                )
            except (ValueError, KeyError, IndexError, TypeError):
                reason = f"unreadable response body: {response.text[:200]!r}"
                continue
            if not isinstance(text, str):
                reason = f"response text is not a string: {text!r}"[:200]
                continue
            usage = body.get("usage") if isinstance(body, dict) else None
            tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
            return Completion(
                text,
                tokens if isinstance(tokens, int) else 0,
                hit_limit=choice.get("finish_reason") == "length",
            )
        return GenerationError(f"gave up after {self.settings.max_retries + 1} attempts: {reason}")


class OpenAIBackend:
    """A refining model behind a server: proxkit's prompts in, program text out."""

    def __init__(self, model: str, settings: OpenAISettings, tokenizer: str | None = None) -> None:
        self.client = OpenAIClient(settings)
        self.name = model
        self.settings = settings
        try:
            self.tokenizer: TokenizerInfo = load_tokenizer(tokenizer or model)
        except TokenizerNotFound as exc:
            raise TokenizerNotFound(
                f"{exc}; for a served model, pass its tokenizer with --tokenizer FOLDER_OR_HUB_ID"
            ) from exc

    def _prompt_text(self, prompt: Prompt) -> str:
        bos = self.tokenizer.bos_token
        return prompt.text[len(bos) :] if bos and prompt.text.startswith(bos) else prompt.text

    def generate(
        self, prompts: Sequence[Prompt], max_new_tokens: int
    ) -> list[Completion | Exception]:
        return self.client.complete([self._payload(p, max_new_tokens) for p in prompts])

    def _payload(self, prompt: Prompt, max_new_tokens: int) -> dict:
        request = {"model": self.name, "max_tokens": max_new_tokens, "temperature": 0.0}
        if self.settings.api == "chat":
            system = {"role": "system", "content": SYSTEM_MESSAGE}
            return {**request, "messages": [system, {"role": "user", "content": prompt.user}]}
        return {**request, "prompt": self._prompt_text(prompt)}
