"""What constrained decoding costs, and what it prevents.

1. Grammar work per row and decoding step (`grammar.GreedyRows.choose`), teacher-forced: the
   rule teacher's chunk programs for the example corpus (cut chunk by chunk, 1,500-token chunks,
   Llama-2 tokenizer) are fed as the model's choices to a batch of 64 or 256 rows, each row
   taking the next chunk when its program ends, so the batch stays full. Reported: microseconds
   per row-step of grammar work (the step's time minus a bare argmax over the same logits, the
   cost of greedy decoding with no grammar), for the model's choice accepted (a trained refiner)
   and refused (random logits: the grammar picks the best allowed token at every step), and
   the set-up per chunk. Times are this thread's CPU time (one core's work, whatever else the
   machine runs). Programs the grammar would not accept are counted, not fed.
2. Malformed-program rate with and without constraints, on the same model and prompts
   (`--model`, or a small random-weight Llama: the worst case, it never learned the grammar).

    python bench/bench_constrained.py [--batch 64 256] [--steps 200] [--model FOLDER] [--json out.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchlib import LLAMA2, example_records, per_chunk, print_table, write_json


def teacher_rows(tokenizer, limit: int) -> tuple[list, list[list[int]], int]:
    """(grammars, answer token ids with EOS) of the rule teacher's chunk programs; and how
    many programs the grammar refused (they are left out)."""
    from proxkit.chunking import Chunker, chunk_content
    from proxkit.io.readers import Document
    from proxkit.programmers import make_programmer
    from proxkit.programmers.grammar import ProgramGrammar
    from proxkit.prompts import answer_ids, chunk_prompts

    records = example_records()[:limit]
    documents = [Document(r["id"], r["text"], r, "corpus", i) for i, r in enumerate(records)]
    programs = make_programmer("rules").write("chunk", documents)
    chunker = Chunker(tokenizer.backend)
    grammars, answers, refused = [], [], 0
    for document, written in zip(documents, programs):
        chunks = chunker([document.text])[0]
        prompts = chunk_prompts(chunks, tokenizer)
        for chunk, prompt, program in zip(chunks, prompts, per_chunk(written.program, chunks)):
            grammar = ProgramGrammar(
                "chunk", chunk.first_line, chunk.last_line, chunk_content(chunk.text)
            )
            state = grammar.feed(grammar.start(), " " + program)
            if state is None or not grammar.accepts(state):
                refused += 1
                continue
            grammars.append(grammar)
            answers.append(list(answer_ids(tokenizer, prompt, program)))
    return grammars, answers, refused


def grammar_cost(grammars, answers, steering, batch: int, steps: int, follow: bool) -> dict:
    """Per row-step microseconds of `choose` beyond a bare argmax, over `steps` full steps."""
    import torch

    from proxkit.programmers.grammar import GreedyRows

    vocab = max(steering.trie.text_of) + 1
    logits = torch.zeros(batch, vocab) if follow else torch.randn(batch, vocab)
    holds = [i % len(grammars) for i in range(batch)]  # the chunk each row is writing
    rows = GreedyRows([grammars[i] for i in holds], steering)
    position = [0] * batch
    next_chunk = batch
    setups = 0
    spent = bare = 0.0
    corrected = steering.corrected
    for _ in range(steps):
        if follow:  # each row's best token is its teacher program's next one
            logits.zero_()
            targets = [answers[c][min(p, len(answers[c]) - 1)] for c, p in zip(holds, position)]
            logits[torch.arange(batch), torch.tensor(targets)] = 1.0
        start = time.thread_time()
        logits.argmax(-1).tolist()
        bare += time.thread_time() - start
        start = time.thread_time()
        chosen = rows.choose(logits, range(batch))
        for row, token in enumerate(chosen):
            position[row] += 1
            if token == steering.eos_id or position[row] >= 256:
                # The row's program ended: it takes the next chunk (its set-up is timed too).
                holds[row] = next_chunk % len(grammars)
                next_chunk += 1
                rows.grammars[row] = grammars[holds[row]]
                rows.states[row] = rows.grammars[row].start()
                position[row] = 0
                setups += 1
        spent += time.thread_time() - start
    row_steps = batch * steps
    return {
        "batch": batch,
        "model's choice": "accepted (teacher-forced)" if follow else "refused (random logits)",
        "grammar us/row-step": round((spent - bare) / row_steps * 1e6, 2),
        "argmax us/row-step": round(bare / row_steps * 1e6, 2),
        "chunks started": setups,
        "corrected steps": steering.corrected - corrected,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--documents", type=int, default=320)
    parser.add_argument("--model", help="a refining model folder for the malformed-rate part")
    parser.add_argument("--skip-model", action="store_true", help="grammar costs only")
    parser.add_argument("--chunks", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--tokenizer", default=str(LLAMA2))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    from proxkit.programmers.grammar import Steering, TokenTrie
    from proxkit.tokenizer import load_tokenizer

    torch.set_num_threads(1)  # grammar work is one thread's: per-core figures
    tokenizer = load_tokenizer(args.tokenizer)
    start = time.thread_time()
    trie = TokenTrie(tokenizer.backend)
    trie_seconds = time.thread_time() - start
    eos = tokenizer.backend.token_to_id(tokenizer.eos_token)
    grammars, answers, refused = teacher_rows(tokenizer, args.documents)
    rows = []
    for batch in args.batch:
        for follow in (True, False):
            steering = Steering(trie, eos)
            rows.append(grammar_cost(grammars, answers, steering, batch, args.steps, follow))
    print(
        f"{len(grammars):,} teacher chunk programs ({refused} refused by the grammar), "
        f"vocabulary trie built once in {trie_seconds:.2f} s"
    )
    print_table(rows, 26)
    result = {"grammar": rows, "teacher_programs": len(grammars), "refused": refused}
    if not args.skip_model:
        result["model"] = malformed_rates(args)
    write_json(args.json, result)


def malformed_rates(args) -> dict:
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
        free = [c.text for c in backend.generate(prompts, args.max_new_tokens)]
        free_seconds = time.perf_counter() - start
        start = time.perf_counter()
        written = backend.generate(prompts, args.max_new_tokens, grammars)
        constrained = [complete_lines(g, c.text) for g, c in zip(grammars, written)]
        constrained_seconds = time.perf_counter() - start

    rows = {
        "model": args.model or "random-weight Llama (small shape), Llama-2 vocabulary",
        "chunk prompts": len(prompts),
        "malformed without constraints": round(rates(free)[0], 3),
        "malformed with constraints": round(rates(constrained)[0], 3),
        "no complete line within the limit, without": round(rates(free)[1], 3),
        "no complete line within the limit, with": round(rates(constrained)[1], 3),
        "seconds without": round(free_seconds, 2),
        "seconds with": round(constrained_seconds, 2),
        "decoding steps corrected by the grammar": backend.stats()["steps_corrected_by_grammar"],
    }
    width = max(map(len, rows))
    for name, value in rows.items():
        print(f"{name:{width}}  {value}")
    return rows


if __name__ == "__main__":
    main()
