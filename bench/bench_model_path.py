"""The ceiling of everything but the model: `prox refine` through the LM programmer with an
instant model.

A GPU is only as busy as the CPU work around it lets it be: reading, doc prompts, chunking,
chunk prompts and their tokens, the grammar, executing the programs and writing the output.
This benchmark runs all of it with a model that costs nothing: `TeacherBackend` returns, for
each prompt, the program the rule programmer (the "teacher") wrote for that document or
chunk, looked up by the prompt's text, as token ids that it decodes as a model backend does.
So everything proxkit does around a model is measured, through the real runner
(`pipeline/run.py`: units, overlap threads, prompt workers, writers, `stats.json`), and nothing
else.

1. Corpus: the example corpus (`examples/web_docs.jsonl.gz`) in distinct copies (no prompt
   repeats, so the program cache cannot help), gzipped JSONL, cut at `--raw-tokens`.
2. Teacher: the rule programmer's doc programs (keep/drop, on each page as shipped; with
   `--keep-all` every document is kept) and its chunk programs cut chunk by chunk
   (`benchlib.per_chunk`), keyed by the exact prompts proxkit builds; computed before the
   clock starts.
3. `prox refine` of both stages, one-pass doc scoring, constrained (each output checked by the
   grammar's `complete_lines`; with `--check` also token by token by `follows`, as a
   check-then-redo path does), once per `--prompt-workers` value.

Reported per run: raw input tokens (Llama-2) per second of the process's CPU time (all its
threads and its prompt workers' = raw tokens/s per core) and per second of wall time; the
teacher's programs outside the grammar, prompts the teacher did not know, failures and
rejects beside them.

`--gpu STEP_MS` stands a GPU in for the instant model, to measure what the CPU work costs the
model's thread: each decode step of `--rows` rows spends `--launch-ms` of Python (launching
kernels, holding the interpreter lock) and then STEP_MS waiting with the lock released, as
on a GPU; prefill waits `--prefill-us` per prompt token. The model's thread is then measured
against that ideal: a stretch of 1.0 means nothing held it back.

`--profile` runs the batches once more in one thread with each step of the model path timed
(a wrapper per call: no profiler overhead on the code measured), and lists the functions
that spend the most time of their own under cProfile.

    python bench/bench_model_path.py --raw-tokens 2e6 --check --json bench/results/model_path.json
    python bench/bench_model_path.py --raw-tokens 1e6 --profile
    python bench/bench_model_path.py --raw-tokens 1e6 --gpu 10 --prompt-workers 0 1
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import math
import pstats
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any
from unittest import mock

from benchlib import LLAMA2, build_corpus, example_records, per_chunk, print_table, write_json


@dataclasses.dataclass(frozen=True)
class GPU:
    """A stand-in GPU: per decode step `launch_ms` of Python, then `step_ms` with the lock free."""

    step_ms: float
    launch_ms: float
    prefill_us: float
    rows: int

    def run(self, prompt_tokens: list[int], steps: int) -> float:
        """Prefill and decode `steps` steps for one batch; returns the ideal seconds."""
        ideal = 0.0
        for start in range(0, len(prompt_tokens), self.rows):
            prefill = sum(prompt_tokens[start : start + self.rows]) * self.prefill_us / 1e6
            _launch(self.launch_ms / 1e3)
            time.sleep(prefill)
            ideal += prefill + self.launch_ms / 1e3
            for _ in range(steps):
                _launch(self.launch_ms / 1e3)
                time.sleep(self.step_ms / 1e3)
                ideal += (self.launch_ms + self.step_ms) / 1e3
        return ideal


def _launch(seconds: float) -> None:
    """Python work for `seconds`: bytecode, so it holds and contends for the interpreter lock."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@dataclasses.dataclass
