"""vLLM as a server (`vllm serve`, through `--backend openai`) against vLLM offline (`--backend
vllm`, the engine in this process), on the same model, prompts and options: the chunk stage's
prompts of the example corpus, greedy, under the grammar (proxkit's logits processor in both).

Reported per engine: start-up seconds (engine start, compile, the server's start-up probes;
apart from the work), work seconds, prompt and generated tokens per work second, failed
requests and outputs outside the grammar; then the server's generated tokens/s as a share of
offline vLLM's (target >= 0.8) and how many outputs the two wrote identically.

`serve_throughput` and `offline_throughput` measure one engine on given prompts (what
bench_engines.py can call); `start_server` starts `vllm serve` as vLLM's CPU build allows it
(its `vllm` command cannot run: it asks the version of a package named "vllm").

    python bench/bench_serve.py [--model FOLDER] [--prompts 64] [--new-tokens 64]
        [--concurrency 64] [--eager] [--json bench/results/serve.json]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchlib import LLAMA2, distinct_copies, example_records, print_table, write_json


def start_server(
    model: str, kv_cache_gib: int = 2, compile: bool = True
) -> tuple[subprocess.Popen, str]:
    """`vllm serve` of `model` on a free local port, in this environment (where proxkit's
    grammar processor is installed), with every core this process may use, its output in a
    temporary file; returns once it answers /health."""
    import httpx

    from proxkit.programmers.vllm import cores_text

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_CPU_OMP_THREADS_BIND": cores_text(sorted(os.sched_getaffinity(0))),
    }
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--seed", "0",
        "--enable-prefix-caching", *([] if compile else ["--enforce-eager"]),
    ]  # fmt: skip
    log = Path(tempfile.mkstemp(prefix="vllm-serve-", suffix=".log")[1])
    # Started outside any source checkout: a stale proxkit.egg-info there would hide the
    # installed entry point that loads the grammar.
    server = subprocess.Popen(
        command, env=env, cwd=tempfile.gettempdir(), stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"vllm serve exited ({log}): {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            pass
        time.sleep(1)
    server.kill()
    raise RuntimeError(f"vllm serve did not answer within 15 minutes ({log})")


def _cpu_seconds(pid: int | None) -> float:
    """CPU seconds a process and its children have used so far (0 without one)."""
    if pid is None:
        return 0.0
    import psutil

    root = psutil.Process(pid)
    processes = [root, *root.children(recursive=True)]
    return sum(sum(p.cpu_times()[:2]) for p in processes if p.is_running())


def _measured(
    engine: str, startup: float, generate, prompts, max_new_tokens, grammars, server: int | None
):
    """One engine's work on `prompts`; CPU seconds of this process (the client, or the
    offline engine) and of the server's processes during it (what two cores share)."""
    start, cpu, served = time.perf_counter(), time.process_time(), _cpu_seconds(server)
    completions = generate(prompts, max_new_tokens, grammars)
    work = time.perf_counter() - start
    cpu, served = time.process_time() - cpu, _cpu_seconds(server) - served
    done = [c for c in completions if not isinstance(c, Exception)]
    outside = [c for c in completions if "outside the grammar" in str(c)]
    return {
        "engine": engine,
        "startup s": round(startup, 1),
        "work s": round(work, 2),
        "prompt tok/s": round(sum(len(p.token_ids) for p in prompts) / work),
        "generated tok/s": round(sum(c.tokens for c in done) / work, 1),
        "failed": len(completions) - len(done) - len(outside),
        "outside grammar": len(outside),
        "cpu s, this process": round(cpu, 1),
        "cpu s, server": round(served, 1),
        "texts": [c.text.strip() if not isinstance(c, Exception) else None for c in completions],
    }


