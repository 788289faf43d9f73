"""Malformed-program rate with and without constrained decoding, on the same model and prompts.

A program is malformed when the strict executor reports any error on its own chunk (parse
errors, doc-level calls, lines outside the chunk). By default the model is a small Llama with
random weights and the Llama-2 vocabulary (the worst case: it never learned the grammar);
pass --model for a real refining model folder.

    python bench/bench_constrained.py [--model FOLDER] [--chunks 24] [--json out.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchlib import LLAMA2, example_records, write_json


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model")
    parser.add_argument("--chunks", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--tokenizer", default=str(LLAMA2))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from proxkit.chunking import Chunker, chunk_content
    from proxkit.program import execute_chunk
    from proxkit.programmers.grammar import ProgramGrammar, complete_lines
    from proxkit.programmers.hf import TransformersBackend
    from proxkit.prompts import chunk_prompts
    from proxkit.testing import SMALL, random_llama

    with tempfile.TemporaryDirectory() as folder:
        model = args.model
        if model is None:
            random_llama(Path(folder), Path(args.tokenizer), **SMALL)
            model = folder
        backend = TransformersBackend(model)
        texts = [record["text"] for record in example_records()[:8]]
        chunks = [c for doc in Chunker(backend.tokenizer.backend, 400)(texts) for c in doc][
            : args.chunks
        ]
        prompts = chunk_prompts(chunks, backend.tokenizer)
        grammars = [
            ProgramGrammar("chunk", c.first_line, c.last_line, chunk_content(c.text))
            for c in chunks
        ]

        def rates(outputs: list[str]) -> tuple[float, float]:
            """(malformed: any executor error, empty: no complete line within the token limit)."""
            bad = empty = 0
            for output, chunk in zip(outputs, chunks):
                body = "\n" * chunk.first_line + chunk_content(chunk.text)
                if not output.strip():
                    empty += 1
                else:
                    bad += bool(execute_chunk(body, output.strip(" ")).errors)
            return bad / len(outputs), empty / len(outputs)

        start = time.perf_counter()
        free = backend.generate(prompts, args.max_new_tokens)
        free_seconds = time.perf_counter() - start
        start = time.perf_counter()
        constrained = [
            complete_lines(g, o)
            for g, o in zip(grammars, backend.generate(prompts, args.max_new_tokens, grammars))
        ]
        constrained_seconds = time.perf_counter() - start

    rows = {
        "model": args.model or "random-weight Llama, Llama-2 vocabulary",
        "chunk prompts": len(prompts),
        "malformed without constraints": round(rates(free)[0], 3),
        "malformed with constraints": round(rates(constrained)[0], 3),
        "no complete line within the limit, without": round(rates(free)[1], 3),
        "no complete line within the limit, with": round(rates(constrained)[1], 3),
        "seconds without": round(free_seconds, 2),
        "seconds with": round(constrained_seconds, 2),
        "example unconstrained output": free[0][:80],
        "example constrained output": constrained[0][:80],
    }
    width = max(map(len, rows))
    for name, value in rows.items():
        print(
            f"{name:{width}}  {value!r}" if isinstance(value, str) else f"{name:{width}}  {value}"
        )
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
