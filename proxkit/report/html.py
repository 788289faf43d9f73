"""`prox report OUT`: one self-contained HTML file (no network needed to open it).

It holds the run's configuration and summary, plots rendered by matplotlib to inline SVG,
tables of the most frequent removed lines, normalizations and program errors, and a sample of
documents (seeded, per outcome) with removed lines struck through, normalized strings
highlighted and the programs beside them, filterable by outcome with a few lines of inline
script. The sample, not the corpus, is embedded, so the file stays small for any run size.
"""

from __future__ import annotations

import io
import itertools
import warnings
from datetime import datetime, timezone
from html import escape
from typing import Any

import yaml

from proxkit.report.collect import LENGTH_EDGES, REMOVED_MAX, TOP, ReportData
from proxkit.report.diff import CATEGORIES, MAX_LINES, DocumentView

FILTERS = ("all", *CATEGORIES, "errors")

STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1rem 2rem;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.9rem}td,th{padding:.2rem .6rem;border-bottom:1px solid #eee;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:1rem}
figure{margin:0}figure svg{width:100%;height:auto}figcaption{font-size:.85rem;color:#555}
.filters button{margin:0 .3rem .5rem 0;padding:.3rem .8rem;border:1px solid #888;background:#fff;border-radius:1rem;cursor:pointer}
.filters button.active{background:#234;color:#fff}
details.doc{border:1px solid #ccc;border-radius:.4rem;margin:.5rem 0;padding:.3rem .6rem}
details.doc summary{cursor:pointer;font-family:monospace}
.tag{display:inline-block;border-radius:.3rem;padding:0 .4rem;margin-left:.4rem;font-size:.8rem;background:#eee}
.tag.dropped{background:#f6c7c7}.tag.refined{background:#cde8cd}.tag.errors{background:#f8e3a8}
.body{display:grid;grid-template-columns:3fr 2fr;gap:1rem}.body>div:last-child{position:sticky;top:0;align-self:start}
ol.diff{list-style:none;padding:0;margin:.4rem 0;font-family:monospace;font-size:.82rem;white-space:pre-wrap;word-break:break-word}
ol.diff li{padding:0 .3rem}ol.diff li.removed{background:#fdecec;color:#a33;text-decoration:line-through}
ol.diff .num{color:#999;margin-right:.6rem;text-decoration:none;display:inline-block}
mark{background:#ffe58a}pre{background:#f6f6f6;padding:.4rem;white-space:pre-wrap;word-break:break-word;font-size:.8rem}
.banner{color:#a33;font-weight:bold}
"""

SCRIPT = """
const buttons = document.querySelectorAll('.filters button');
const docs = document.querySelectorAll('details.doc');
function show(filter) {
  let shown = 0;
  docs.forEach(d => {
    const match = filter === 'all' || d.dataset.category === filter ||
      (filter === 'errors' && d.dataset.errors === '1');
    d.hidden = !match;
    if (match) shown++;
  });
  buttons.forEach(b => b.classList.toggle('active', b.dataset.filter === filter));
  document.getElementById('shown').textContent = shown;
}
buttons.forEach(b => b.addEventListener('click', () => show(b.dataset.filter)));
show('all');
"""


def _svg(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    with warnings.catch_warnings():
        # Labels stay text in the SVG (svg.fonttype none): the browser's fonts draw them, so
        # matplotlib's own fonts lacking a glyph (fullwidth hosts in real crawls) is no matter.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        # No date or creator: the same run gives the same report.
        figure.savefig(
            buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None}
        )
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _bar(
    labels: list[str],
    series: dict[str, list[float]],
    title: str,
    horizontal: bool = False,
    xlabel: str = "",
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text stays text: smaller files, selectable labels
    height = max(3.0, 0.28 * len(labels)) if horizontal else 3.0
    figure, axes = plt.subplots(figsize=(6.5, height))
    positions = list(range(len(labels)))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        offset = [p + (i - (len(series) - 1) / 2) * width for p in positions]
        if horizontal:
            axes.barh(offset, values, height=width, label=name)
        else:
            axes.bar(offset, values, width=width, label=name)
    if horizontal:
        axes.set_yticks(positions, labels, fontsize=8)
        axes.invert_yaxis()
        axes.set_xlabel(xlabel)
    else:
        axes.set_xticks(positions, labels, rotation=45, ha="right", fontsize=8)
        axes.set_ylabel(xlabel)
    if len(series) > 1:
        axes.legend(fontsize=8)
    axes.set_title(title, fontsize=10)
    axes.spines[["top", "right"]].set_visible(False)
    return _svg(figure)


def _range_labels(edges: tuple[float, ...], fmt=lambda v: f"{v:g}") -> list[str]:
    return [f"{fmt(a)}-{fmt(b)}" for a, b in itertools.pairwise(edges)] + [f"{fmt(edges[-1])}+"]


def plots(data: ReportData) -> list[tuple[str, str]]:
    """(caption, inline SVG) per plot."""
    figures = []
    outcomes = data.outcomes.most_common()
    if outcomes:
        figures.append(
            (
                "Outcome of each stage, in documents.",
                _bar(
                    [k for k, _ in outcomes],
                    {"documents": [v for _, v in outcomes]},
                    "Outcomes",
                    horizontal=True,
                ),
            )
        )
    figures.append(
        (
            "Document length in words: the original, and what is kept (dropped documents left out).",
            _bar(
                _range_labels(LENGTH_EDGES),
                {"before": data.words_before.counts, "after": data.words_after.counts},
                "Document length (words)",
                xlabel="documents",
            ),
        )
    )
    figures.append(
        (
            "Lines removed per document by chunk-level programs.",
            _bar(
                [str(n) for n in range(REMOVED_MAX)] + [f"{REMOVED_MAX}+"],
                {"documents": [data.removed_per_doc.get(n, 0) for n in range(REMOVED_MAX + 1)]},
                "Removed lines per document",
                xlabel="documents",
            ),
        )
    )
    groups = sorted(data.groups.items(), key=lambda g: -g[1][0])[:TOP]
    if groups:
        figures.append(
            (
                f"Per {data.group_by or 'source or domain'} (the {len(groups)} largest): share of words kept and of documents dropped.",
                _bar(
                    [f"{k} ({v[0]})" for k, v in groups],
                    {
                        "words kept": [v[3] / v[2] if v[2] else 0.0 for _, v in groups],
                        "documents dropped": [v[1] / v[0] for _, v in groups],
                    },
                    "Keep ratio per source",
                    horizontal=True,
                    xlabel="fraction",
                ),
            )
        )
    if data.scored:
        figures.append(
            (
                f"Doc-level keep score of {data.scored:,} documents (model programmers).",
                _bar(
                    [*_range_labels(data.keep_scores.edges, lambda v: f"{v:.2f}")[:-1], "0.95-1"],
                    {"documents": data.keep_scores.counts},
                    "Keep score",
                    xlabel="documents",
                ),
            )
        )
    stages = [s for s in ("doc", "chunk") if any(k.startswith(f"{s}:") for k in data.outcomes)]
    if stages:
        totals = {
            s: sum(v for k, v in data.outcomes.items() if k.startswith(f"{s}:")) for s in stages
        }
        figures.append(
            (
                "Share of documents whose program had errors, per stage.",
                _bar(
                    stages,
                    {"error rate": [data.errors[s] / totals[s] for s in stages]},
                    "Program error rate",
                    xlabel="fraction",
                ),
            )
        )
    return figures


def _table(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{v:,}</td>' if isinstance(v, int) else f"<td>{escape(str(v))}</td>"
            for v in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body or '<tr><td>none</td></tr>'}</table>"


def _document(view: DocumentView) -> str:
    tags = f'<span class="tag {view.category}">{view.category}</span>'
    if view.has_errors:
        tags += '<span class="tag errors">program errors</span>'
    if view.keep_score is not None:
        tags += f'<span class="tag">keep score {view.keep_score:.3f}</span>'
    items = []
    for line in view.lines[:MAX_LINES]:
        parts = "".join(
            f'<mark title="normalized from {escape(repr(s.normalized_from))}">{escape(s.text) or "&#8203;"}</mark>'
            if s.normalized_from is not None
            else escape(s.text)
            for s in line.segments
        )
        css = ' class="removed"' if line.removed else ""
        items.append(f'<li{css}><span class="num">{line.number:03d}</span>{parts}</li>')
    if len(view.lines) > MAX_LINES:
        items.append(f"<li>... {len(view.lines) - MAX_LINES:,} more lines not shown</li>")
    banner = f'<p class="banner">dropped at {view.dropped_at} level</p>' if view.dropped_at else ""
    note = (
        ""
        if view.highlighted
        else "<p>(normalizations overlap: text shown normalized, not highlighted)</p>"
    )
    programs = "".join(
        f"<h4>{name}</h4><pre>{escape(program)}</pre>"
        for name, program in (
            ("doc program", view.doc_program),
            ("chunk program", view.chunk_program),
        )
        if program is not None
    )
    errors = "".join(f"<li>{escape(e)}</li>" for e in view.errors)
    return (
        f'<details class="doc" data-category="{view.category}" data-errors="{int(view.has_errors)}">'
        f"<summary>{escape(view.id)}{tags} <small>{escape(view.outcome)}</small></summary>"
        f'<div class="body"><div>{banner}{note}<ol class="diff">{"".join(items)}</ol></div>'
        f"<div>{programs}{f'<h4>errors</h4><ul>{errors}</ul>' if errors else ''}</div></div></details>"
    )


def render(data: ReportData) -> str:
    summary_rows = (
        [("documents", data.documents)]
        + [(name, data.categories.get(name, 0)) for name in CATEGORIES]
        + [(f"{stage} programs with errors", count) for stage, count in sorted(data.errors.items())]
    )
    stats_rows = [
        (k, v if isinstance(v, int) else str(v))
        for k, v in data.stats.items()
        if not isinstance(v, (dict, list))
    ]
    counts = {
        "all": len(data.sample),
        **{c: sum(v.category == c for v in data.sample) for c in CATEGORIES},
        "errors": sum(v.has_errors for v in data.sample),
    }
    buttons = "".join(
        f'<button type="button" data-filter="{f}">{f} ({counts[f]})</button>' for f in FILTERS
    )
    figures = "".join(
        f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>"
        for caption, svg in plots(data)
    )
    normalizations = [
        (repr(source), repr(target), count)
        for (source, target), count in data.normalizations.most_common(TOP)
    ]
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>prox report: {escape(data.output)}</title><style>{STYLE}</style></head>
<body>
<h1>prox report</h1>
<p>{escape(data.output)} &middot; generated {generated}</p>
<h2>Summary</h2>
<div class="plots"><div>{_table(("", "documents"), summary_rows)}</div><div>{_table(("run statistic", "value"), stats_rows)}</div></div>
<h2>Plots</h2>
<div class="plots">{figures}</div>
<h2>Most frequent removed lines</h2>
{_table(("line", "times removed"), data.removed_lines.most_common(TOP))}
<h2>Most frequent normalizations</h2>
{_table(("source", "target", "occurrences"), normalizations)}
<h2>Program errors</h2>
{_table(("stage: reason", "errors"), data.error_reasons.most_common(TOP))}
<h2 id="sample">Sample of documents</h2>
<p>A seeded sample of up to {max(counts[c] for c in CATEGORIES) if data.sample else 0} documents per outcome; removed lines are struck through, normalized text is
<mark>highlighted</mark> (hover for the original). Showing <span id="shown">{len(data.sample)}</span>.</p>
<div class="filters">{buttons}</div>
<div id="documents">{"".join(_document(v) for v in data.sample)}</div>
<h2>Configuration</h2>
<pre>{escape(yaml.safe_dump(data.config, sort_keys=False) if data.config else "(no config.yaml found)")}</pre>
<script>{SCRIPT}</script>
</body></html>
"""
