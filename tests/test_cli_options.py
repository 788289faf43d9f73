"""Options declared once (proxkit/options.py): every config field has its flag, every flag its
field, the defaults shown are the fields', help is whole and in panels, a flag beats the YAML
file, and bad keys or flags are named with the closest valid name."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from proxkit import options
from proxkit.cli import app
from proxkit.config import (
    ConfigError,
    InspectConfig,
    RefineConfig,
    ReportConfig,
    load_flat,
)
from proxkit.program import Thresholds
from proxkit.synth.annotate import AnnotateConfig
from proxkit.synth.sft import SFTConfig
from proxkit.train.trainer import TrainConfig

runner = CliRunner()
CLICK = typer.main.get_command(app)

# command -> (its config, whether it offers every field, its own parameters beside the fields)
COMMANDS: dict[str, tuple[type, bool, set[str]]] = {
    "refine": (RefineConfig, True, {"config_file", "quiet"}),
    "execute": (RefineConfig, False, {"config_file", "quiet", "stage"}),
    "prompts": (RefineConfig, False, {"tokenizer", "stage"}),
    "evaluate": (RefineConfig, False, {"annotations", "programmer", "json_path", "config_file"}),
    "annotate": (AnnotateConfig, True, {"config_file", "quiet"}),
    "sft-data": (SFTConfig, True, {"config_file"}),
    "train": (TrainConfig, True, {"config_file", "quiet"}),
    "report": (ReportConfig, True, set()),
    "inspect": (InspectConfig, True, set()),
}
# What a command line, and a valid configuration, of each class needs.
REQUIRED: dict[type, dict[str, Any]] = {
    RefineConfig: {"inputs": ("in.jsonl",), "output": "out"},
    AnnotateConfig: {"inputs": ("in.jsonl",), "output": "out", "teacher_model": "t"},
    SFTConfig: {"annotations": "a.jsonl", "output": "out"},
    TrainConfig: {"data": "d", "base_model": "m", "output": "out"},
    ReportConfig: {"output": "run"},
    InspectConfig: {"output": "run"},
}


def routes(cls: type) -> dict[str, options.Declared]:
    """Parameter name -> the field it sets."""
    return {
        options.parameter_name(item, choice): item
        for item in options.declared(cls)
        for choice in options.choices(item)
    }


def help_text(command: str, columns: int = 200) -> str:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output


def flat(text: str) -> str:
    """Help output as one line of words: panel borders gone, wrapped lines joined."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def value_of(config: Any, name: str) -> Any:
    if hasattr(config, name):
        return getattr(config, name)
    return getattr(config.thresholds, name)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_field_has_its_flag_and_every_flag_its_field(command):
    cls, everything, own = COMMANDS[command]
    parameters = {p.name for p in CLICK.commands[command].params} - {"help"}
    fields = routes(cls)
    assert parameters - own <= set(fields), "a flag without a field"
    if everything:
        assert set(fields) <= parameters, "a field without a flag"


@pytest.mark.parametrize("command", COMMANDS)
def test_shown_defaults_are_the_fields_defaults(command):
    cls = COMMANDS[command][0]
    shown = flat(help_text(command))
    parameters = {p.name for p in CLICK.commands[command].params}
    typed = {}
    for name, item in routes(cls).items():
        text = options.shown(item, item.default)
        if name != item.name or name not in parameters or text is None or name in REQUIRED[cls]:
            continue
        if isinstance(item.default, bool):
            on, _, off = options.flag_names(item, item.option)[0].partition("/")
            if not off:
                continue  # a lone flag (--overwrite) shows no default: it is off unless given
            assert f"[default: {(on if item.default else off)[2:]}]" in shown, name
        else:
            assert f"[default: {text}]" in shown, name
        typed[name] = item.default
    assert typed
    # Typing every shown default gives the fields' defaults.
    assert _probe(cls, {**typed, **REQUIRED[cls]}) == repr(load_flat(cls, None, REQUIRED[cls]))


@pytest.mark.parametrize("command", COMMANDS)
def test_help_texts_are_shown_whole_not_eaten_as_markup(command):
    shown = flat(help_text(command))
    for parameter in CLICK.commands[command].params:
        if parameter.help:
            assert flat(parameter.help.replace("\\[", "[")) in shown, parameter.name
    assert "extra [ray]" in flat(help_text("refine"))


