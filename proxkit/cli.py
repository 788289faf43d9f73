"""The `prox` command line: refine a corpus, re-execute stored programs, show model prompts,
and make new refining models (annotate, sft-data, train, evaluate).

Each command names its configuration and the options it offers (`@options.command`); each
option, with its help and default, is declared once, on its config field (proxkit/options.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from proxkit import options
from proxkit.config import ConfigError, InspectConfig, RefineConfig, ReportConfig, load_flat
from proxkit.io.readers import Fields, list_files
from proxkit.io.rejects import RejectLog
from proxkit.pipeline.interrupts import Interrupted, interruptible
from proxkit.pipeline.lock import OutputLocked
from proxkit.pipeline.replicas import ReplicaFailed
from proxkit.pipeline.run import OutputExists, RunPaths, resume_hint, run
from proxkit.pipeline.units import ResumeRefused
from proxkit.programmers import BackendGone, ProgrammerError
from proxkit.programmers.hf import ModelNotFound
from proxkit.synth.annotate import AnnotateConfig
from proxkit.synth.sft import SFTConfig
from proxkit.tokenizer import TokenizerNotFound
from proxkit.train.trainer import TrainConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="ProX corpus refining: a small program for every document, executed.",
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",  # help texts are escaped where they are built (options.py)
)
# No markup: messages hold paths and flags such as 'proxkit[datatrove]' that rich would eat.
stdout = Console(soft_wrap=True, markup=False)
stderr = Console(stderr=True, soft_wrap=True, markup=False)
C = TypeVar("C")
R = TypeVar("R")
Errors = tuple[type[Exception], ...]

ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config", help="YAML file with any of these options; flags given here override it."
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
# What the user named and is not there: a file, a programmer, a model, a tokenizer.
SETUP_ERRORS = (FileNotFoundError, ProgrammerError, ModelNotFound, TokenizerNotFound)


def _alert(label: str, message: str) -> None:
    """`label: message` on stderr, the label in bold red."""
    stderr.print(Text.assemble((f"{label}:", "bold red"), " ", message), highlight=False)


def _fail(message: str, code: int = 2) -> NoReturn:
    _alert("error", message)
    raise typer.Exit(code)


def _say(message: str) -> None:
    stdout.print(message, highlight=False)


def _attempt(errors: Errors, function: Callable[..., R], *args: Any, what: str = "") -> R:
    """`function(*args)`; an error of the kinds named is one clear line, exit code 2."""
    try:
        return function(*args)
    except errors as exc:
        _fail(f"{what}{exc}")


def _load(cls: type[C], config_file: Path | None, flags: dict[str, Any]) -> C:
    """The command's configuration: --config YAML, the flags given on top."""
    errors = (ConfigError, TypeError, OSError)
    return _attempt(errors, load_flat, cls, config_file, flags, what="configuration: ")


