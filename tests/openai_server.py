"""A real OpenAI-compatible completions server for the tests, with faults on demand.

    python tests/openai_server.py [--model FOLDER | --teacher] [--port N]   # prints "READY <port>"

It serves POST /v1/completions and /v1/chat/completions (the user message is the prompt).

Without --model it answers like a scripted refining model: doc prompts get drop_doc() when the
document holds "SPAM", else keep_doc(); chunk prompts get remove_lines() for numbered lines
holding "MENU" and normalize("&nbsp;", " ") where the chunk holds "&nbsp;", else keep_doc().
It reads no grammar and no log-probability request (like a server without them, it ignores
fields it does not know). With --teacher it answers as a scripted teacher (`teacher`). With
--model it serves a local causal LM through the transformers backend, so real model outputs
cross the real API, and takes what a vLLM server with proxkit installed takes: the ProX
grammar in `vllm_xargs` (greedy only, as proxkit's logits processor), and `logprob_token_ids`
on token-id prompts.

Faults are asked for by markers in the prompt, counted per distinct prompt:
  FAULT:500xN     the first N requests get HTTP 500        FAULT:always500  every request does
  FAULT:dropxN    the first N connections are cut          FAULT:garbagexN  200 with a non-JSON body
  FAULT:slowxN    the first N answers come after 4 s       FAULT:400        a client error, never retried
GET /stats returns {"requests": n, "distinct_prompts": m}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from proxkit.programmers.server_grammar import ARGUMENT, from_args
from proxkit.prompts import Prompt, llama2_chat

FAULT = re.compile(r"FAULT:(500|drop|garbage|slow)x(\d+)|FAULT:(always500|400)")


def scripted(prompt: str) -> str:
    if "[doc]" not in prompt:
        return "drop_doc()" if "SPAM" in prompt else "keep_doc()"
    program = []
    for match in re.finditer(r"^\[(\d+)\](.*)$", prompt, re.MULTILINE):
        if "MENU" in match.group(2):
            line = int(match.group(1))
            program.append(f"remove_lines(line_start={line}, line_end={line})")
    if "&nbsp;" in prompt:
        program.append('normalize(source_str="&nbsp;", target_str=" ")')
    return "\n".join(program) or "keep_doc()"


def cleaning_teacher(text: str, retry: bool) -> str:
    """The scripted teacher of `prox annotate --teacher-mode clean`: deletes the lines holding
    MENU and the strings " [edit]", and writes a space for "&nbsp;" (a replacement). Markers:
    TEACHER:fixable (no markers, then good on the retry), TEACHER:outofrange (a refusal between
    the markers), TEACHER:syntax (no end marker) and TEACHER:rewrite (adds a sentence)."""
    if "TEACHER:fixable" in text and not retry:
        return text
    if "TEACHER:outofrange" in text:
        return "<<<CLEAN\nI'm sorry, but I can't help with that.\nCLEAN>>>"
    cleaned = "\n".join(line for line in text.split("\n") if "MENU" not in line)
    cleaned = cleaned.replace(" [edit]", "").replace("&nbsp;", " ")
    if "TEACHER:rewrite" in text:
        cleaned += "\nIn short, the page explains it all clearly."
    return "<<<CLEAN\n" + cleaned + ("" if "TEACHER:syntax" in text else "\nCLEAN>>>")


def teacher(messages: list[dict]) -> str:
    """A scripted teacher for `prox annotate`. Documents holding "CLICK" (spam) score low; chunk lines
    holding MENU are removed and "&nbsp;" is normalized. Markers ask for bad answers:
    TEACHER:nonjson, TEACHER:refuse, TEACHER:missing (always), TEACHER:fixable (bad, then good
    on the retry), TEACHER:outofrange and TEACHER:syntax (chunk programs, always). Chunks sent
    to be cleaned (between <<<TEXT and TEXT>>>) go to `cleaning_teacher`."""
    first_ask = messages[1]["content"]
    retry = len(messages) > 2
    if "<<<TEXT\n" in first_ask:
        text = first_ask.split("<<<TEXT\n", 1)[1].rsplit("\nTEXT>>>", 1)[0]
        return cleaning_teacher(text, retry)
    if "educational_value" in first_ask:
        document = first_ask.split("<<<DOCUMENT", 1)[1]
        if "TEACHER:nonjson" in document or ("TEACHER:fixable" in document and not retry):
            return "This page looks fine to me."
        if "TEACHER:refuse" in document:
            return "I'm sorry, but I can't help with that."
        if "TEACHER:missing" in document:
            return '{"educational_value": 3}'
        spam = "CLICK" in document
        scores = {"educational_value": 1 if spam else 4, "format_readability": 2 if spam else 4}
        return "```json\n" + json.dumps({**scores, "reason": "scripted"}) + "\n```"
    if "TEACHER:outofrange" in first_ask:
        return "remove_lines(line_start=9000, line_end=9001)"
    if "TEACHER:syntax" in first_ask:
        return "remove_lines(line_start=1,"
    program = []
    for match in re.finditer(r"^\[(\d+)\](.*)$", first_ask, re.MULTILINE):
        if "MENU" in match.group(2):
            line = int(match.group(1))
            program.append(f"remove_lines(line_start={line}, line_end={line})")
        if (
            "&nbsp;" in match.group(2)
            and 'normalize(source_str="&nbsp;", target_str=" ")' not in program
        ):
            program.append('normalize(source_str="&nbsp;", target_str=" ")')
    return "\n".join(program) or "keep_doc()"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="serve this local model instead of the script")
    parser.add_argument("--teacher", action="store_true", help="answer as a scripted teacher")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args()
    answer = scripted
    if args.model:
        from proxkit.programmers.hf import TransformersBackend

        backend = TransformersBackend(args.model)
        model_lock = threading.Lock()

        def answer(  # type: ignore[misc]
            prompt: str, max_tokens: int = 16, grammar=None
        ) -> tuple[str, int, bool]:
            ids = backend.tokenizer.backend.encode(prompt).ids  # the server adds BOS
            grammars = [grammar] if grammar is not None else None
            with model_lock:
                done = backend.generate([Prompt(prompt, tuple(ids))], max_tokens, grammars)[0]
            return done.text, done.tokens, done.hit_limit

        def logprobs(token_ids: list[int], candidates: list[int]) -> dict[str, float]:
            with model_lock:
                [values] = backend.next_token_logprobs([Prompt("", tuple(token_ids))], candidates)
            return {f"token_id:{c}": v for c, v in zip(candidates, values)}

    attempts: Counter[str] = Counter()
    totals = {"requests": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # The client may have given up on a slow answer: expected with FAULT:slow.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.endswith("/stats"):
                with lock:
                    body = {"requests": totals["requests"], "distinct_prompts": len(attempts)}
                self._send(200, json.dumps(body).encode())
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            request = json.loads(self.rfile.read(length))
            chat = self.path.endswith("/chat/completions")
            prompt = request["messages"][-1]["content"] if chat else request["prompt"]
            if not isinstance(prompt, str):  # token ids: counted and searched as their JSON
                prompt = json.dumps(prompt)
            with lock:
                totals["requests"] += 1
                attempts[prompt] += 1
                attempt = attempts[prompt]
            fault = FAULT.search(prompt)
            if fault:
                kind, times, always = fault.group(1), int(fault.group(2) or 0), fault.group(3)
                if always == "always500" or (kind == "500" and attempt <= times):
                    return self._send(500, b'{"error": "injected server error"}')
                if always == "400":
                    return self._send(400, b'{"error": "injected bad request"}')
                if kind == "drop" and attempt <= times:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return None
                if kind == "garbage" and attempt <= times:
                    return self._send(200, b"<html>502 from a proxy", "text/html")
                if kind == "slow" and attempt <= times:
                    time.sleep(4)
            if args.model:
                grammar = from_args(request.get("vllm_xargs"))
                if grammar is not None and request.get("temperature", 1.0) > 0:
                    message = f"{ARGUMENT} steers greedy decoding only (temperature 0)"
                    return self._send(400, json.dumps({"error": {"message": message}}).encode())
                if request.get("logprob_token_ids"):
                    scores = logprobs(json.loads(prompt), request["logprob_token_ids"])
                    body = {"choices": [{"text": "", "logprobs": {"top_logprobs": [scores]}}]}
                    return self._send(200, json.dumps(body).encode())
            if args.teacher:
                text, tokens, cut = teacher(request["messages"]), 0, False
            elif args.model:
                templated = llama2_chat(prompt).removeprefix("<s>") if chat else prompt
                text, tokens, cut = answer(templated, request.get("max_tokens", 16), grammar)
            else:
                text = answer(prompt)
                tokens, cut = len(text.split("(")), False  # a stand-in count for the script
            finish = "length" if cut else "stop"
            if chat:
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": " " + text},
                    "finish_reason": finish,
                }
            else:
                choice = {"index": 0, "text": " " + text, "finish_reason": finish}
            body = {
                "id": "cmpl-test",
                "object": "chat.completion" if chat else "text_completion",
                "model": request.get("model"),
                "choices": [choice],
                "usage": {"completion_tokens": tokens},
            }
            return self._send(200, json.dumps(body).encode())

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
