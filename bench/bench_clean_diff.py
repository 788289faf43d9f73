"""Clean-then-diff: how fast and how minimal the alignment of a teacher's cleaned chunk is, and
what the derived programs reproduce.

The chunks are the example corpus cut by the real chunker (1500 Llama-2 tokens). A seeded
scripted teacher cleans each one three ways: `deletions` (drops 70% of the short lines, as
navigation, and one word from 10% of the others), `replacements` (the same, and also writes
"&nbsp;" for a space or capitalises a letter in 10% of the lines, which a deletion program
cannot express) and `joined` (the deletions, and two lines joined by a space). Each alignment
method is timed on every chunk and its matched characters compared with a shortest edit
script (Myers on characters): a method that matches fewer is not minimal there.

    python bench/bench_clean_diff.py --json bench/results/clean_diff.json
"""

from __future__ import annotations

import argparse
import difflib
import random
import time
from pathlib import Path

from benchlib import LLAMA2, example_records, print_table, write_json

from proxkit.chunking import Chunker, chunk_content
from proxkit.synth.align import align, myers
from proxkit.synth.clean import derive
from proxkit.tokenizer import load_tokenizer

SCENARIOS = ("deletions", "replacements", "joined")


def clean(text: str, scenario: str, rng: random.Random) -> str:
    kept = []
    for line in text.split("\n"):
        if len(line) < 30 and rng.random() < 0.7:
            continue
        words = line.split(" ")
        if len(words) > 3 and rng.random() < 0.1:
            del words[rng.randrange(len(words))]
        line = " ".join(words)
        if scenario == "replacements" and " " in line and rng.random() < 0.1:
            line = line.replace(" ", "&nbsp;", 1) if rng.random() < 0.5 else line.capitalize()
        kept.append(line)
    if scenario == "joined" and len(kept) > 2:
        at = rng.randrange(len(kept) - 1)
        kept[at : at + 2] = [kept[at] + " " + kept[at + 1]]
    return "\n".join(kept)


def difflib_blocks(autojunk: bool):
    def blocks(a: str, b: str) -> list[tuple[int, int, int]]:
        matcher = difflib.SequenceMatcher(None, a, b, autojunk=autojunk)
        return [(m.a, m.b, m.size) for m in matcher.get_matching_blocks() if m.size]

    return blocks


METHODS = {
    "align (proxkit)": align,
    "myers, characters": myers,
    "difflib": difflib_blocks(True),
    "difflib, autojunk off": difflib_blocks(False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=120, help="chunks per scenario")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    chunker = Chunker(load_tokenizer(str(LLAMA2)).backend)
    texts = [r["text"] for r in example_records()]
    chunks = [chunk_content(c.text) for doc in chunker(texts) for c in doc][: args.chunks]
    rows, results = [], {}
    for scenario in SCENARIOS:
        rng = random.Random(0)
        pairs = [(text, clean(text, scenario, rng)) for text in chunks]
        shortest = [sum(size for *_, size in myers(a, b)) for a, b in pairs]
        for name, method in METHODS.items():
            started = time.perf_counter()
            matched = [sum(size for *_, size in method(a, b)) for a, b in pairs]
            seconds = time.perf_counter() - started
            rows.append(
                {
                    "scenario": scenario,
                    "method": name,
                    "ms per chunk": round(seconds / len(pairs) * 1000, 2),
                    "non-minimal chunks": sum(m < s for m, s in zip(matched, shortest)),
                    "characters short": sum(shortest) - sum(matched),
                }
            )
        derived = [derive(a, b) for a, b in pairs]
        deleted = sum(d.deleted for d in derived)
        results[scenario] = {
            "chunks": len(pairs),
            "mean chunk characters": round(sum(len(a) for a, _ in pairs) / len(pairs)),
            "fidelity": round(sum(d.reproduced for d in derived) / deleted, 4),
            "exact": sum(d.exact for d in derived),
            "not unique characters": sum(d.not_unique for d in derived),
            "replaced characters": sum(d.replaced for d in derived),
            "newline characters": sum(d.newlines for d in derived),
            "RefineX: insertion of 20+ characters": sum(d.longest_insertion >= 20 for d in derived),
            "RefineX: under 10 deleted characters": sum(d.deleted < 10 for d in derived),
        }
    print_table(rows, 22)
    print()
    for scenario, numbers in results.items():
        print(scenario, numbers)
    write_json(args.json, {"alignment": rows, "derivation": results})


if __name__ == "__main__":
    main()
