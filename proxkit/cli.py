"""The `prox` command line: refine a corpus, re-execute stored programs, show model prompts,
and make new refining models (annotate, sft-data, train, evaluate)."""

from __future__ import annotations

import re
import sys
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from proxkit.config import ConfigError, RefineConfig
from proxkit.io.readers import Fields, list_files
from proxkit.io.rejects import RejectLog
from proxkit.pipeline.interrupts import Interrupted, interruptible
from proxkit.pipeline.lock import OutputLocked
from proxkit.pipeline.replicas import ReplicaFailed
from proxkit.pipeline.run import OutputExists, RunPaths, resume_hint, run
from proxkit.pipeline.stats import RunStats
from proxkit.pipeline.units import ResumeRefused
from proxkit.program import Thresholds
from proxkit.programmers import UnknownProgrammer
from proxkit.programmers.hf import ModelNotFound

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="ProX corpus refining: a small program for every document, executed.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[default: ...]", which rich markup would swallow
)
# No markup: messages hold paths and flags such as 'proxkit[datatrove]' that rich would eat.
stdout = Console(soft_wrap=True, markup=False)
stderr = Console(stderr=True, soft_wrap=True, markup=False)


def _alert(label: str, message: str) -> None:
    """`label: message` on stderr, the label in bold red."""
    stderr.print(Text.assemble((f"{label}:", "bold red"), " ", message), highlight=False)