def test_refine_help_starts_with_what_most_runs_need_and_each_panel_fits_a_screen():
    text = help_text("refine", columns=100)
    titles = re.findall(r"╭─ (.+?) ─", text)
    assert titles == [
        "Arguments",
        "Options",
        options.INPUT_OUTPUT,
        options.THRESHOLDS,
        options.PROGRAMMERS,
        options.PROMPTS,
        options.BACKENDS,
        options.BATCHING,
        options.SERVERS,
        options.SCALING,
    ]
    first = text[text.index("╭─ Options") : text.index(f"╭─ {options.INPUT_OUTPUT}")]
    flags = re.findall(r"│ [ *]*(--[a-z-]+)", first)
    assert flags[:4] == ["--output", "--doc-programmer", "--chunk-programmer", "--stages"]
    assert len(flags) <= 8
    panels = re.findall(r"╭─.*?╰", text, flags=re.S)
    assert max(panel.count("\n") for panel in panels) <= 30


def _non_default(item: options.Declared) -> Any:
    """A valid value other than the field's default, by type."""
    special = {
        "mode": "reference",
        "stages": ("doc",),
        "replicas": ("cpu", "cpu"),
        "backend": "openai",
        "engine": "ray",
        "doc_scoring": "generate",
        "doc_truncation": "reference",
        "api_mode": "chat",
        "inputs": ("a.jsonl", "b.jsonl"),
        "ids": ("x", "y"),
        "chunk_score_range": (0.25, 0.75),
        "teacher_mode": "clean",
    }
    if item.name in special:
        return special[item.name]
    default = item.default
    if isinstance(default, bool):
        return not default
    if isinstance(default, (int, float)):
        return default + (1 if isinstance(default, int) else 0.25)
    if default is None:
        kind = str(item.kind)
        return (
            True if "bool" in kind else 0.25 if "float" in kind else 5 if "int" in kind else "given"
        )
    return f"given-{default}"


def _arguments(cls: type, values: dict[str, Any]) -> list[str]:
    """The command line that sets `values`, written as a user would."""
    words = []
    for item in options.declared(cls):
        if item.name not in values:
            continue
        choice, value = item.option, values[item.name]
        if item.option.argument:
            words[:0] = list(value) if isinstance(value, tuple) else [value]
        elif isinstance(value, bool):
            on, _, off = options.flag_names(item, choice)[0].partition("/")
            words += [on] if value else [off] if off else []  # a lone flag is off unless given
        elif choice.multiple:
            words += [w for v in value for w in (options.flag(item, choice), v)]
        else:
            words += [options.flag(item, choice), str(options.shown(item, value))]
    return words