class TeacherBackend:
    """A model backend that answers at once with the teacher's programs (see the module
    docstring): doc scores from its keep/drop decisions, chunk programs as the token ids the
    model would write (end of turn included), decoded as a model backend decodes them."""

    tokenizer: Any
    keeps: dict[str, bool]  # doc prompt text -> keep
    answers: dict[str, list[int]]  # chunk prompt text -> generated token ids, EOS last
    eos_id: int
    check: bool = False
    gpu: GPU | None = None
    name: str = "teacher"
    supports_grammars: bool = True
    outside_grammar: int = 0
    unknown_prompts: int = 0
    model_seconds: float = 0.0  # in model calls, and what a GPU alone would have taken
    ideal_seconds: float = 0.0
    trie: Any = None

    def generate(self, prompts, max_new_tokens, grammars=None) -> list:
        from proxkit.programmers.grammar import follows
        from proxkit.programmers.lm import Completion

        start = time.perf_counter()
        completions, longest = [], 0
        for index, prompt in enumerate(prompts):
            ids = self.answers.get(prompt.text)
            if ids is None:
                self.unknown_prompts += 1
                ids = [self.eos_id]
            if self.check and grammars is not None:
                self.outside_grammar += not follows(grammars[index], ids, self.trie, self.eos_id)
            row = ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids
            longest = max(longest, len(ids))
            text = self.tokenizer.backend.decode(row, skip_special_tokens=True)
            completions.append(Completion(text, len(row)))
        self._model([len(p.token_ids) for p in prompts], longest, start)
        return completions

    def next_token_logprobs(self, prompts, candidates) -> list[list[float]]:
        start = time.perf_counter()
        keep, drop = math.log(0.9), math.log(0.1)
        scores = []
        for prompt in prompts:
            kept = self.keeps.get(prompt.text)
            if kept is None:
                self.unknown_prompts += 1
                kept = True
            scores.append([keep, drop] if kept else [drop, keep])
        self._model([len(p.token_ids) for p in prompts], 0, start)
        return scores

    def _model(self, prompt_tokens: list[int], steps: int, start: float) -> None:
        if self.gpu is not None:
            self.ideal_seconds += self.gpu.run(prompt_tokens, steps)
        self.model_seconds += time.perf_counter() - start


def teacher_backend(corpus: Path, tokenizer, settings: dict[str, Any], check: bool, keep_all: bool):
    """The teacher's answers for every prompt the run will send (computed, not timed);
    `keep_all`: every document goes on to the chunk stage (the most CPU work per token)."""
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
    # Doc decisions are the rules' on each page as shipped (copies differ in every line's end,
    # which Gopher's rules would judge again), so the chunk stage carries a refiner's share.
    base = [Document(r["id"], r["text"], r, "corpus", i) for i, r in enumerate(example_records())]
    kept = {d.id: w.program == "keep_doc()" for d, w in zip(base, rules.write("doc", base))}
    prompts = doc_prompts(texts, tokenizer, settings["max_doc_tokens"])
    keeps = {p.text: keep_all or kept[d.id.split("#")[0]] for p, d in zip(prompts, documents)}
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
    """`prox refine` (pipeline/run.py, the local engine) with `programmer` for both stages."""
    from proxkit.pipeline import local, run

    def engine(config):
        with mock.patch.object(local, "build_processor", lambda _: processor(programmer)):
            return local.LocalEngine(config)

    with (
        mock.patch.object(local, "uses_models", lambda _: True),
        mock.patch.object(run, "make_engine", engine),
    ):
        return run.run(config, progress=False)


def processor(programmer):
    from proxkit.pipeline.batch import BatchProcessor

    return BatchProcessor(programmer, programmer)


def child_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# Steps of the model path: (module, attribute) timed on every call.
STEPS = {
    "doc prompts": [("proxkit.programmers.lm", "doc_prompts")],
    "chunking (line counts, packing)": [("proxkit.chunking", "Chunker.__call__")],
    "chunk prompts": [("proxkit.programmers.lm", "chunk_prompts")],
    "grammar set-up": [("proxkit.programmers.lm", "chunk_content")],
    "grammar check (complete_lines)": [("proxkit.programmers.lm", "complete_lines")],
    "model (teacher lookup, decode, --check)": [
        ("__main__", "TeacherBackend.generate"),
        ("__main__", "TeacherBackend.next_token_logprobs"),
    ],
    "execution": [
        ("proxkit.pipeline.batch", "execute_doc"),
        ("proxkit.pipeline.batch", "execute_chunk"),
    ],
    "records and statistics": [
        ("proxkit.pipeline.batch", "assemble"),
        ("proxkit.pipeline.stats", "RunStats.add"),
    ],
    "write (JSON, gzip)": [("proxkit.io.writers", "RecordWriter.write")],
}


