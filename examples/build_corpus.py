"""Build examples/web_docs.jsonl.gz: web-like documents with real boilerplate.

Sources are HTML documentation pages that Debian ships (`python3.11-doc`, `git-doc`),
converted to text the way a crawl's text extraction sees a page: every visible line, the
navigation bars, breadcrumbs and footers included. Long pages keep their head and tail (where
the boilerplate is) and a stretch of the body, so the corpus stays small.

    apt-get install python3.11-doc git-doc
    python examples/build_corpus.py
"""

from __future__ import annotations

import gzip
import json
import re
from html.parser import HTMLParser
from pathlib import Path

SOURCES = [
    # (folder, url prefix, package, pages to take)
    (
        Path("/usr/share/doc/python3.11/html"),
        "https://docs.python.org/3.11/",
        "python3.11-doc",
        220,
    ),
    (Path("/usr/share/doc/git-doc"), "https://git-scm.com/docs/", "git-doc", 100),
]
OUTPUT = Path(__file__).with_name("web_docs.jsonl.gz")
HEAD_LINES, BODY_LINES, TAIL_LINES = 60, 140, 40
BLOCK_TAGS = {
    "p",
    "div",
    "br",
    "li",
    "ul",
    "ol",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "tr",
    "table",
    "section",
    "header",
    "footer",
    "nav",
    "pre",
    "dt",
    "dd",
    "dl",
    "blockquote",
    "title",
    "hr",
}
SKIPPED_TAGS = {"script", "style", "noscript", "template"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = [""]
        self.skip_depth = 0
        self.pre_depth = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in SKIPPED_TAGS:
            self.skip_depth += 1
        elif tag == "pre":
            self.pre_depth += 1
            self.lines.append("")
        elif tag in BLOCK_TAGS:
            self.lines.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIPPED_TAGS:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
            self.lines.append("")
        elif tag in BLOCK_TAGS:
            self.lines.append("")

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        if self.pre_depth:
            first, *rest = data.split("\n")
            self.lines[-1] += first
            self.lines.extend(rest)
        else:
            self.lines[-1] += re.sub(r"\s+", " ", data)

    def text(self) -> str:
        """One line per text block, no blank lines: the shape of crawl text extraction (WET)."""
        return "\n".join(line.strip() for line in self.lines if line.strip())


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return parser.text()


def shorten(text: str) -> str:
    lines = text.split("\n")
    if len(lines) <= HEAD_LINES + BODY_LINES + TAIL_LINES:
        return text
    middle = len(lines) // 2
    body = lines[middle - BODY_LINES // 2 : middle + BODY_LINES // 2]
    return "\n".join(lines[:HEAD_LINES] + body + lines[-TAIL_LINES:])


def pages(folder: Path, count: int) -> list[Path]:
    """An evenly spread, deterministic selection of the folder's pages."""
    found = sorted(p for p in folder.rglob("*.html") if "_static" not in p.parts)
    step = max(1, len(found) // count)
    return found[::step][:count]


def main() -> None:
    records = []
    for folder, url_prefix, package, count in SOURCES:
        for page in pages(folder, count):
            relative = page.relative_to(folder).as_posix()
            text = shorten(html_to_text(page.read_text(encoding="utf-8", errors="replace")))
            records.append(
                {
                    "id": f"{package}/{relative}",
                    "text": text,
                    "url": url_prefix + relative,
                    "source": f"debian:{package}",
                }
            )
    with gzip.GzipFile(OUTPUT, "wb", mtime=0) as handle:
        for record in records:
            handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    print(f"{len(records)} documents -> {OUTPUT} ({OUTPUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