def serve_throughput(
    model: str,
    prompts: Sequence[Any],
    max_new_tokens: int,
    grammars: Sequence[Any] | None = None,
    api_base: str | None = None,
    max_concurrency: int = 64,
    kv_cache_gib: int = 2,
    compile: bool = True,
) -> dict[str, Any]:
    """Greedy completions of `prompts` (proxkit `Prompt`s) through `--backend openai`: from the
    server at `api_base`, else from a `vllm serve` started (and stopped) here."""
    from proxkit.programmers.openai import OpenAIBackend, OpenAISettings

    start = time.perf_counter()
    server = None
    if api_base is None:
        server, api_base = start_server(model, kv_cache_gib, compile)
    try:
        backend = OpenAIBackend(
            model,
            OpenAISettings(api_base=api_base, max_concurrency=max_concurrency, timeout=600),
            grammars=grammars is not None,
        )
        startup = time.perf_counter() - start
        return _measured(
            "vllm serve (openai)", startup, backend.generate, prompts, max_new_tokens, grammars,
            server.pid if server is not None else None,
        )  # fmt: skip
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)


def offline_throughput(
    model: str,
    prompts: Sequence[Any],
    max_new_tokens: int,
    grammars: Sequence[Any] | None = None,
    kv_cache_gib: int = 2,
    compile: bool = True,
) -> dict[str, Any]:
    """The same through `--backend vllm` (the engine in this process)."""
    from proxkit.programmers.vllm import VLLMBackend, VLLMSettings

    start = time.perf_counter()
    backend = VLLMBackend(
        model, VLLMSettings(dtype="float32", kv_cache_gib=kv_cache_gib, compile=compile)
    )
    try:
        backend.generate(prompts[:1], 4)  # what the server's start-up probes do for it
        startup = time.perf_counter() - start
        return _measured(
            "vllm offline", startup, backend.generate, prompts, max_new_tokens, grammars, None
        )
    finally:
        backend.close()


def chunk_work(tokenizer_dir: str, count: int, max_chunk_tokens: int):
    """The first `count` chunk prompts of the example corpus (each distinct), with grammars."""
    from proxkit.chunking import Chunker, chunk_content
    from proxkit.programmers.grammar import ProgramGrammar
    from proxkit.prompts import chunk_prompts
    from proxkit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    records = distinct_copies(example_records(), 1 + count // 300)
    chunker = Chunker(tokenizer.backend, max_chunk_tokens)
    chunks = [c for doc in chunker([r["text"] for r in records]) for c in doc][:count]
    grammars = [
        ProgramGrammar("chunk", c.first_line, c.last_line, chunk_content(c.text)) for c in chunks
    ]
    return chunk_prompts(chunks, tokenizer), grammars


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="a refining model folder (default: a random SMALL Llama)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--max-chunk-tokens", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=64, help="the client's open requests")
    parser.add_argument("--no-grammar", action="store_true")
    parser.add_argument("--eager", action="store_true", help="no torch.compile in either engine")
    parser.add_argument("--kv-cache-gib", type=int, default=2)
    parser.add_argument("--tokenizer", default=str(LLAMA2))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from proxkit.testing import SMALL, random_llama

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = str(Path(tmp) / "small")
            random_llama(Path(model), Path(args.tokenizer), **SMALL)
        prompts, grammars = chunk_work(model, args.prompts, args.max_chunk_tokens)
        chosen = None if args.no_grammar else grammars
        options = dict(kv_cache_gib=args.kv_cache_gib, compile=not args.eager)
        served = serve_throughput(
            model, prompts, args.new_tokens, chosen, max_concurrency=args.concurrency, **options
        )
        offline = offline_throughput(model, prompts, args.new_tokens, chosen, **options)
    same = sum(a == b for a, b in zip(served.pop("texts"), offline.pop("texts")))
    ratio = served["generated tok/s"] / offline["generated tok/s"]
    print(
        f"{len(prompts)} chunk prompts, {args.new_tokens} new tokens, grammar "
        f"{'off' if chosen is None else 'on'}, {os.cpu_count()} cores"
    )
    print_table([served, offline], 20)
    print(
        f"served / offline, generated tok/s: {ratio:.2f}; identical outputs: {same}/{len(prompts)}"
    )
    write_json(
        args.json,
        {"runs": [served, offline], "served_over_offline": round(ratio, 3), "identical": same},
    )


if __name__ == "__main__":
    main()