def profile_steps(config, programmer, corpus: Path, top: int) -> dict[str, Any]:
    """The batches in this thread, each step's calls timed; then under cProfile for the
    functions with the most time of their own."""
    import importlib
    import sys

    from proxkit.io.readers import Fields, read_file
    from proxkit.io.writers import RecordWriter
    from proxkit.pipeline.run import batches_of

    spent: dict[str, float] = defaultdict(float)

    def timed(step: str, function: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[step] += time.perf_counter() - start

        return wrapper

    def one_pass(folder: Path) -> float:
        batch_processor = processor(programmer)
        start = time.perf_counter()
        with RecordWriter(folder / "out.jsonl.gz") as writer:
            batches = batches_of(read_file(str(corpus), Fields()), config.batch_size)
            while True:
                read = time.perf_counter()
                batch = next(batches, None)
                spent["read (gzip, JSON)"] += time.perf_counter() - read
                if batch is None:
                    break
                for record in batch_processor(batch).records:
                    writer.write(record)
        return time.perf_counter() - start

    with TemporaryDirectory() as tmp, ExitStack() as patches:
        for step, targets in STEPS.items():
            for module_name, attribute in targets:
                module = sys.modules.get(module_name) or importlib.import_module(module_name)
                owner_name, _, name = attribute.rpartition(".")
                owner = getattr(module, owner_name) if owner_name else module
                patches.enter_context(
                    mock.patch.object(owner, name, timed(step, getattr(owner, name)))
                )
        total = one_pass(Path(tmp))
    rows = [{"step": "read (gzip, JSON)", "seconds": spent.pop("read (gzip, JSON)")}]
    rows += [{"step": step, "seconds": spent.get(step, 0.0)} for step in STEPS]
    rows.append({"step": "other", "seconds": total - sum(r["seconds"] for r in rows)})
    rows.append({"step": "total", "seconds": total})
    for row in rows:
        row["share"] = f"{row['seconds'] / total:.1%}"
        row["seconds"] = round(row["seconds"], 3)
    profiler = cProfile.Profile()
    with TemporaryDirectory() as tmp:
        profiler.runcall(one_pass, Path(tmp))
    entries = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    own = Counter(
        {
            f"{Path(path).parent.name}/{Path(path).name}:{function}": own_seconds
            for (path, _, function), (_, _, own_seconds, _, _) in entries.items()
        }
    )
    functions = [{"function": k, "own seconds": round(v, 3)} for k, v in own.most_common(top)]
    return {"steps": rows, "cprofile_own_time": functions}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--raw-tokens", type=float, default=2e6)
    parser.add_argument("--batch-size", type=int, default=256, help="documents per batch")
    parser.add_argument("--max-chunk-tokens", type=int, default=1500)
    parser.add_argument("--max-doc-tokens", type=int, default=2000)
    parser.add_argument("--output-format", default="jsonl.gz")
    parser.add_argument("--prompt-workers", type=int, nargs="+", default=[0])
    parser.add_argument("--check", action="store_true", help="also run grammar.follows per output")
    parser.add_argument("--keep-all", action="store_true", help="no document dropped at doc level")
    parser.add_argument("--gpu", type=float, metavar="STEP_MS", help="a stand-in GPU (see above)")
    parser.add_argument("--launch-ms", type=float, default=3.0)
    parser.add_argument("--prefill-us", type=float, default=3.3, help="per prompt token")
    parser.add_argument("--rows", type=int, default=256, help="rows per stand-in GPU batch")
    parser.add_argument("--profile", action="store_true", help="split the time by step")
    parser.add_argument("--top", type=int, default=15, help="cProfile functions listed")
    parser.add_argument("--tokenizer", default=str(LLAMA2))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from proxkit.config import RefineConfig
    from proxkit.programmers.lm import LMProgrammer
    from proxkit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    settings = {"max_doc_tokens": args.max_doc_tokens, "max_chunk_tokens": args.max_chunk_tokens}
    gpu = GPU(args.gpu, args.launch_ms, args.prefill_us, args.rows) if args.gpu else None
    results: dict[str, Any] = {"settings": vars(args) | {"json": None}, "runs": {}}
    with TemporaryDirectory() as tmp:
        folder = Path(tmp)
        corpus = folder / "corpus.jsonl.gz"
        documents, raw_tokens = build_corpus(corpus, int(args.raw_tokens), tokenizer.backend)
        start = time.perf_counter()
        backend = teacher_backend(corpus, tokenizer, settings, args.check, args.keep_all)
        results |= {
            "documents": documents,
            "raw_tokens": raw_tokens,
            "teacher_setup_seconds": round(time.perf_counter() - start, 1),
        }

        def programmer() -> LMProgrammer:
            return LMProgrammer(
                dataclasses.replace(backend, gpu=gpu),
                max_chunk_tokens=args.max_chunk_tokens,
                max_doc_tokens=args.max_doc_tokens,
            )

        fields = {f.name for f in dataclasses.fields(RefineConfig)}  # older proxkit: no workers
        for workers in args.prompt_workers:
            config = RefineConfig(
                inputs=(str(corpus),),
                output=str(folder / f"out-{workers}"),
                doc_programmer="teacher",
                chunk_programmer="teacher",
                batch_size=args.batch_size,
                max_chunk_tokens=args.max_chunk_tokens,
                max_doc_tokens=args.max_doc_tokens,
                output_format=args.output_format,
                **({"prompt_workers": workers} if "prompt_workers" in fields else {}),
            )
            model = programmer()
            wall, cpu, children = time.perf_counter(), time.process_time(), child_cpu_seconds()
            stats = refine(config, model)
            wall = time.perf_counter() - wall
            cpu = time.process_time() - cpu + child_cpu_seconds() - children
            used = model.backend
            chunk = stats.programmers.get("chunk", {})
            run = {
                "wall_seconds": round(wall, 2),
                "cpu_seconds": round(cpu, 2),
                "raw_tokens_per_core_second": round(raw_tokens / cpu),
                "raw_tokens_per_wall_second": round(raw_tokens / wall),
                "cores_busy": round(cpu / wall, 2),
                "chunk_prompts": chunk.get("prompts"),
                "chunk_prompt_tokens": chunk.get("prompt_tokens"),
                "cache_hits": chunk.get("cache_hits"),
                "outside_grammar": used.outside_grammar if args.check else None,
                "unknown_prompts": used.unknown_prompts,
                "programmer_failures": stats.programmer_failures,
                "rejected": stats.rejected,
                "kept_fraction": round(stats.kept / max(stats.documents, 1), 4),
                "refined": stats.refined,
            }
            if gpu is not None:
                run |= {
                    "model_seconds": round(used.model_seconds, 2),
                    "model_ideal_seconds": round(used.ideal_seconds, 2),
                    "model_stretch": round(used.model_seconds / used.ideal_seconds, 3),
                    "model_share_of_wall": round(used.model_seconds / wall, 3),
                }
            results["runs"][workers] = run
        if args.profile:
            results["profile"] = profile_steps(config, programmer(), corpus, args.top)
    print(
        f"prox refine through the LM programmer with an instant model: {documents:,} documents, "
        f"{raw_tokens:,} raw tokens (Llama-2), batches of {args.batch_size}, "
        f"{args.output_format}; teacher set up in {results['teacher_setup_seconds']} s"
        + (f"; stand-in GPU {gpu}" if gpu else "")
    )
    print_table(
        [
            {
                "prompt workers": workers,
                "raw tok/s/core": run["raw_tokens_per_core_second"],
                "raw tok/s wall": run["raw_tokens_per_wall_second"],
                "cores busy": run["cores_busy"],
                **({"model stretch": run["model_stretch"]} if gpu else {}),
                "kept": run["kept_fraction"],
                "chunk prompts": run["chunk_prompts"],
                "outside grammar": run["outside_grammar"],
                "unknown": run["unknown_prompts"],
                "failures": run["programmer_failures"],
                "rejects": run["rejected"],
            }
            for workers, run in results["runs"].items()
        ],
        14,
    )
    if args.profile:
        print("\nwhere the time goes (one thread, each step's calls timed):")
        print_table(results["profile"]["steps"], 38)
        print("\nmost time of their own (cProfile, same batches):")
        print_table(results["profile"]["cprofile_own_time"], 50)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
