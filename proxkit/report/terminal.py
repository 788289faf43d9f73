"""`prox inspect`: the report's per-document diff in the terminal, with rich colours."""

from __future__ import annotations

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from proxkit.report.diff import DocumentView

STYLES = {"dropped": "red", "refined": "green", "unchanged": "blue"}


def render_document(view: DocumentView, max_lines: int | None = None) -> Panel:
    diff = Text()
    for line in view.lines[:max_lines]:
        diff.append(f"{line.number:03d} ", style="dim")
        for segment in line.segments:
            if line.removed:
                diff.append(segment.text, style="strike red")
            elif segment.normalized_from is not None:
                diff.append(segment.text, style="black on yellow")
            else:
                diff.append(segment.text)
        diff.append("\n")
    if max_lines is not None and len(view.lines) > max_lines:
        diff.append(f"... {len(view.lines) - max_lines:,} more lines\n", style="dim")
    if not view.highlighted:
        diff.append(
            "(normalizations overlap: text shown normalized, not highlighted)\n", style="dim"
        )
    side = Text()
    for name, program in (("doc program", view.doc_program), ("chunk program", view.chunk_program)):
        if program is not None:
            side.append(f"{name}\n", style="bold")
            side.append(f"{program or '(empty)'}\n\n", style="cyan")
    if view.errors:
        side.append("errors\n", style="bold red")
        side.append("\n".join(view.errors) + "\n", style="red")
    layout = Table.grid(expand=True, padding=(0, 2))
    layout.add_column(ratio=3)
    layout.add_column(ratio=2)
    layout.add_row(diff, side)
    title = Text.assemble(
        (view.id, "bold"), "  ", (view.category, STYLES.get(view.category, "")), f"  {view.outcome}"
    )
    if view.keep_score is not None:
        title.append(f"  keep score {view.keep_score:.3f}")
    header = (
        Text(f"dropped at {view.dropped_at} level", style="bold red") if view.dropped_at else Text()
    )
    return Panel(
        Group(header, layout) if view.dropped_at else layout, title=title, title_align="left"
    )
