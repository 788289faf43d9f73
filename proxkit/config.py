"""The one typed configuration of a run, loadable from YAML and from CLI flags alike.

`RefineConfig.load(yaml_path, overrides)` reads the YAML file (same names as the fields, the
thresholds flat or under `thresholds:`) and applies the flags that were given on top of it.
Unknown keys are an error, so a typo in a config file cannot be silently ignored.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from proxkit.chunking import DEFAULT_CHUNK_TOKENS
from proxkit.program.executor import MODES, Mode, Thresholds
from proxkit.programmers.base import STAGES
from proxkit.prompts import DEFAULT_DOC_TOKENS

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key that is not valid."""


@dataclass(frozen=True)
class RefineConfig:
    inputs: tuple[str, ...] = ()
    output: str = ""
    doc_programmer: str = "gair-prox/web-doc-refining-lm"  # the released ProX refining models
    chunk_programmer: str = "gair-prox/web-chunk-refining-lm"
    stages: tuple[str, ...] = STAGES
    mode: Mode = "strict"
    thresholds: Thresholds = field(default_factory=Thresholds)
    text_field: str = "text"
    id_field: str = "id"
    output_format: str = "jsonl.gz"
    shard_bytes: int = 512 * 1024 * 1024
    unit_bytes: int = 256 * 1024 * 1024  # larger files are split into byte / row-group ranges
    batch_size: int = 256
    workers: int = 0  # 0: one per CPU core
    limit: int | None = None
    overwrite: bool = False
    engine: str = "local"  # local (processes on this machine) or ray (a Ray cluster)
    ray_address: str | None = None  # an existing cluster; None starts a local one
    ray_actors: int = 1  # model programmers: actors, each holding the model once
    ray_gpus_per_actor: float = 0.0
    rank: int = 0  # this process's share of the work units (for Slurm arrays and the like)
    world_size: int = 1
    tokenizer: str | None = None  # count model tokens before/after in the summary
    max_chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    max_doc_tokens: int = DEFAULT_DOC_TOKENS
    doc_truncation: str = "document"
    # model programmers (a Hub id or folder as --doc-programmer / --chunk-programmer)
    backend: str = "transformers"  # transformers, vllm or openai
    doc_scoring: str = "forward"  # forward: one pass, keep score; generate: greedy text
    constrained: bool = True  # grammar-constrained generation (transformers backend)
    doc_keep_threshold: float = 0.5
    doc_keep_fraction: float | None = None
    doc_max_new_tokens: int = 16
    chunk_max_new_tokens: int = 256
    device: str = "auto"
    dtype: str = "auto"
    batch_tokens: int = 16_384
    max_batch_size: int = 64  # sequences per static batch / per continuous-batching step
    generation: str = "auto"  # continuous, static, or auto (continuous on GPUs, static on CPU)
    kv_cache_tokens: int = 0  # continuous batching's KV cache; 0: sized from free GPU memory
    replicas: tuple[str, ...] = ()  # one model process per device (--gpus 0,1: cuda:0, cuda:1)
    threads: int = 0  # torch CPU threads per model; 0: the cores, shared among CPU replicas
    compile_model: bool = False
    tensor_parallel: int = 1
    api_base: str | None = None  # openai backend: e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"
    api_mode: str = "completions"  # or chat
    max_concurrency: int = 32
    request_timeout: float = 120.0
    max_retries: int = 4

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise ConfigError(f"stages must be a non-empty subset of {STAGES}, got {self.stages!r}")
        if self.doc_truncation not in ("document", "reference"):
            raise ConfigError("doc_truncation must be 'document' or 'reference'")
        if self.backend not in ("transformers", "vllm", "openai"):
            raise ConfigError(f"backend must be transformers, vllm or openai, got {self.backend!r}")
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
        if self.generation not in ("auto", "continuous", "static"):
            raise ConfigError(
                f"generation must be auto, continuous or static, got {self.generation!r}"
            )
        bad = [d for d in self.replicas if not re.fullmatch(r"cpu|cuda(:\d+)?", d)]
        if bad:
            raise ConfigError(f"replicas are devices such as cuda:0 or cpu, got {bad[0]!r}")
        if self.max_batch_size < 1 or self.kv_cache_tokens < 0 or self.threads < 0:
            raise ConfigError("max_batch_size must be >= 1, kv_cache_tokens >= 0, threads >= 0")

    @classmethod
    def load(
        cls, path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
    ) -> RefineConfig:
        return cls.from_dict(yaml_with_overrides(path, overrides))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RefineConfig:
        values = {k.replace("-", "_"): v for k, v in values.items()}
        threshold_names = {f.name for f in fields(Thresholds)}
        thresholds = dict(values.pop("thresholds", None) or {})
        for name in threshold_names & values.keys():
            thresholds[name] = values.pop(name)
        unknown = set(values) - {f.name for f in fields(cls)} | set(thresholds) - threshold_names
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        return cls(thresholds=Thresholds(**thresholds), **_with_tuples(cls, values))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["inputs"] = list(self.inputs)
        data["stages"] = list(self.stages)
        data["replicas"] = list(self.replicas)
        return data


def yaml_with_overrides(
    path: str | Path | None, overrides: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The YAML file's values (if any), with the flags that were given on top."""
    values: dict[str, Any] = {}
    if path is not None:
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of option names to values")
        values.update(loaded)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return {k.replace("-", "_"): v for k, v in values.items()}


def load_flat(cls: type[T], path: str | Path | None, overrides: Mapping[str, Any] | None) -> T:
    """A flat config dataclass (annotate, sft-data, train, evaluate) from YAML and flags;
    unknown keys are an error, lists become tuples."""
    values = yaml_with_overrides(path, overrides)
    unknown = set(values) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
    if unknown:
        raise ConfigError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
    return cls(**_with_tuples(cls, values))


def _with_tuples(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Tuple fields from YAML lists or comma-separated flag values ("doc,chunk")."""
    types = {f.name: str(f.type) for f in fields(cls)}
    converted = dict(values)
    for name, value in values.items():
        if types.get(name, "").startswith("tuple") and value is not None:
            converted[name] = (
                tuple(v for v in value.split(",") if v) if isinstance(value, str) else tuple(value)
            )
    return converted


def to_plain(config: Any) -> dict[str, Any]:
    """A config dataclass as YAML-ready data (tuples as lists)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }
