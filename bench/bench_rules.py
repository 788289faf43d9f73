"""proxkit's rules against datatrove's filters: decisions and speed, family by family.

For each rule family, the same documents go through proxkit's rules (`rules:FAMILY`, doc
level) and through the datatrove filter they follow (datatrove 0.10, the code FineWeb was built
with), one after the other on the same core (this process is pinned to one CPU). Reported: the
share of documents on which both decide alike (keep or drop), the disagreements by reason,
and each side's MB/s (CPU time, best of `--repeats` alternating runs; proxkit's caches cleared
before each). Families: Gopher quality, Gopher repetition, C4 (its
defaults), C4 as FineWeb ran it (no terminal-punctuation rule), FineWeb, and FineWeb's whole
sequence (Gopher repetition, Gopher quality, C4 as FineWeb ran it, FineWeb).

Corpora: the shipped example corpus (320 documentation pages), and any folders of real HTML
pages given with `--pages` (turned into text one line per block, navigation included). The
README's figures also use the 130 pages of Mozilla Readability's test suite
(github.com/mozilla/readability, test/test-pages/*/source.html) and the 181 pages of
Zyte's article-extraction benchmark (github.com/scrapinghub/article-extraction-benchmark,
html/*.html.gz): clone them and pass their folders.

    python bench/bench_rules.py [--pages readability/test/test-pages aeb/html] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path

from benchlib import example_records, page_records, print_table, write_json


def families() -> dict:
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    return {
        "gopher_quality": [GopherQualityFilter],
        "gopher_repetition": [GopherRepetitionFilter],
        "c4": [C4QualityFilter],
        "c4_page_fineweb": [lambda: C4QualityFilter(filter_no_terminal_punct=False)],
        "fineweb": [FineWebQualityFilter],
        "fineweb_pipeline": [
            GopherRepetitionFilter,
            GopherQualityFilter,
            lambda: C4QualityFilter(filter_no_terminal_punct=False),
            FineWebQualityFilter,
        ],
    }


def datatrove_keeps(makers: list, records: list[dict]) -> tuple[list[bool], list[str | None]]:
    from datatrove.data import Document

    filters = [make() for make in makers]
    keeps, reasons = [], []
    for record in records:
        document = Document(text=record["text"], id=record["id"])
        for step in filters:
            result = step.filter(document)
            keep, reason = result if isinstance(result, tuple) else (result, None)
            if not keep:
                keeps.append(False)
                reasons.append(reason)
                break
        else:
            keeps.append(True)
            reasons.append(None)
    return keeps, reasons


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pages", type=Path, nargs="*", default=[])
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs each")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from datatrove.utils.text import split_into_words

    from proxkit.io.readers import Document
    from proxkit.programmers.rules import RulesProgrammer
    from proxkit.rules.words import clear_caches, words

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # both sides on one core
    corpora = {"documentation pages (shipped)": example_records()}
    if args.pages:
        corpora["real web pages (--pages)"] = page_records(args.pages)
    rows, disagreements = [], {}
    for corpus, records in corpora.items():
        megabytes = sum(len(r["text"].encode("utf-8")) for r in records) / 1e6
        documents = [Document(r["id"], r["text"], r, "bench", i) for i, r in enumerate(records)]
        tokens = sum(len(split_into_words(r["text"])) for r in records)
        same = sum(words(r["text"]) == split_into_words(r["text"]) for r in records)
        print(f"{corpus}: {len(records)} documents, {megabytes:.2f} MB; proxkit's tokens equal "
              f"spaCy's (datatrove's) in {same} documents, {tokens:,} tokens")  # fmt: skip
        for family, makers in families().items():
            programmer = RulesProgrammer.from_spec(f"rules:{family}")
            datatrove_seconds = proxkit_seconds = float("inf")
            for _ in range(args.repeats):  # alternating, best of each: a shared machine is noisy
                start = time.process_time()
                theirs, reasons = datatrove_keeps(makers, records)
                datatrove_seconds = min(datatrove_seconds, time.process_time() - start)
                clear_caches()
                start = time.process_time()
                written = programmer.write("doc", documents)
                proxkit_seconds = min(proxkit_seconds, time.process_time() - start)
            ours = [w.program == "keep_doc()" for w in written]
            agree = sum(a == b for a, b in zip(ours, theirs))
            disagreements[f"{corpus} / {family}"] = Counter(
                f"proxkit {(w.info.get('rules') or ['keep'])[0]} / datatrove {r or 'keep'}"
                for w, a, b, r in zip(written, ours, theirs, reasons)
                if a != b
            ).most_common()
            rows.append(
                {
                    "corpus": corpus.split(" (")[0],
                    "family": family,
                    "documents": len(records),
                    "agreement": f"{agree / len(records):.1%}",
                    "kept (datatrove)": sum(theirs),
                    "kept (proxkit)": sum(ours),
                    "datatrove MB/s": round(megabytes / datatrove_seconds, 2),
                    "proxkit MB/s": round(megabytes / proxkit_seconds, 2),
                    "speed-up": round(datatrove_seconds / proxkit_seconds, 1),
                }
            )
    print_table(rows, 15)
    for name, found in disagreements.items():
        if found:
            print(f"disagreements, {name}: {found}")
    write_json(args.json, {"rows": rows, "disagreements": disagreements})


if __name__ == "__main__":
    main()
