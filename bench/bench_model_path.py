"""The ceiling of everything but the model: `prox refine` through the LM programmer with an
instant model.

A GPU is only as busy as the CPU work around it lets it be: reading, doc prompts, chunking,
chunk prompts and their tokens, the grammar, executing the programs and writing the output.
This benchmark runs all of it with a model that costs nothing: `TeacherBackend` returns, for
each prompt, the program the rule programmer (the "teacher") wrote for that document or
chunk, looked up by the prompt's text, as token ids that it decodes as a model backend does.
So everything proxkit does around a model is measured, through the real runner
(`pipeline/run.py`: units, overlap threads, writers, `stats.json`), and nothing else.

1. Corpus: the example corpus (`examples/web_docs.jsonl.gz`) in distinct copies (no prompt
   repeats, so the program cache cannot help), gzipped JSONL, cut at `--raw-tokens`.
2. Teacher: the rule programmer's doc programs (keep/drop) and its chunk programs cut chunk by
   chunk (`benchlib.per_chunk`), keyed by the exact prompts proxkit builds; computed before
   the clock starts.
3. `prox refine` of both stages, one-pass doc scoring, constrained (the grammar's check of each
   output, `complete_lines`, and with `--check` the token-by-token `follows` that a
   check-then-redo path runs).

Reported: raw input tokens (Llama-2) per second of the process's CPU time (all its threads,
the Rust tokenizer's included) = raw tokens/s per core, and per second of wall time; the
teacher programs outside the grammar, failures, rejects and cache hits beside them. `--profile`
runs the same batches once more in one thread under cProfile and splits the time by step.

    python bench/bench_model_path.py --raw-tokens 2e6 --json bench/results/model_path.json
    python bench/bench_model_path.py --raw-tokens 5e5 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import math
import pstats
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any
from unittest import mock

from benchlib import LLAMA2, build_corpus, per_chunk, print_table, write_json

STEPS = {  # profile entries (file fragment, function) -> step of the model path
    "read": [("io/readers.py", "read_file")],
    "doc prompts": [("prompts.py", "doc_prompts")],
    "chunking (line counts, packing)": [("chunking.py", "__call__")],
    "chunk prompts": [("prompts.py", "chunk_prompts")],
    "grammar set-up": [("programmers/lm.py", "<listcomp>"), ("programmers/lm.py", "<genexpr>")],
    "grammar check": [("grammar.py", "complete_lines"), ("grammar.py", "follows")],
    "model (teacher lookup, decode)": [("bench_model_path.py", "generate")],
    "doc scores": [("programmers/lm.py", "_keep_scores")],
    "execution": [("executor.py", "execute_chunk"), ("executor.py", "execute_doc")],
    "records": [("records.py", "assemble"), ("pipeline/stats.py", "add")],
    "write": [("io/writers.py", "write")],
}


@dataclasses.dataclass
class TeacherBackend:
    """A model backend that answers instantly with the teacher's programs (see the module
    docstring): doc scores from its keep/drop decisions, chunk programs as the token ids the
    model would write (end of turn included), decoded as a model backend decodes them."""

    tokenizer: Any
    keeps: dict[str, bool]  # doc prompt text -> keep
    answers: dict[str, list[int]]  # chunk prompt text -> generated token ids, EOS last
    eos_id: int
    check: bool = False
    name: str = "teacher"
    supports_grammars: bool = True
    outside_grammar: int = 0
    unknown_prompts: int = 0
    trie: Any = None

    def generate(self, prompts, max_new_tokens, grammars=None) -> list:
        from proxkit.programmers.grammar import follows
        from proxkit.programmers.lm import Completion

        completions = []
        for index, prompt in enumerate(prompts):
            ids = self.answers.get(prompt.text)
            if ids is None:
                self.unknown_prompts += 1
                ids = [self.eos_id]
            if self.check and grammars is not None:
                self.outside_grammar += not follows(grammars[index], ids, self.trie, self.eos_id)
            row = ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids
            text = self.tokenizer.backend.decode(row, skip_special_tokens=True)
            completions.append(Completion(text, len(row)))
        return completions

    def next_token_logprobs(self, prompts, candidates) -> list[list[float]]:
        keep, drop = math.log(0.9), math.log(0.1)
        scores = []
        for prompt in prompts:
            kept = self.keeps.get(prompt.text)
            if kept is None:
                self.unknown_prompts += 1
                kept = True
            scores.append([keep, drop] if kept else [drop, keep])
        return scores

    def stats(self) -> dict[str, Any]:
        return {"unknown_prompts": self.unknown_prompts, "outside_grammar": self.outside_grammar}


def teacher_backend(corpus: Path, tokenizer, settings: dict[str, Any], check: bool):
    """The teacher's answers for every prompt the run will send (computed, not timed)."""
    import gzip
    import json

    from proxkit.chunking import Chunker
    from proxkit.io.readers import Document
    from proxkit.programmers import make_programmer
    from proxkit.programmers.grammar import TokenTrie
    from proxkit.prompts import answer_text, chunk_prompts, doc_prompts

    with gzip.open(corpus, "rt", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    documents = [Document(r["id"], r["text"], r, "corpus", i) for i, r in enumerate(records)]
    rules = make_programmer("rules")
    texts = [d.text for d in documents]
    prompts = doc_prompts(texts, tokenizer, settings["max_doc_tokens"])
    keeps = {
        p.text: w.program == "keep_doc()" for p, w in zip(prompts, rules.write("doc", documents))
    }
    chunker = Chunker(tokenizer.backend, settings["max_chunk_tokens"])
    eos_id = tokenizer.backend.token_to_id(tokenizer.eos_token)
    answers: dict[str, list[int]] = {}
    for written, chunks in zip(rules.write("chunk", documents), chunker(texts)):
        chunk_texts = per_chunk(written.program or "keep_doc()", chunks)
        for prompt, program in zip(chunk_prompts(chunks, tokenizer), chunk_texts):
            full = prompt.text + answer_text(tokenizer, prompt, program)
            ids = tokenizer.backend.encode(full, add_special_tokens=False).ids
            answers[prompt.text] = ids[len(prompt.token_ids) :]
    backend = TeacherBackend(tokenizer, keeps, answers, eos_id, check)
    if check:
        backend.trie = TokenTrie(tokenizer.backend)
    return backend


def refine(config, programmer) -> Any:
    """`prox refine` (pipeline/run.py) with `programmer` for both stages."""
    from proxkit.pipeline import run as run_module
    from proxkit.pipeline.batch import BatchProcessor, programmer_stats
    from proxkit.pipeline.overlap import overlapped

    processor = BatchProcessor(programmer, programmer, config.mode, config.thresholds)

    class Engine:
        def map_batches(self, batches):
            return overlapped(processor, batches)

        def programmer_stats(self):
            return programmer_stats(processor)

        def close(self, abort: bool = False) -> None:
            pass

    with mock.patch.object(run_module, "make_engine", lambda _config: Engine()):
        return run_module.run(config, progress=False)


def profile_steps(config, programmer, corpus: Path) -> list[dict[str, Any]]:
    """The same batches in this thread under cProfile: seconds per step of the model path."""
    from proxkit.io.readers import Fields, read_file
    from proxkit.io.writers import RecordWriter
    from proxkit.pipeline.batch import BatchProcessor
    from proxkit.pipeline.run import batches_of

    processor = BatchProcessor(programmer, programmer, config.mode, config.thresholds)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    with TemporaryDirectory() as tmp:
        profiler.enable()
        with RecordWriter(Path(tmp) / "out.jsonl.gz") as writer:
            for batch in batches_of(read_file(str(corpus), Fields()), config.batch_size):
                for record in processor(batch).records:
                    writer.write(record)
        profiler.disable()
    total = time.perf_counter() - start
    entries = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = []
    for step, names in STEPS.items():
        seconds = sum(
            cumulative
            for (path, _, function), (_, _, _, cumulative, _) in entries.items()
            for fragment, name in names
            if path.endswith(fragment) and function == name
        )
        rows.append({"step": step, "seconds": round(seconds, 3), "share": seconds / total})
    accounted = sum(r["seconds"] for r in rows)
    rows.append({"step": "other", "seconds": round(total - accounted, 3)})
    rows.append({"step": "total", "seconds": round(total, 3)})
    for row in rows:
        row["share"] = f"{row['seconds'] / total:.1%}"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--raw-tokens", type=float, default=2e6)
    parser.add_argument("--batch-size", type=int, default=256, help="documents per batch")
    parser.add_argument("--max-chunk-tokens", type=int, default=1500)
    parser.add_argument("--max-doc-tokens", type=int, default=2000)
    parser.add_argument("--output-format", default="jsonl.gz")
    parser.add_argument("--check", action="store_true", help="also run grammar.follows per output")
    parser.add_argument("--profile", action="store_true", help="split the time by step")
    parser.add_argument("--tokenizer", default=str(LLAMA2))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from proxkit.config import RefineConfig
    from proxkit.programmers.lm import LMProgrammer
    from proxkit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    settings = {"max_doc_tokens": args.max_doc_tokens, "max_chunk_tokens": args.max_chunk_tokens}
    with TemporaryDirectory() as tmp:
        folder = Path(tmp)
        corpus = folder / "corpus.jsonl.gz"
        documents, raw_tokens = build_corpus(corpus, int(args.raw_tokens), tokenizer.backend)
        start = time.perf_counter()
        backend = teacher_backend(corpus, tokenizer, settings, args.check)
        setup = time.perf_counter() - start
        config = RefineConfig(
            inputs=(str(corpus),),
            output=str(folder / "out"),
            doc_programmer="teacher",
            chunk_programmer="teacher",
            batch_size=args.batch_size,
            max_chunk_tokens=args.max_chunk_tokens,
            max_doc_tokens=args.max_doc_tokens,
            output_format=args.output_format,
        )

        def programmer() -> LMProgrammer:
            return LMProgrammer(
                backend,
                max_chunk_tokens=args.max_chunk_tokens,
                max_doc_tokens=args.max_doc_tokens,
            )

        wall, cpu = time.perf_counter(), time.process_time()
        stats = refine(config, programmer())
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        steps = profile_steps(config, programmer(), corpus) if args.profile else None
    chunk = stats.programmers.get("chunk", {})
    results = {
        "documents": documents,
        "raw_tokens": raw_tokens,
        "teacher_setup_seconds": round(setup, 1),
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "raw_tokens_per_core_second": round(raw_tokens / cpu),
        "raw_tokens_per_wall_second": round(raw_tokens / wall),
        "cores_busy": round(cpu / wall, 2),
        "chunk_prompts": chunk.get("prompts"),
        "chunk_prompt_tokens": chunk.get("prompt_tokens"),
        "cache_hits": chunk.get("cache_hits"),
        "outside_grammar": backend.outside_grammar if args.check else None,
        "unknown_prompts": backend.unknown_prompts,
        "programmer_failures": stats.programmer_failures,
        "rejected": stats.rejected,
        "kept_fraction": round(stats.kept / max(stats.documents, 1), 4),
        "refined": stats.refined,
        "profile": steps,
    }
    print(
        f"prox refine through the LM programmer with an instant model: {documents:,} documents, "
        f"{raw_tokens:,} raw tokens (Llama-2), batches of {args.batch_size}, "
        f"{args.output_format}; teacher set up in {setup:.1f} s"
    )
    print_table(
        [
            {
                "raw tok/s/core": results["raw_tokens_per_core_second"],
                "raw tok/s wall": results["raw_tokens_per_wall_second"],
                "cores busy": results["cores_busy"],
                "chunk prompts": results["chunk_prompts"],
                "outside grammar": results["outside_grammar"],
                "unknown prompts": results["unknown_prompts"],
                "failures": results["programmer_failures"],
                "rejects": results["rejected"],
            }
        ],
        15,
    )
    if steps:
        print("\nwhere the time goes (one thread, cProfile; cumulative, steps may nest):")
        print_table(steps, 30)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