Inputs = Annotated[
    list[str],
    typer.Argument(help="Input files, folders, globs or fsspec URLs (.jsonl[.gz|.zst], .parquet)."),
]
Output = Annotated[
    str,
    typer.Option(
        "--output", "-o", help="Output folder (sharded) or file name (out.jsonl.gz, out.parquet)."
    ),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config", help="YAML file with any of these options; flags given here override it."
    ),
]
ModeOpt = Annotated[
    str | None,
    typer.Option(
        "--mode",
        help="Program parsing: 'strict' (Python ast) or 'reference' (the ProX reference parser, byte for byte). [default: strict]",
    ),
]
MinKept = Annotated[
    float | None,
    typer.Option(
        "--min-kept-ratio",
        help="Use the refined text only if words(refined)/words(original) >= this (reference threshold_1). [default: 0.0]",
    ),
]
MaxRemoved = Annotated[
    float | None,
    typer.Option(
        "--max-removed-ratio",
        help="Drop the document if words(refined)/words(original) <= 1 - this (reference threshold_2). [default: 0.95]",
    ),
]
ErrorLimit = Annotated[
    int | None,
    typer.Option(
        "--error-limit",
        help="Ignore a chunk program with this many errors or more (reference error_op). [default: 2]",
    ),
]
ShortWords = Annotated[
    int | None,
    typer.Option(
        "--short-doc-words", help="Drop a refined text of at most this many words. [default: 10]"
    ),
]
TextField = Annotated[
    str | None,
    typer.Option("--text-field", help="Record field holding the document text. [default: text]"),
]
IdField = Annotated[
    str | None,
    typer.Option(
        "--id-field",
        help="Record field holding the id; a content hash is used where absent. [default: id]",
    ),
]
Overwrite = Annotated[
    bool | None, typer.Option("--overwrite", help="Replace results already in the output.")
]
Workers = Annotated[
    int | None,
    typer.Option("--workers", help="Worker processes for CPU work (0: one per core). [default: 0]"),
]
Limit = Annotated[int | None, typer.Option("--limit", help="Stop after this many documents.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def _fail(message: str, code: int = 2) -> None:
    _alert("error", message)
    raise typer.Exit(code)


def _size(value: str | None) -> int | None:
    """'512MB', '1GiB', '100000' -> bytes."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?[bB]?|[bB])?\s*", value)
    if not match:
        raise typer.BadParameter(f"not a size: {value!r} (e.g. 512MB, 2GiB, 0 for no limit)")
    number, unit = float(match.group(1)), (match.group(2) or "b").lower().rstrip("b")
    base = 1024 if unit.endswith("i") else 1000
    return int(number * base ** " kmgt".index(unit[:1] or " "))


def _gpus(value: str) -> tuple[str, ...]:
    """'4' -> cuda:0..cuda:3; '0,2' -> cuda:0, cuda:2."""
    value = value.strip()
    if value.isdigit() and "," not in value:
        return tuple(f"cuda:{i}" for i in range(int(value)))
    numbers = [v.strip() for v in value.split(",") if v.strip()]
    if not numbers or not all(n.isdigit() for n in numbers):
        raise typer.BadParameter(f"--gpus takes a count (4) or device numbers (0,2), got {value!r}")
    return tuple(f"cuda:{n}" for n in numbers)


def _print_summary(stats: RunStats, paths: RunPaths, title: str) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in stats.summary_lines():
        table.add_row(name, value)
    stdout.print(table)
    stdout.print(f"output: {paths.output}   stats: {paths.stats}", highlight=False)
    if stats.rejected:
        where = paths.rejects if paths.output.suffix else paths.output / "rejects-*.jsonl"
        stdout.print(f"rejects: {where}", highlight=False)


def _run(config: RefineConfig, quiet: bool, title: str) -> None:
    try:
        with interruptible():
            stats = run(config, progress=not quiet)
    except Interrupted as exc:
        _alert("interrupted", f"({exc.signal}) {resume_hint(config)}")
        raise typer.Exit(exc.exit_code) from None
    except OutputLocked as exc:
        _fail(str(exc), code=1)
    except (
        OutputExists,
        ResumeRefused,
        FileNotFoundError,
        UnknownProgrammer,
        ConfigError,
        ModelNotFound,
    ) as exc:
        _fail(str(exc))
    except ReplicaFailed as exc:
        _fail(str(exc), code=1)
    except OSError as exc:  # reading errors become rejects; this is the output failing
        _fail(
            f"could not write the output ({exc}); the file being written was not marked "
            "complete: free space or fix the output, then run the same command to resume",
            code=1,
        )
    _print_summary(stats, RunPaths.for_output(config.output), title)
    if stats.documents == 0 and stats.rejected:
        _fail("no document could be read; see the rejects above", code=1)


CONFIG_KEYS = frozenset(f.name for f in fields(RefineConfig)) | {f.name for f in fields(Thresholds)}


def _overrides(arguments: dict[str, Any], **fixed: Any) -> dict[str, Any]:
    """The configuration values given as flags: CLI parameters carry the config's own names,
    so no flag can be forgotten on the way to the configuration."""
    return {**{k: v for k, v in arguments.items() if k in CONFIG_KEYS}, **fixed}


def _load(config_file: Path | None, overrides: dict[str, Any]) -> RefineConfig:
    try:
        return RefineConfig.load(config_file, overrides)
    except (ConfigError, TypeError, OSError) as exc:
        _fail(f"configuration: {exc}")
        raise  # unreachable; keeps type checkers content


@app.command()
def refine(
    inputs: Inputs,
    output: Output,
    config_file: ConfigFile = None,
    doc_programmer: Annotated[
        str | None,
        typer.Option(
            "--doc-programmer",
            help="Who writes doc-level programs: 'rules' / 'rules:NAME,...', 'datatrove' / 'datatrove:FILTER,...' (datatrove's own filters), 'stored', or a model (folder or Hub id). [default: gair-prox/web-doc-refining-lm]",
        ),
    ] = None,
    chunk_programmer: Annotated[
        str | None,
        typer.Option(
            "--chunk-programmer",
            help="Who writes chunk-level programs: 'rules' / 'rules:NAME,...', 'datatrove' / 'datatrove:FILTER,...' (datatrove's own filters), 'stored', or a model (folder or Hub id). [default: gair-prox/web-chunk-refining-lm]",
        ),
    ] = None,
    stages: Annotated[
        str | None,
        typer.Option(
            "--stages", help="Comma-separated stages to run: doc,chunk. [default: doc,chunk]"
        ),
    ] = None,
    mode: ModeOpt = None,
    min_kept_ratio: MinKept = None,
    max_removed_ratio: MaxRemoved = None,
    error_limit: ErrorLimit = None,
    short_doc_words: ShortWords = None,
    text_field: TextField = None,
    id_field: IdField = None,
    output_format: Annotated[
        str | None,
        typer.Option(
            "--output-format",
            help="Shard format in an output folder: jsonl, jsonl.gz, jsonl.zst, parquet. [default: jsonl.gz]",
        ),
    ] = None,
    shard_size: Annotated[
        str | None,
        typer.Option(
            "--shard-size",
            help="Start a new output shard after this much uncompressed text (e.g. 512MB; 0: one shard). [default: 512MB]",
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Documents per batch. [default: 256]")
    ] = None,
    workers: Workers = None,
    limit: Limit = None,
    overwrite: Overwrite = None,
    unit_size: Annotated[
        str | None,
        typer.Option(
            "--unit-size",
            help="Split larger input files into work units of about this size (uncompressed JSONL: line-aligned byte ranges; Parquet: row groups), so a killed run loses at most one unit of work. [default: 256MiB]",
        ),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            "--engine",
            help="local (processes on this machine) or ray (a Ray cluster, extra [ray]). [default: local]",
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Ray cluster to join (e.g. ray://head:10001 or auto); default: start a local one.",
        ),
    ] = None,
    ray_actors: Annotated[
        int | None,
        typer.Option(
            "--ray-actors",
            help="Ray engine, model programmers: actors, each holding the model once. [default: 1]",
        ),
    ] = None,
    ray_gpus_per_actor: Annotated[
        float | None,
        typer.Option(
            "--ray-gpus-per-actor",
            help="Ray engine, model programmers: GPUs per actor. [default: 0]",
        ),
    ] = None,
    rank: Annotated[
        int | None,
        typer.Option(
            "--rank",
            help="This process's share of the work units (input files or parts of large ones), for Slurm arrays: units i with i % world-size == rank. [default: 0]",
        ),
    ] = None,
    world_size: Annotated[
        int | None,
        typer.Option("--world-size", help="How many processes share the work units. [default: 1]"),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            help="Tokenizer folder or Hub id: also count model tokens before and after in the summary.",
        ),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help="How model programmers run: transformers (CPU/GPU), vllm (GPU, extra [vllm]) or openai (any OpenAI-compatible server). [default: transformers]",
        ),
    ] = None,
    doc_scoring: Annotated[
        str | None,
        typer.Option(
            "--doc-scoring",
            help="Doc level with a model: 'forward' (one forward pass, keep score in metadata) or 'generate' (greedy text, as the reference). [default: forward]",
        ),
    ] = None,
    constrained: Annotated[
        bool | None,
        typer.Option(
            "--constrained/--no-constrained",
            help="transformers backend: generation can only write valid programs (grammar-constrained decoding). [default: constrained]",
        ),
    ] = None,
    doc_keep_threshold: Annotated[
        float | None,
        typer.Option(
            "--doc-keep-threshold",
            help="Drop a document whose keep score is below this. [default: 0.5, the greedy choice]",
        ),
    ] = None,
    doc_keep_fraction: Annotated[
        float | None,
        typer.Option(
            "--doc-keep-fraction",
            help="Instead of a threshold, keep this fraction of the best-scoring documents of each batch.",
        ),
    ] = None,
    doc_max_new_tokens: Annotated[
        int | None,
        typer.Option(
            "--doc-max-new-tokens",
            help="Token limit of a generated doc-level program (--doc-scoring generate). [default: 16]",
        ),
    ] = None,
    chunk_max_new_tokens: Annotated[
        int | None,
        typer.Option(
            "--chunk-max-new-tokens",
            help="Token limit of a generated chunk-level program (the reference's 256). [default: 256]",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device", help="transformers backend: auto, cpu, cuda, cuda:1. [default: auto]"
        ),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype",
            help="Model weights: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16. [default: auto]",
        ),
    ] = None,
    batch_tokens: Annotated[
        int | None,
        typer.Option(
            "--batch-tokens",
            help="transformers backend: prompt tokens per forward batch, padding included (continuous batching: tokens per step). [default: 16384]",
        ),
    ] = None,
    max_batch_size: Annotated[
        int | None,
        typer.Option(
            "--max-batch-size",
            help="transformers backend: sequences per batch (continuous batching: per step). [default: 64]",
        ),
    ] = None,
    generation: Annotated[
        str | None,
        typer.Option(
            "--generation",
            help="transformers backend: 'continuous' (continuous batching: a finished output frees its slot at once), 'static' (padded batches), or 'auto' (continuous on a GPU, static on CPU, where it measured faster). [default: auto]",
        ),
    ] = None,
    kv_cache_tokens: Annotated[
        int | None,
        typer.Option(
            "--kv-cache-tokens",
            help="transformers backend, continuous batching: KV cache size in tokens (0: from free GPU memory; 65536 on CPU). [default: 0]",
        ),
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            "--gpus",
            help="One model replica (process) per GPU of this node, fed from one ordered stream: a count (--gpus 4) or device numbers (--gpus 0,2). Output is byte for byte that of one GPU.",
        ),
    ] = None,
    replicas: Annotated[
        str | None,
        typer.Option(
            "--replicas",
            help="Like --gpus with any devices, e.g. cuda:0,cuda:0 (two replicas on one GPU) or cpu,cpu (each takes its share of the cores).",
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="torch CPU threads per model (0: all cores, shared among CPU replicas). [default: 0]",
        ),
    ] = None,
    compile_model: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="transformers backend: torch.compile the one-pass doc scoring (fuses the small "
            "element-wise kernels; pays off on GPUs and long runs). [default: no]",
        ),
    ] = None,
    tensor_parallel: Annotated[
        int | None,
        typer.Option("--tensor-parallel", help="vllm backend: GPUs per model. [default: 1]"),
    ] = None,
    api_base: Annotated[
        str | None,
        typer.Option(
            "--api-base",
            help="openai backend: the server's base URL, e.g. http://127.0.0.1:8000/v1.",
        ),
    ] = None,
    api_mode: Annotated[
        str | None,
        typer.Option(
            "--api-mode",
            help="openai backend: completions (proxkit's exact prompt text) or chat (system + user messages; the server applies its chat template). [default: completions]",
        ),
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            "--api-key-env",
            help="openai backend: environment variable holding the API key. [default: OPENAI_API_KEY]",
        ),
    ] = None,
    max_concurrency: Annotated[
        int | None,
        typer.Option(
            "--max-concurrency", help="openai backend: requests in flight at once. [default: 32]"
        ),
    ] = None,
    request_timeout: Annotated[
        float | None,
        typer.Option(
            "--request-timeout", help="openai backend: seconds per request. [default: 120]"
        ),
    ] = None,
    max_retries: Annotated[
        int | None,
        typer.Option(
            "--max-retries",
            help="openai backend: retries on 429/5xx/connection errors, with backoff. [default: 4]",
        ),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Refine a corpus: doc-level keep/drop, then chunk-level line removal and normalization.

    An output folder is written one input file at a time; re-running the same command resumes
    a killed run (finished files are kept, unfinished ones redone); another configuration is
    refused unless --overwrite.
    """
    if gpus is not None and replicas is not None:
        _fail("give --gpus or --replicas, not both")
    overrides = _overrides(
        locals(),
        inputs=tuple(inputs),
        shard_bytes=_size(shard_size),
        unit_bytes=_size(unit_size),
        replicas=_gpus(gpus) if gpus is not None else replicas,
    )
    config = _load(config_file, overrides)
    _run(config, quiet, "prox refine")
    stdout.print(
        f"see what changed: prox report {config.output} (HTML with plots and diffs), "
        f"prox inspect {config.output} (terminal); re-tune thresholds without re-running "
        f"programmers: prox execute {config.output} -o NEW_OUTPUT --short-doc-words N ...",
        highlight=False,
    )


@app.command()
def execute(
    inputs: Inputs,
    output: Output,
    config_file: ConfigFile = None,
    stage: Annotated[
        str,
        typer.Option(
            "--stage",
            help="Which stored programs to run: doc, chunk, or both (whichever each record has).",
        ),
    ] = "both",
    mode: ModeOpt = None,
    min_kept_ratio: MinKept = None,
    max_removed_ratio: MaxRemoved = None,
    error_limit: ErrorLimit = None,
    short_doc_words: ShortWords = None,
    text_field: TextField = None,
    id_field: IdField = None,
    workers: Workers = None,
    limit: Limit = None,
    overwrite: Overwrite = None,
    quiet: Quiet = False,
) -> None:
    """Re-execute the programs stored in records (metadata.doc_program, metadata.chunk_program).

    Programs run on `raw_content` when a record has it (a refined record), else on the text
    field; the output keeps every record in order, dropped ones with empty text.
    """
    if stage not in ("doc", "chunk", "both"):
        _fail(f"--stage must be doc, chunk or both, got {stage!r}")
    overrides = _overrides(
        locals(),
        inputs=tuple(inputs),
        doc_programmer="stored",
        chunk_programmer="stored",
        stages="doc,chunk" if stage == "both" else stage,
    )
    _run(_load(config_file, overrides), quiet, "prox execute")


@app.command()
def prompts(
    inputs: Inputs,
    output: Output,
    tokenizer: Annotated[
        str,
        typer.Option(
            "--tokenizer", help="Tokenizer folder or Hugging Face Hub id of the refining model."
        ),
    ],
    stage: Annotated[str, typer.Option("--stage", help="doc or chunk.")] = "chunk",
    max_chunk_tokens: Annotated[
        int, typer.Option("--max-chunk-tokens", help="Token budget of a chunk.")
    ] = 1500,
    max_doc_tokens: Annotated[
        int, typer.Option("--max-doc-tokens", help="Token limit of a doc-level prompt.")
    ] = 2000,
    doc_truncation: Annotated[
        str,
        typer.Option(
            "--doc-truncation",
            help="'document' (cut the document, keep the template) or 'reference' (cut the whole prompt, as the reference).",
        ),
    ] = "document",
    text_field: Annotated[str, typer.Option("--text-field")] = "text",
    id_field: Annotated[str, typer.Option("--id-field")] = "id",
    limit: Limit = None,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Write one record per model call (id, chunk_index, exact prompt text, token count)."""
    from proxkit.pipeline.prompt_export import export_prompts
    from proxkit.tokenizer import TokenizerNotFound, load_tokenizer

    if stage not in ("doc", "chunk"):
        _fail(f"--stage must be doc or chunk, got {stage!r}")
    if doc_truncation not in ("document", "reference"):
        _fail("--doc-truncation must be 'document' or 'reference'")
    paths = RunPaths.for_output(output)
    if paths.existing() and not overwrite:
        _fail(f"{output} already exists; pass --overwrite to replace it")
    try:
        files = list_files(inputs)
        info = load_tokenizer(tokenizer)
    except (FileNotFoundError, TokenizerNotFound) as exc:
        _fail(str(exc))
    rejects = RejectLog(paths.rejects)
    try:
        count = export_prompts(
            files,
            paths.output,
            stage,
            info,
            Fields(text_field, id_field),
            max_chunk_tokens,
            max_doc_tokens,
            doc_truncation,  # type: ignore[arg-type]
            limit,
            rejects.add,
        )
    finally:
        rejects.close()
    stdout.print(
        f"{count:,} {stage}-level prompts -> {paths.output}; {rejects.count:,} rejected",
        highlight=False,
    )


@app.command()
def verify(
    output: Annotated[
        Path, typer.Argument(help="A folder or file written by prox refine or prox execute.")
    ],
) -> None:
    """Audit a run: re-read its inputs and every output file, re-execute the stored programs,
    and check that every input record ended in exactly one output record or reject."""
    from proxkit.pipeline.verify import verify as check

    try:
        report = check(output, progress=sys.stderr.isatty())
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    stdout.print(
        f"{report.complete_units}/{report.units} units complete; {report.input_records:,} input records, "
        f"{report.output_records:,} output records, {report.rejected:,} rejected; "
        f"checked in {report.seconds:.1f} s"
        + (" (a --limit run: checked as prefixes)" if report.limited else ""),
        highlight=False,
    )
    for problem in report.problems:
        _alert("problem", problem)
    if not report.ok:
        raise typer.Exit(1)
    stdout.print("ok: every input record is accounted for exactly once", highlight=False)


RunOutput = Annotated[
    str, typer.Argument(help="The output of prox refine or prox execute (a folder or a file).")
]


@app.command()
def report(
    output: RunOutput,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html", "-o", help="Report file. [default: OUT/report.html, or OUT.report.html]"
        ),
    ] = None,
    sample: Annotated[
        int, typer.Option("--sample", help="Documents sampled per outcome (and with errors).")
    ] = 50,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed.")] = 0,
    group_by: Annotated[
        str | None,
        typer.Option(
            "--group-by",
            help="Record field for the per-source plot; URLs give their domain. [default: url, else source]",
        ),
    ] = None,
) -> None:
    """Write one self-contained HTML report of a run: summary, plots, frequent removals and
    normalizations, and a sample of documents as diffs beside their programs."""
    from proxkit.report.collect import NotARun, collect
    from proxkit.report.html import render

    try:
        data = collect(output, sample, seed, group_by)
    except (NotARun, FileNotFoundError) as exc:
        _fail(str(exc))
    if html is None:
        path = Path(output)
        html = (
            path / "report.html"
            if path.is_dir()
            else path.with_name(f"{path.name.split('.')[0]}.report.html")
        )
    try:
        html.write_text(render(data), encoding="utf-8")
    except OSError as exc:
        _fail(
            f"cannot write the report to {html} ({exc.strerror or exc}); choose a file with --html"
        )
    stdout.print(
        f"{data.documents:,} documents, {len(data.sample)} in the sample -> {html} "
        f"({html.stat().st_size / 1e6:.1f} MB)",
        highlight=False,
    )


@app.command()
def inspect(
    output: RunOutput,
    ids: Annotated[
        list[str] | None, typer.Option("--id", help="Show this document (repeatable).")
    ] = None,
    dropped: Annotated[bool, typer.Option("--dropped", help="Only dropped documents.")] = False,
    refined: Annotated[bool, typer.Option("--refined", help="Only refined documents.")] = False,
    unchanged: Annotated[
        bool, typer.Option("--unchanged", help="Only unchanged documents.")
    ] = False,
    errors: Annotated[
        bool, typer.Option("--errors", help="Only documents whose programs had errors.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", help="Documents to show (0: all).")] = 20,
    max_lines: Annotated[
        int, typer.Option("--max-lines", help="Lines per document (0: all).")
    ] = 200,
    pager: Annotated[
        bool, typer.Option("--pager/--no-pager", help="Page the output in a terminal.")
    ] = True,
) -> None:
    """Show documents of a run as diffs in the terminal: removed lines struck through in red,
    normalized strings highlighted, programs beside them."""
    import contextlib

    from proxkit.report.collect import NotARun, read_records, run_config, run_fields
    from proxkit.report.diff import document_view
    from proxkit.report.terminal import render_document

    wanted = {
        name
        for name, on in (("dropped", dropped), ("refined", refined), ("unchanged", unchanged))
        if on
    }
    try:
        fields = run_fields(run_config(output))
    except NotARun as exc:
        _fail(str(exc))
    missing = set(ids or ())
    shown = 0
    console = Console()  # wraps long lines inside the panels (the summary console does not)
    paging = (
        console.pager(styles=True) if pager and console.is_terminal else contextlib.nullcontext()
    )
    try:
        with paging:
            for record in read_records(output, fields):
                view = document_view(record, fields.text, fields.id)
                if ids and view.id not in ids:
                    continue
                if (wanted and view.category not in wanted) or (errors and not view.has_errors):
                    continue
                missing.discard(view.id)
                console.print(render_document(view, max_lines or None))
                shown += 1
                if limit and shown >= limit:
                    break
    except (NotARun, FileNotFoundError) as exc:
        _fail(str(exc))
    if missing:
        _fail(f"no document with id {', '.join(sorted(missing))} in {output}", code=1)
    if not shown:
        stderr.print("no document matches", highlight=False)


def _load_flat(cls: type, config_file: Path | None, arguments: dict[str, Any], **fixed: Any):
    """A command's config dataclass from --config YAML and the flags named like its fields."""
    from proxkit.config import load_flat

    names = {f.name for f in fields(cls)}
    overrides = {**{k: v for k, v in arguments.items() if k in names}, **fixed}
    try:
        return load_flat(cls, config_file, overrides)
    except (ConfigError, TypeError, OSError) as exc:
        _fail(f"configuration: {exc}")


def _print_mapping(title: str, rows: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in rows.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        table.add_row(name, str(value))
    stdout.print(table)


Stages = Annotated[str | None, typer.Option("--stages", help="doc, chunk or doc,chunk.")]
Overwrite_ = Annotated[bool | None, typer.Option("--overwrite", help="Replace the output.")]


@app.command()
def annotate(
    inputs: Inputs,
    output: Annotated[str, typer.Option("--output", "-o", help="Output folder.")],
    teacher_model: Annotated[
        str | None, typer.Option("--teacher-model", help="The teacher's model name on the server.")
    ] = None,
    api_base: Annotated[
        str | None,
        typer.Option("--api-base", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1."),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            help="The student model's tokenizer (folder or Hub id): chunks are cut as it will see them.",
        ),
    ] = None,
    sample_size: Annotated[
        int | None, typer.Option("--sample-size", help="Documents to annotate. [default: 1000]")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampling seed. [default: 0]")] = None,
    stages: Stages = None,
    doc_rubric: Annotated[
        str | None, typer.Option("--doc-rubric", help="Rubric name or YAML file. [default: doc-v1]")
    ] = None,
    chunk_rubric: Annotated[
        str | None,
        typer.Option("--chunk-rubric", help="Rubric name or YAML file. [default: chunk-v1]"),
    ] = None,
    min_educational_value: Annotated[
        int | None,
        typer.Option("--min-educational-value", help="Keep at or above this score. [default: 2]"),
    ] = None,
    min_format_readability: Annotated[
        int | None,
        typer.Option("--min-format-readability", help="Keep at or above this score. [default: 2]"),
    ] = None,
    max_concurrency: Annotated[
        int | None, typer.Option("--max-concurrency", help="Requests in flight. [default: 16]")
    ] = None,
    config_file: ConfigFile = None,
    overwrite: Overwrite_ = None,
    quiet: Quiet = False,
) -> None:
    """Have a teacher LLM label a seeded, length-stratified sample: doc-level scores mapped to
    keep/drop, and a program per chunk. Re-running the same command resumes."""
    from proxkit.synth.annotate import AnnotateConfig, AnnotationExists, run_annotate
    from proxkit.synth.rubric import RubricError
    from proxkit.tokenizer import TokenizerNotFound

    config = _load_flat(AnnotateConfig, config_file, locals(), inputs=tuple(inputs))
    try:
        summary = run_annotate(config, progress=not quiet)
    except (AnnotationExists, RubricError, TokenizerNotFound, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    rows = {
        "documents read": summary["documents_read"],
        "rejected records": summary["rejected_records"],
        "annotated now / before": f"{summary['annotated_now']} / {summary['already_done']}",
        **{f"doc {k}": v for k, v in summary["doc"].items()},
        **{f"chunk {k}": v for k, v in summary["chunk"].items()},
    }
    _print_mapping("prox annotate", rows)
    stdout.print(
        f"annotations: {Path(output) / 'annotations.jsonl'}; next: prox sft-data", highlight=False
    )


@app.command("sft-data")
def sft_data(
    annotations: Annotated[str, typer.Argument(help="A prox annotate folder or annotations file.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output folder.")],
    tokenizer: Annotated[
        str | None, typer.Option("--tokenizer", help="The student model's tokenizer.")
    ] = None,
    validation_fraction: Annotated[
        float | None,
        typer.Option("--validation-fraction", help="Share of documents held out. [default: 0.1]"),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Split seed. [default: 0]")] = None,
    stages: Stages = None,
    config_file: ConfigFile = None,
    overwrite: Overwrite_ = None,
) -> None:
    """Turn annotations into train/validation examples in the refining models' chat format."""
    from proxkit.synth.sft import SFTConfig, write_sft_data
    from proxkit.tokenizer import TokenizerNotFound

    config = _load_flat(SFTConfig, config_file, locals())
    try:
        manifest = write_sft_data(config)
    except (FileNotFoundError, FileExistsError, TokenizerNotFound, ValueError) as exc:
        _fail(str(exc))
    rows = {
        **{f"documents {k}": v for k, v in manifest["documents"].items()},
        **{f"examples {k}": v for k, v in manifest["examples"].items()},
        **{f"left out: {k}": v for k, v in manifest["left_out"].items()},
        "unreadable annotation lines": manifest["unreadable_annotation_lines"],
    }
    _print_mapping("prox sft-data", rows)
    stdout.print(
        f"examples: {output}/train.jsonl, validation.jsonl; held out: heldout.jsonl",
        highlight=False,
    )


@app.command()
def train(
    data: Annotated[str, typer.Argument(help="A prox sft-data folder.")],
    base_model: Annotated[
        str | None, typer.Option("--base-model", help="Hub id or checkpoint folder to fine-tune.")
    ] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Checkpoint folder.")] = None,
    lora_rank: Annotated[
        int | None, typer.Option("--lora-rank", help="LoRA rank; 0: full fine-tuning. [default: 0]")
    ] = None,
    learning_rate: Annotated[
        float | None,
        typer.Option("--learning-rate", help="[default: 1e-5 full, 2e-4 LoRA]"),
    ] = None,
    epochs: Annotated[float | None, typer.Option("--epochs", help="[default: 3]")] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop after this many steps.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Per device. [default: 16]")
    ] = None,
    max_length: Annotated[
        int | None, typer.Option("--max-length", help="Longest example in tokens. [default: 2048]")
    ] = None,
    config_file: ConfigFile = None,
    overwrite: Overwrite_ = None,
    quiet: Quiet = False,
) -> None:
    """Fine-tune a causal LM on sft-data examples (loss on the answers only); the result is a
    checkpoint folder for --doc-programmer / --chunk-programmer."""
    try:
        from proxkit.train.trainer import TokenizerMismatch, TrainConfig
        from proxkit.train.trainer import train as run_training
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        _fail(f"prox train needs the [train] extra: pip install 'proxkit[train]' ({exc})")
    from proxkit.tokenizer import TokenizerNotFound

    config = _load_flat(TrainConfig, config_file, locals())
    try:
        report = run_training(config, progress=not quiet)
    except (
        FileNotFoundError,
        FileExistsError,
        TokenizerMismatch,
        TokenizerNotFound,
        ConfigError,
    ) as exc:
        _fail(str(exc))
    rows = {k: v for k, v in report.items() if k != "config"}
    _print_mapping("prox train", rows)
    stdout.print(
        f"checkpoint: {config.output}; use it with --doc-programmer / --chunk-programmer",
        highlight=False,
    )


@app.command()
def evaluate(
    annotations: Annotated[
        str, typer.Argument(help="Held-out annotations (sft-data's heldout.jsonl).")
    ],
    programmer: Annotated[
        str | None,
        typer.Option("--programmer", help="For both stages: rules, a model folder, a Hub id."),
    ] = None,
    doc_programmer: Annotated[str | None, typer.Option("--doc-programmer")] = None,
    chunk_programmer: Annotated[str | None, typer.Option("--chunk-programmer")] = None,
    stages: Stages = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="transformers, vllm or openai.")
    ] = None,
    device: Annotated[str | None, typer.Option("--device")] = None,
    tokenizer: Annotated[str | None, typer.Option("--tokenizer")] = None,
    api_base: Annotated[str | None, typer.Option("--api-base")] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON here.")
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option("--config", help="A prox refine YAML config: programmer settings."),
    ] = None,
) -> None:
    """Score a programmer against held-out teacher annotations: doc-level accuracy, drop
    precision/recall/F1 and keep-score calibration; chunk-level line-removal P/R/F1, normalize
    matches, malformed programs and words kept."""
    import json

    from proxkit.evaluate.run import evaluate as run_evaluation
    from proxkit.tokenizer import TokenizerNotFound

    overrides = _overrides(locals())
    if programmer:
        overrides = {
            "doc_programmer": programmer,
            "chunk_programmer": programmer,
            **{k: v for k, v in overrides.items() if v is not None},
        }
    config = _load(config_file, overrides)
    try:
        report = run_evaluation(annotations, config)
    except (FileNotFoundError, UnknownProgrammer, ModelNotFound, TokenizerNotFound) as exc:
        _fail(str(exc))
    for problem in report["unreadable_lines"]:
        _alert("skipped", problem)
    for stage in ("doc", "chunk"):
        if stage in report:
            _print_mapping(f"prox evaluate: {stage} level", dict(_flatten(report[stage])))
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        stdout.print(f"report: {json_path}", highlight=False)


def _flatten(data: dict[str, Any], prefix: str = ""):
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