def _probe(cls: type, values: dict[str, Any]) -> str:
    """The configuration a command built from `cls` gets from the command line for `values`."""
    built = typer.Typer()

    @built.command()
    @options.command(cls)
    def show(**flags: Any) -> None:
        print(repr(load_flat(cls, None, flags)))

    result = runner.invoke(built, _arguments(cls, values), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output.strip()


@pytest.mark.parametrize("cls", list(REQUIRED))
def test_every_option_reaches_the_configuration_as_typed(cls):
    values = {item.name: _non_default(item) for item in options.declared(cls)}
    if cls is RefineConfig:
        values.update(rank=1, world_size=2)  # a valid pair
    expected = load_flat(cls, None, values)
    assert all(value_of(expected, i.name) != i.default for i in options.declared(cls))
    assert _probe(cls, values) == repr(expected)


def test_a_flag_beats_the_yaml_file_and_thresholds_come_flat_or_nested(tmp_path):
    path = tmp_path / "refine.yaml"
    path.write_text(
        "batch_size: 7\nshard_size: 1MB\ngpus: 2\ncompile: true\n"
        "thresholds: {min_kept_ratio: 0.2}\nshort_doc_words: 30\n"
    )
    config = load_flat(RefineConfig, path, {"batch_size": 9, "error_limit": 4, "limit": None})
    assert (config.batch_size, config.shard_bytes, config.replicas, config.compile_model) == (
        9,
        1_000_000,
        ("cuda:0", "cuda:1"),
        True,
    )
    assert config.thresholds == Thresholds(min_kept_ratio=0.2, short_doc_words=30, error_limit=4)
    assert config.unit_bytes == RefineConfig().unit_bytes  # neither given: the field's default


def test_refine_takes_flags_over_its_config_file(tmp_path, monkeypatch):
    import proxkit.cli
    from proxkit.pipeline.stats import RunStats

    captured = {}
    monkeypatch.setattr(
        proxkit.cli, "run", lambda config, progress: captured.setdefault("c", config) and RunStats()
    )
    path = tmp_path / "refine.yaml"
    path.write_text("batch_size: 7\nworkers: 3\nmax_removed_ratio: 0.5\n")
    args = ["refine", "in.jsonl", "-o", str(tmp_path / "o"), "--config", str(path)]
    result = runner.invoke(app, [*args, "--batch-size", "9", "--max-removed-ratio", "0.8"])
    assert result.exit_code == 0, result.output
    config = captured["c"]
    assert (config.batch_size, config.workers, config.thresholds.max_removed_ratio) == (9, 3, 0.8)


def test_unknown_keys_and_misspelled_flags_name_the_closest_valid_name(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("max_remove_ratio: 0.5\nthresholds: {eror_limit: 3}\n")
    with pytest.raises(ConfigError, match=r"eror_limit \(did you mean error_limit\?\)"):
        load_flat(RefineConfig, path, {})
    path.write_text("max_remove_ratio: 0.5\nbach_size: 3\n")
    with pytest.raises(ConfigError) as error:
        load_flat(RefineConfig, path, {})
    assert str(error.value) == (
        "unknown configuration keys: bach_size (did you mean batch_size?), "
        "max_remove_ratio (did you mean max_removed_ratio?)"
    )
    result = runner.invoke(app, ["refine", "x.jsonl", "-o", "o", "--max-remove-ratio", "1"])
    assert result.exit_code == 2
    assert "--max-remove-ratio" in result.output and "--max-removed-ratio" in result.output


def test_a_value_given_two_ways_is_refused(tmp_path):
    result = runner.invoke(
        app, ["refine", "x.jsonl", "-o", "o", "--gpus", "2", "--replicas", "cpu"]
    )
    assert result.exit_code == 2 and "not both" in result.output
    path = tmp_path / "both.yaml"
    path.write_text("gpus: 2\nreplicas: [cpu]\n")
    with pytest.raises(ConfigError, match="give gpus or replicas, not both"):
        load_flat(RefineConfig, path, {})
    bad = runner.invoke(app, ["refine", "x.jsonl", "-o", "o", "--shard-size", "5XB"])
    assert bad.exit_code == 2 and "not a size: '5XB'" in flat(bad.output)


def test_a_field_without_an_option_is_an_error_naming_it():
    @dataclasses.dataclass(frozen=True)
    class Bare:
        named: int = options.option(1, "Has one.")
        forgotten: int = 2

    with pytest.raises(TypeError, match=r"Bare\.forgotten has no option"):
        options.declared(Bare)

    @dataclasses.dataclass(frozen=True)
    class Nested:
        thresholds: Thresholds = options.option(factory=Thresholds, nested={})

    with pytest.raises(TypeError, match=r"Nested\.thresholds\.min_kept_ratio has no option"):
        options.declared(Nested)


@given(st.integers(min_value=0, max_value=2**50))
def test_sizes_are_shown_as_they_parse(value):
    assert options.size(options.size_text(value)) == value


def test_sizes_and_gpus_parse_as_the_flags_always_did():
    assert [options.size(t) for t in ("512MB", "2GiB", "100000", "1.5k", "0")] == [
        512_000_000,
        2 * 1024**3,
        100_000,
        1500,
        0,
    ]
    assert options.size_text(512 * 1024**2) == "512MiB" and options.size_text(2_000_000) == "2MB"
    assert options.gpu_devices("3") == ("cuda:0", "cuda:1", "cuda:2")
    assert options.gpu_devices("0,2") == ("cuda:0", "cuda:2")
    for bad in ("x", "1,a", ""):
        with pytest.raises(ValueError):
            options.gpu_devices(bad)
