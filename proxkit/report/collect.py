"""Read a run's output once and gather what the report shows: outcome counts, length and
removal distributions, the most frequent removed lines and normalizations, keep scores,
program errors, keep ratios per source or domain, and a seeded sample of documents per
category. Memory stays bounded: histograms and capped counters, never all records.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from proxkit.io.atomic import DamagedFile, read_json
from proxkit.io.readers import Document, Fields, read_file, record_format
from proxkit.pipeline.records import refined_field
from proxkit.pipeline.run import RunPaths
from proxkit.pipeline.units import RunState
from proxkit.report.diff import CATEGORIES, DocumentView, document_view
from proxkit.seeded import Lowest, priority

LENGTH_EDGES = (0, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000)
REMOVED_MAX = 20  # removed-lines histogram: 0..19, then "20+"
COUNTER_CAP = 100_000  # distinct removed lines kept before the rare ones are pruned
TOP = 25


class NotARun(FileNotFoundError):
    """A path that holds no readable prox output (the message names what is missing or damaged)."""


def output_files(output: str) -> list[Path]:
    """The record files of a run: a single file, or the shards of its completed units."""
    path = Path(output)
    if record_format(output) is not None and path.is_file():
        return [path]
    state = RunState(path)
    if state.exists():
        try:
            done = [state.done(unit) for unit in state.units()]
        except DamagedFile as exc:
            raise NotARun(f"{exc}; run the same prox command again to redo it") from None
        return [path / name for record in done if record for name in record["files"]]
    shards = sorted(p for p in path.glob("part-*") if not p.name.endswith(".partial"))
    if not shards:
        raise NotARun(f"{output} holds no prox output (no records, no _prox/run.json)")
    return shards


def run_config(output: str) -> dict[str, Any]:
    """The run's configuration (`config.yaml`, written when the run ended), or {}."""
    path = RunPaths.for_output(output).config
    if not path.exists():
        return {}
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise NotARun(f"{path} is damaged ({exc})") from None
    if not isinstance(config, dict):
        raise NotARun(f"{path} is damaged (not a mapping)")
    return config


def run_fields(config: dict[str, Any]) -> Fields:
    return Fields(config.get("text_field", "text"), config.get("id_field", "id"))


def read_records(output: str, fields: Fields) -> Iterator[dict[str, Any]]:
    for path in output_files(output):
        for item in read_file(str(path), fields):
            if isinstance(item, Document):
                yield item.record


@dataclass
class Histogram:
    edges: tuple[float, ...]
    counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.edges)

    def add(self, value: float) -> None:
        index = 0
        while index + 1 < len(self.edges) and value >= self.edges[index + 1]:
            index += 1
        self.counts[index] += 1


def group_key(record: dict[str, Any], group_by: str | None) -> str | None:
    """The record's source or domain: the field asked for, else the host of `url`, else
    `source`; a URL-valued field gives its host."""
    names = [group_by] if group_by else ["url", "source"]
    for name in names:
        value = record.get(name)
        if value is None and isinstance(record.get("metadata"), dict):
            value = record["metadata"].get(name)
        if isinstance(value, str) and value:
            return _host(value) or value if "://" in value else value
    return None


def _host(url: str) -> str:
    """The host part of a URL, also of one Python's parser refuses (`http://[::1/x`)."""
    try:
        return urlparse(url).netloc
    except ValueError:
        return url.split("://", 1)[1].split("/", 1)[0]


@dataclass
class ReportData:
    output: str
    config: dict[str, Any]
    stats: dict[str, Any]
    group_by: str | None
    refined_field: str = "text"
    documents: int = 0
    categories: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    words_before: Histogram = field(default_factory=lambda: Histogram(LENGTH_EDGES))
    words_after: Histogram = field(default_factory=lambda: Histogram(LENGTH_EDGES))
    groups: dict[str, list[int]] = field(default_factory=dict)  # docs, dropped, words in, out
    removed_per_doc: Counter = field(default_factory=Counter)
    removed_lines: Counter = field(default_factory=Counter)
    normalizations: Counter = field(default_factory=Counter)  # (source, target) -> occurrences
    keep_scores: Histogram = field(
        default_factory=lambda: Histogram(tuple(i / 20 for i in range(20)))
    )
    scored: int = 0
    errors: Counter = field(default_factory=Counter)  # stage -> documents with errors
    error_reasons: Counter = field(default_factory=Counter)
    sample: list[DocumentView] = field(default_factory=list)

    def add(self, record: dict[str, Any], view: DocumentView) -> None:
        self.documents += 1
        self.categories[view.category] += 1
        prox = (record.get("metadata") or {}).get("prox") or {}
        for stage in ("doc", "chunk"):
            result = prox.get(stage)
            if not result:
                continue
            self.outcomes[f"{stage}: {result.get('outcome')}"] += 1
            if result.get("errors"):
                self.errors[stage] += 1
                for error in result["errors"]:
                    self.error_reasons[f"{stage}: {error.get('reason', '')}"] += 1
        counted = prox.get("chunk") or prox.get("doc") or {}
        before = counted.get("words_before")
        if not isinstance(before, int):
            before = len(str(record.get("raw_content") or record.get("text") or "").split())
        self.words_before.add(before)
        refined = record.get(self.refined_field)
        after = 0 if view.category == "dropped" else len(str(refined or "").split())
        if view.category != "dropped":
            self.words_after.add(after)
        removed = [line for line in view.lines if line.removed]
        self.removed_per_doc[min(len(removed), REMOVED_MAX)] += 1
        for line in removed:
            text = " ".join(line.text.split())[:200]
            if text:
                self.removed_lines[text] += 1
        if len(self.removed_lines) > COUNTER_CAP:
            self.removed_lines = Counter({k: v for k, v in self.removed_lines.items() if v > 1})
        for source, target, occurrences in (prox.get("chunk") or {}).get("normalizations") or []:
            if occurrences:
                self.normalizations[(source, target)] += occurrences
        if view.keep_score is not None:
            self.scored += 1
            self.keep_scores.add(view.keep_score)
        key = group_key(record, self.group_by)
        if key is not None:
            entry = self.groups.setdefault(key, [0, 0, 0, 0])
            entry[0] += 1
            entry[1] += view.category == "dropped"
            entry[2] += before
            entry[3] += after


def collect(
    output: str,
    per_category: int = 50,
    seed: int = 0,
    group_by: str | None = None,
) -> ReportData:
    paths = RunPaths.for_output(output)
    config = run_config(output)
    try:
        stats = read_json(paths.stats) if paths.stats.exists() else {}
    except DamagedFile as exc:
        raise NotARun(str(exc)) from None
    if not isinstance(stats, dict):
        raise NotARun(f"{paths.stats} is damaged (not a JSON object)")
    fields = run_fields(config)
    data = ReportData(output, config, stats, group_by, refined_field(fields))
    # The lowest-priority documents of each filter (each category, and those with errors).
    kept: dict[str, Lowest[DocumentView]] = {
        name: Lowest(per_category) for name in (*CATEGORIES, "errors")
    }
    for record in read_records(output, fields):
        view = document_view(record, fields.text, fields.id)
        data.add(record, view)
        order = (priority(seed, view.id), data.documents)
        for name in (view.category, "errors") if view.has_errors else (view.category,):
            kept[name].offer(order, view)
    chosen = {view.id: (order, view) for keeper in kept.values() for order, view in keeper.items()}
    data.sample = [view for _, view in sorted(chosen.values(), key=lambda c: c[0])]
    return data
