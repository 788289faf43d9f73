"""Programmers write ProX programs: one module per backend behind `base.Programmer`.

`make_programmer(spec, config)` turns a CLI/config value into a programmer:
`rules` / `rules:NAME,...` (classic heuristics, no model), `datatrove` / `datatrove:NAME,...`
(datatrove's own filters, extra `[datatrove]`), `stored` (programs already in the records),
or a model: a Hub id or folder (transformers or vLLM backend) or a model name served by an
OpenAI-compatible server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxkit.programmers.base import (
    STAGES,
    BackendCannot,
    BackendGone,
    Programmer,
    ProgrammerError,
    Stage,
    Written,
)

if TYPE_CHECKING:
    from proxkit.config import RefineConfig


class UnknownProgrammer(ProgrammerError):
    """A programmer spec that names no backend."""


def make_programmer(spec: str, config: RefineConfig | None = None) -> Programmer:
    if spec == "rules" or spec.startswith("rules:"):
        from proxkit.programmers.rules import RulesProgrammer

        try:
            return RulesProgrammer.from_spec(spec)
        except ValueError as exc:
            raise UnknownProgrammer(str(exc)) from exc
    if spec == "datatrove" or spec.startswith("datatrove:"):
        try:
            from proxkit.programmers.datatrove import DatatroveProgrammer
        except ImportError as exc:
            raise UnknownProgrammer(str(exc)) from None
        try:
            return DatatroveProgrammer.from_spec(spec)
        except ValueError as exc:
            raise UnknownProgrammer(str(exc)) from exc
    if spec == "stored":
        from proxkit.programmers.stored import StoredProgrammer

        return StoredProgrammer()
    return make_model_programmer(spec, config)


def needs_model(spec: str) -> bool:
    """Whether a programmer spec names a language model (rather than rules, datatrove's
    filters or stored programs, which are plain CPU work)."""
    return spec != "stored" and spec.partition(":")[0] not in ("rules", "datatrove")


def make_programmers(config: RefineConfig) -> dict[Stage, Programmer]:
    """The programmer of each configured stage; stages naming the same spec share one (a
    model used for both stages is loaded once)."""
    made: dict[str, Programmer] = {}
    for stage in config.stages:
        spec = getattr(config, f"{stage}_programmer")
        if spec not in made:
            made[spec] = make_programmer(spec, config)
    return {stage: made[getattr(config, f"{stage}_programmer")] for stage in config.stages}


def make_model_programmer(spec: str, config: RefineConfig | None = None) -> Programmer:
    """A model (Hub id, local folder, or served model name) behind the configured backend."""
    from proxkit.config import RefineConfig
    from proxkit.programmers.lm import DocScoring, LMProgrammer

    config = config or RefineConfig()
    backend_name = pick_backend(config.backend, config.device, config.api_base)
    if backend_name != "openai" and not _looks_like_model(spec):
        raise UnknownProgrammer(
            f"unknown programmer {spec!r}: use 'rules' (heuristics, no model), 'stored' "
            "(programs already in the records), or a model folder / Hub id (owner/name)"
        )
    if backend_name == "openai":
        from proxkit.programmers.openai import OpenAIBackend, OpenAISettings

        backend = OpenAIBackend(
            spec,
            OpenAISettings.from_config(config, config.api_mode),
            tokenizer=config.tokenizer,
            grammars=config.constrained,
            token_logprobs=config.doc_scoring == "forward",
        )
    elif backend_name == "vllm":
        from proxkit.programmers.vllm import VLLMBackend, VLLMSettings

        backend = VLLMBackend(
            spec,
            VLLMSettings(
                device=config.device,
                dtype=config.dtype,
                tensor_parallel=config.tensor_parallel,
                threads=config.threads,
                kv_cache_gib=config.kv_cache_gib,
                compile=config.compile_model,
            ),
        )
    else:
        from proxkit.programmers.hf import HFSettings, TransformersBackend

        backend = TransformersBackend(
            spec,
            HFSettings(
                device=config.device,
                dtype=config.dtype,
                batch_tokens=config.batch_tokens,
                max_batch_size=config.max_batch_size,
                threads=config.threads,
                compile=bool(config.compile_model),
            ),
        )
    scoring = DocScoring(config.doc_scoring, config.doc_keep_threshold, config.doc_keep_fraction)
    return LMProgrammer(
        backend,
        scoring,
        max_chunk_tokens=config.max_chunk_tokens,
        max_doc_tokens=config.max_doc_tokens,
        doc_truncation=config.doc_truncation,  # type: ignore[arg-type]
        doc_max_new_tokens=config.doc_max_new_tokens,
        chunk_max_new_tokens=config.chunk_max_new_tokens,
        constrained=config.constrained,
        deletion_only=config.deletion_only,
    )


def pick_backend(backend: str, device: str = "auto", api_base: str | None = None) -> str:
    """`auto`: a server when `--api-base` names one; else vLLM where it is installed for the
    device (its CUDA build on a GPU, its CPU build on a CPU); else transformers. Measured
    (bench/bench_engines.py, README): vLLM's work is about 3x proxkit's decode loop's on 2
    CPU cores, and its continuous batching and paged attention win on GPUs; its start-up
    (about 20 s once its compile cache is warm) is paid back after about 110 documents."""
    if backend != "auto":
        return backend
    if api_base:
        return "openai"
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("vllm") is None:
        return "transformers"
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return "vllm" if device in ("auto", "cpu") else "transformers"
    if device != "cpu" and current_platform.is_cuda():
        import torch

        if torch.cuda.is_available():
            return "vllm"
    return "transformers"


def _looks_like_model(spec: str) -> bool:
    from pathlib import Path

    return Path(spec).expanduser().is_dir() or (
        spec.count("/") == 1 and not spec.startswith((".", "/"))
    )


__all__ = [
    "STAGES",
    "BackendCannot",
    "BackendGone",
    "Programmer",
    "ProgrammerError",
    "Stage",
    "UnknownProgrammer",
    "Written",
    "make_model_programmer",
    "make_programmer",
    "needs_model",
    "pick_backend",
]