def _table(title: str, rows: Iterable[tuple[str, Any]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in rows:
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    stdout.print(table)


def _run(config: RefineConfig, quiet: bool, title: str) -> None:
    """One refine or execute run, its summary, and every way it can fail as one clear line."""
    try:
        with interruptible():
            stats = run(config, progress=not quiet)
    except Interrupted as exc:
        _alert("interrupted", f"({exc.signal}) {resume_hint(config)}")
        # Out at once, past the interpreter's exit handlers: a worker process stopped while
        # it wrote a result leaves concurrent.futures' manager thread waiting for the rest of
        # that message, and the interpreter joins that thread at exit (seen: a run that said
        # "interrupted" and never ended). What the run keeps is on disk, its lock released.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exc.exit_code)
    except (OutputLocked, ReplicaFailed) as exc:
        _fail(str(exc), code=1)
    except (OutputExists, ResumeRefused, ConfigError, *SETUP_ERRORS) as exc:
        _fail(str(exc))
    except BackendGone as exc:
        _fail(f"{exc}; {resume_hint(config)}", code=1)
    except OSError as exc:  # reading errors become rejects; this is the output failing
        _fail(
            f"could not write the output ({exc}); the file being written was not marked "
            "complete: free space or fix the output, then run the same command to resume",
            code=1,
        )
    paths = RunPaths.for_output(config.output)
    _table(title, stats.summary_lines())
    _say(f"output: {paths.output}   stats: {paths.stats}")
    if stats.rejected:
        where = paths.rejects if paths.output.suffix else paths.output / "rejects-*.jsonl"
        _say(f"rejects: {where}")
    if stats.documents == 0 and stats.rejected:
        _fail("no document could be read; see the rejects above", code=1)


@app.command()
@options.command(RefineConfig)
def refine(config_file: ConfigFile = None, quiet: Quiet = False, **flags: Any) -> None:
    """Refine a corpus: doc-level keep/drop, then chunk-level line removal and normalization.

    An output folder is written one input file at a time; re-running the same command resumes
    a killed run (finished files are kept, unfinished ones redone); another configuration is
    refused unless --overwrite.
    """
    config = _load(RefineConfig, config_file, flags)
    _run(config, quiet, "prox refine")
    _say(
        f"see what changed: prox report {config.output} (HTML with plots and diffs), "
        f"prox inspect {config.output} (terminal); re-tune thresholds without re-running "
        f"programmers: prox execute {config.output} -o NEW_OUTPUT --short-doc-words N ..."
    )


STORED = ("inputs", "output", "overwrite", "workers", options.THRESHOLDS, options.INPUT_OUTPUT)


@app.command()
@options.command(RefineConfig, *STORED)
def execute(
    stage: Annotated[
        str,
        typer.Option(
            "--stage",
            help="Which stored programs to run: doc, chunk, or both (whichever each record has).",
        ),
    ] = "both",
    config_file: ConfigFile = None,
    quiet: Quiet = False,
    **flags: Any,
) -> None:
    """Re-execute the programs stored in records (metadata.doc_program, metadata.chunk_program).

    Programs run on `raw_content` when a record has it (a refined record), else on the text
    field; the output keeps every record in order, dropped ones with empty text.
    """
    if stage not in ("doc", "chunk", "both"):
        _fail(f"--stage must be doc, chunk or both, got {stage!r}")
    stages = "doc,chunk" if stage == "both" else stage
    fixed = {"doc_programmer": "stored", "chunk_programmer": "stored", "stages": stages}
    _run(_load(RefineConfig, config_file, {**flags, **fixed}), quiet, "prox execute")


PROMPTS = ("inputs", "output", "text_field", "id_field", "limit", "overwrite", options.PROMPTS)


@app.command()
@options.command(RefineConfig, *PROMPTS)
def prompts(
    tokenizer: Annotated[
        str,
        typer.Option(
            "--tokenizer", help="Tokenizer folder or Hugging Face Hub id of the refining model."
        ),
    ],
    stage: Annotated[str, typer.Option("--stage", help="doc or chunk.")] = "chunk",
    **flags: Any,
) -> None:
    """Write one record per model call (id, chunk_index, exact prompt text, token count)."""
    from proxkit.pipeline.prompt_export import export_prompts
    from proxkit.tokenizer import load_tokenizer

    if stage not in ("doc", "chunk"):
        _fail(f"--stage must be doc or chunk, got {stage!r}")
    config = _load(RefineConfig, None, flags)
    paths = RunPaths.for_output(config.output)
    if paths.existing() and not config.overwrite:
        _fail(f"{config.output} already exists; pass --overwrite to replace it")
    files = _attempt(SETUP_ERRORS, list_files, config.inputs)
    info = _attempt(SETUP_ERRORS, load_tokenizer, tokenizer)
    fields = Fields(config.text_field, config.id_field)
    limits = (config.max_chunk_tokens, config.max_doc_tokens, config.doc_truncation, config.limit)
    rejects = RejectLog(paths.rejects)
    try:
        count = export_prompts(files, paths.output, stage, info, fields, *limits, rejects.add)
    finally:
        rejects.close()
    _say(f"{count:,} {stage}-level prompts -> {paths.output}; {rejects.count:,} rejected")


@app.command()
def verify(
    output: Annotated[Path, typer.Argument(help="A folder or file written by refine or execute.")],
) -> None:
    """Audit a run: re-read its inputs and every output file, re-execute the stored programs,
    and check that every input record ended in exactly one output record or reject."""
    from proxkit.pipeline.verify import verify as check

    report = _attempt((FileNotFoundError, ValueError), check, output, sys.stderr.isatty())
    _say(report.summary())
    for problem in report.problems:
        _alert("problem", problem)
    if not report.ok:
        raise typer.Exit(1)
    _say("ok: every input record is accounted for exactly once")


@app.command()
@options.command(ReportConfig)
def report(**flags: Any) -> None:
    """Write one self-contained HTML report of a run: summary, plots, frequent removals and
    normalizations, and a sample of documents as diffs beside their programs."""
    from proxkit.report.collect import NotARun, collect
    from proxkit.report.html import render

    config = _load(ReportConfig, None, flags)
    run_of = (config.output, config.sample, config.seed, config.group_by)
    data = _attempt((NotARun, FileNotFoundError), collect, *run_of)
    html = config.html_file()
    why = f"cannot write the report to {html} (choose another with --html): "
    _attempt(OSError, html.write_text, render(data), "utf-8", what=why)
    _say(
        f"{data.documents:,} documents, {len(data.sample)} in the sample -> {html} "
        f"({html.stat().st_size / 1e6:.1f} MB)"
    )


def _views(config: InspectConfig) -> Iterator[Any]:
    """The documents of a run that `prox inspect` was asked for, as diff views."""
    from proxkit.report.collect import read_records, run_config, run_fields
    from proxkit.report.diff import document_view

    fields = run_fields(run_config(config.output))
    views = (document_view(r, fields.text, fields.id) for r in read_records(config.output, fields))
    return (view for view in views if config.wants(view))


@app.command()
@options.command(InspectConfig)
def inspect(**flags: Any) -> None:
    """Show documents of a run as diffs in the terminal: removed lines struck through in red,
    normalized strings highlighted, programs beside them."""
    from proxkit.report.collect import NotARun
    from proxkit.report.terminal import render_document

    config = _load(InspectConfig, None, flags)
    missing, shown = set(config.ids), 0
    console = Console()  # wraps long lines inside the panels (the summary console does not)
    paging = console.pager(styles=True) if config.pager and console.is_terminal else None
    try:
        with paging or contextlib.nullcontext():
            for view in islice(_views(config), config.limit or None):
                missing.discard(view.id)
                console.print(render_document(view, config.max_lines or None))
                shown += 1
    except (NotARun, FileNotFoundError) as exc:
        _fail(str(exc))
    if missing:
        _fail(f"no document with id {', '.join(sorted(missing))} in {config.output}", code=1)
    if not shown:
        stderr.print("no document matches", highlight=False)


@app.command()
@options.command(AnnotateConfig)
def annotate(config_file: ConfigFile = None, quiet: Quiet = False, **flags: Any) -> None:
    """Have a teacher LLM label a seeded, length-stratified sample: doc-level scores mapped to
    keep/drop, and a program per chunk, written by the teacher or derived from the chunk as it
    cleaned it (--teacher-mode clean). Re-running the same command resumes."""
    from proxkit.synth.annotate import AnnotationExists, run_annotate
    from proxkit.synth.rubric import RubricError

    config = _load(AnnotateConfig, config_file, flags)
    errors = (AnnotationExists, RubricError, TokenizerNotFound, FileNotFoundError, ValueError)
    summary = _attempt(errors, run_annotate, config, not quiet)
    rows = {
        "documents read": summary["documents_read"],
        "rejected records": summary["rejected_records"],
        "annotated now / before": f"{summary['annotated_now']} / {summary['already_done']}",
        **{f"doc {k}": v for k, v in summary["doc"].items()},
        **{f"chunk {k}": v for k, v in summary["chunk"].items()},
        **{f"clean {k}": v for k, v in summary.get("clean", {}).items()},
    }
    _table("prox annotate", rows.items())
    _say(f"annotations: {Path(config.output) / 'annotations.jsonl'}; next: prox sft-data")


@app.command("sft-data")
@options.command(SFTConfig)
def sft_data(config_file: ConfigFile = None, **flags: Any) -> None:
    """Turn annotations into train/validation examples in the refining models' chat format."""
    from proxkit.synth.sft import write_sft_data

    config = _load(SFTConfig, config_file, flags)
    errors = (FileNotFoundError, FileExistsError, TokenizerNotFound, ValueError)
    manifest = _attempt(errors, write_sft_data, config)
    rows = {
        **{f"documents {k}": v for k, v in manifest["documents"].items()},
        **{f"examples {k}": v for k, v in manifest["examples"].items()},
        **{f"left out: {k}": v for k, v in manifest["left_out"].items()},
        "unreadable annotation lines": manifest["unreadable_annotation_lines"],
    }
    _table("prox sft-data", rows.items())
    _say(f"examples: {config.output}/train.jsonl, validation.jsonl; held out: heldout.jsonl")


@app.command()
@options.command(TrainConfig)
def train(config_file: ConfigFile = None, quiet: Quiet = False, **flags: Any) -> None:
    """Fine-tune a causal LM on sft-data examples (loss on the answers only); the result is a
    checkpoint folder for --doc-programmer / --chunk-programmer."""
    from proxkit.train.trainer import TokenizerMismatch
    from proxkit.train.trainer import train as run_training

    config = _load(TrainConfig, config_file, flags)
    errors = (FileNotFoundError, FileExistsError, TokenizerMismatch, ConfigError, *SETUP_ERRORS)
    try:
        report = _attempt(errors, run_training, config, not quiet)
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        _fail(f"prox train needs the [train] extra: pip install 'proxkit[train]' ({exc})")
    _table("prox train", ((k, v) for k, v in report.items() if k != "config"))
    _say(f"checkpoint: {config.output}; use it with --doc-programmer / --chunk-programmer")


EVALUATE = (
    "doc_programmer",
    "chunk_programmer",
    "stages",
    "tokenizer",
    "deletion_only",
    *options.MODELS,
)


@app.command()
@options.command(RefineConfig, *EVALUATE)
def evaluate(
    annotations: Annotated[str, typer.Argument(help="Held-out annotations: heldout.jsonl.")],
    programmer: Annotated[
        str | None,
        typer.Option("--programmer", help="For both stages: rules, a model folder, a Hub id."),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON here.")
    ] = None,
    config_file: ConfigFile = None,
    **flags: Any,
) -> None:
    """Score a programmer against held-out teacher annotations: doc-level accuracy, drop
    precision/recall/F1 and keep-score calibration; chunk-level line-removal P/R/F1, normalize
    matches, malformed programs, words kept, and deleted characters (over- and
    under-deletion)."""
    from proxkit.evaluate.run import evaluate as run_evaluation

    both = {"doc_programmer": programmer, "chunk_programmer": programmer} if programmer else {}
    config = _load(RefineConfig, config_file, {**both, **flags})
    report = _attempt(SETUP_ERRORS, run_evaluation, annotations, config)
    for problem in report["unreadable_lines"]:
        _alert("skipped", problem)
    for stage in ("doc", "chunk"):
        if stage in report:
            _table(f"prox evaluate: {stage} level", _flatten(report[stage]))
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        _say(f"report: {json_path}")


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if key == "bins":
            continue
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key} ")
        else:
            yield f"{prefix}{key}", "-" if value is None else value


def main() -> None:
    app(prog_name="prox")


if __name__ == "__main__":
    sys.exit(main())
