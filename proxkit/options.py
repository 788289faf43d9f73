"""Options declared once: a config field carries its flag, help text and help panel, and the
command line, the YAML keys and the defaults shown in `--help` all come from it.

Adding an option is one change: a field with `option(...)` in the command's config dataclass
(`RefineConfig` in config.py, `AnnotateConfig`, `SFTConfig`, `TrainConfig`):

    batch_size: int = option(256, "Documents per batch.", INPUT_OUTPUT)

gives `--batch-size` (an int, "[default: 256]" in the help, in the "Input and output" panel)
and the YAML key `batch_size`. The commands of cli.py are built with `@command(cls, ...)`:
`refine`, `annotate`, `sft-data`, `train`, `report` and `inspect` take every field of their
class; `execute`, `prompts` and `evaluate` take the fields and the panels they name, so a new
field in one of those panels reaches them too. A value not given as a flag comes from the YAML
file, else from the field: the flag wins.

Details, where needed: `flag="--compile/--no-compile"` when the flag is not `--field-name` (a
bool flag is `--name` alone unless given as `--on/--off`); `short="-o"`; `parse`/`show` when
the flag's text is not the value (`--shard-size 512MB` <-> bytes), also accepted as a YAML key
named like the flag (`shard_size: 512MB`); `also=Option(...)` for a second flag setting the same
field (`--gpus 4` for `replicas`); `argument=True` for a positional argument; `multiple=True`
for a flag given once per value (`--id a --id b`); `required=True`.
A field whose type is a dataclass (`thresholds`) gives each of its fields a flat flag, declared
with `option(..., nested={name: Option(...)})`. A field without an option is an error when
the commands are built; tests/test_cli_options.py checks that every field has its flag, every
flag its field, and that each shown default is the field's.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# Help panels in the order `--help` shows them. None is the first panel ("Options"): the few
# options most runs need.
INPUT_OUTPUT = "Input and output"
THRESHOLDS = "Program parsing and thresholds"
PROGRAMMERS = "Model programmers"
PROMPTS = "Model prompts"
BACKENDS = "Model backends"
BATCHING = "Batching (transformers backend)"
SERVERS = "OpenAI-compatible servers"
SCALING = "Scaling out"
SAMPLE = "Sample"
LABELS = "Labels and rubrics"
TRAINING = "Training"
MODELS = (PROGRAMMERS, PROMPTS, BACKENDS, BATCHING, SERVERS)  # how model programmers run
PANELS = (
    None,
    INPUT_OUTPUT,
    THRESHOLDS,
    PROGRAMMERS,
    PROMPTS,
    BACKENDS,
    BATCHING,
    SERVERS,
    SCALING,
    SAMPLE,
    LABELS,
    TRAINING,
)


@dataclass(frozen=True)
class Option:
    """How one config field is set from the command line (see the module docstring)."""

    help: str
    panel: str | None = None
    flag: str | None = None
    short: str | None = None
    parse: Callable[[str], Any] | None = None
    show: Callable[[Any], str] | None = None
    argument: bool = False
    multiple: bool = False
    required: bool = False
    also: Option | None = None
    nested: Mapping[str, Option] | None = None


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    panel: str | None = None,
    *,
    factory: Callable[[], Any] | Any = dataclasses.MISSING,
    **details: Any,
) -> Any:
    """A dataclass field with its option."""
    return dataclasses.field(
        default=default,
        default_factory=factory,
        metadata={"option": Option(help, panel, **details)},
    )


@dataclass(frozen=True)
class Declared:
    """A settable field as the command line sees it; nested fields are flat (`min_kept_ratio`)."""

    name: str
    option: Option
    default: Any
    kind: Any  # the field's type


def declared(cls: type) -> list[Declared]:
    """Every field of a config dataclass with its option, nested dataclass fields flattened."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        declared_option = f.metadata.get("option")
        if declared_option is None:
            raise TypeError(f"{cls.__name__}.{f.name} has no option(...): see proxkit/options.py")
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        if not dataclasses.is_dataclass(hints[f.name]):
            found.append(Declared(f.name, declared_option, default, hints[f.name]))
            continue
        inner = typing.get_type_hints(hints[f.name])
        nested = declared_option.nested or {}
        for g in dataclasses.fields(hints[f.name]):
            if g.name not in nested:
                raise TypeError(
                    f"{cls.__name__}.{f.name}.{g.name} has no option in the nested= options "
                    f"of {cls.__name__}.{f.name}"
                )
            found.append(Declared(g.name, nested[g.name], getattr(default, g.name), inner[g.name]))
    return found


def choices(item: Declared) -> list[Option]:
    """A field's option, and its `also` option if it has one."""
    return [item.option] if item.option.also is None else [item.option, item.option.also]


def flag_names(item: Declared, choice: Option) -> list[str]:
    """What typer declares: the flag (`--a` or `--a/--no-a`) and the short flag, if any."""
    long = choice.flag or "--" + item.name.replace("_", "-")
    return [long, choice.short] if choice.short else [long]


def flag(item: Declared, choice: Option) -> str:
    """The flag as a user types it to set a value: `--shard-size`, `--constrained`."""
    return flag_names(item, choice)[0].split("/")[0]


def flag_key(item: Declared, choice: Option) -> str:
    """A flag's name as a Python name and YAML key: `--shard-size` -> shard_size."""
    return flag(item, choice).lstrip("-").replace("-", "_")


def parameter_name(item: Declared, choice: Option) -> str:
    """The command function's parameter: the field's name, or the `also` flag's (`gpus`)."""
    return item.name if choice is item.option else flag_key(item, choice)


def aliases(cls: type) -> dict[str, tuple[str, Callable[[str], Any] | None]]:
    """YAML keys named after a flag that differs from its field: key -> (field, parse)."""
    found = {}
    for item in declared(cls):
        for choice in choices(item):
            if (key := flag_key(item, choice)) != item.name:
                found[key] = (item.name, choice.parse)
    return found


def shown(item: Declared, value: Any) -> Any:
    """A value as its flag is written, the form `--help` shows as the default."""
    if value is None or value == ():
        return None
    if item.option.show is not None:
        return item.option.show(value)
    if isinstance(value, tuple):
        return ",".join(value)
    return value


def _flag_type(item: Declared, choice: Option) -> Any:
    """The type the flag's text is converted to (the rest is the config's to check)."""
    if choice.multiple or (choice.argument and typing.get_origin(item.kind) is tuple):
        return list[str]
    if choice.parse is not None:
        return str
    kinds = [k for k in typing.get_args(item.kind) if k is not type(None)] or [item.kind]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (bool, int, float) else str


def _parameters(item: Declared) -> Iterator[inspect.Parameter]:
    """The typer parameters of one field: its flag, and its `also` flag if any."""
    import typer
    from rich.markup import escape  # help texts hold brackets ("extra [ray]")

    for choice in choices(item):
        details: dict[str, Any] = {"help": escape(choice.help), "rich_help_panel": choice.panel}
        if choice.parse is not None:
            details["parser"] = _reporting(choice.parse)
        if choice.argument:
            info = typer.Argument(**details)
        else:
            info = typer.Option(*flag_names(item, choice), **details)
        kind = _flag_type(item, choice)
        if choice.required or choice.argument:
            default, annotation = inspect.Parameter.empty, typing.Annotated[kind, info]
        else:  # the field's default, shown by --help; the `also` flag shows none
            default = shown(item, item.default) if choice is item.option else None
            annotation = typing.Annotated[kind | None, info]
        name = parameter_name(item, choice)
        yield inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
        )


def _reporting(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A flag's parser whose ValueError reaches the user as its own message."""
    import typer

    @functools.wraps(parse)
    def parser(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

    return parser


def _panel_rank(parameter: inspect.Parameter) -> int:
    panel = getattr(typing.get_args(parameter.annotation)[1], "rich_help_panel", None)
    return PANELS.index(panel) if panel in PANELS else len(PANELS)


CONTEXT = "prox_context"  # the click context typer passes, to tell given flags from defaults


def command(cls: type, *selection: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command function (which takes `**flags`) an option for each chosen field of
    `cls` (all of them, or the fields and panels named); it is called with the flags given on
    the command line, by field name, and its own parameters."""

    import typer

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        items = [
            item
            for item in declared(cls)
            if not selection or item.name in selection or item.option.panel in selection
        ]
        hints = typing.get_type_hints(func, include_extras=True)
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[p.name])
            for p in inspect.signature(func).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        generated = [p for item in items for p in _parameters(item)]
        first = [p for p in generated if _panel_rank(p) == 0]
        rest = sorted((p for p in generated if _panel_rank(p) > 0), key=_panel_rank)
        context = inspect.Parameter(
            CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context
        )
        parameters = [*first, *own, *rest, context]
        routes = {  # parameter -> (field, flag)
            parameter_name(item, choice): (item.name, flag(item, choice))
            for item in items
            for choice in choices(item)
        }

        @functools.wraps(func)
        def wrapper(**values: Any) -> Any:
            context = values.pop(CONTEXT)
            flags: dict[str, Any] = {}
            given: dict[str, str] = {}  # field -> the flag that set it
            for name, (field_name, typed) in routes.items():
                value = values.pop(name)
                source = context.get_parameter_source(name)
                if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
                    continue  # not on the command line: the YAML file's or the field's value
                if field_name in given:
                    context.fail(f"give {given[field_name]} or {typed}, not both")
                flags[field_name], given[field_name] = value, typed
            return func(**values, **flags)

        wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate


def size(text: str) -> int:
    """'512MB', '1GiB', '100000' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?[bB]?|[bB])?\s*", str(text))
    if not match:
        raise ValueError(f"not a size: {text!r} (e.g. 512MB, 2GiB, 0 for no limit)")
    number, unit = float(match.group(1)), (match.group(2) or "b").lower().rstrip("b")
    base = 1024 if unit.endswith("i") else 1000
    return int(number * base ** " kmgt".index(unit[:1] or " "))


SIZE_UNITS = tuple(
    (f"{prefix}{binary}B", (1024 if binary else 1000) ** power)
    for binary in ("i", "")
    for prefix, power in (("T", 4), ("G", 3), ("M", 2), ("K", 1))
)  # TiB, GiB, MiB, KiB, then TB, GB, MB, KB


def size_text(value: int) -> str:
    """Bytes as an exact size, binary units first: 536870912 -> '512MiB', 2000000 -> '2MB'."""
    for unit, base in SIZE_UNITS:
        if value and value % base == 0:
            return f"{value // base}{unit}"
    return str(value)


def gpu_devices(text: str) -> tuple[str, ...]:
    """'4' -> cuda:0..cuda:3; '0,2' -> cuda:0, cuda:2."""
    text = str(text).strip()
    if text.isdigit():
        return tuple(f"cuda:{i}" for i in range(int(text)))
    numbers = [n.strip() for n in text.split(",") if n.strip()]
    if not numbers or not all(n.isdigit() for n in numbers):
        raise ValueError(f"--gpus takes a count (4) or device numbers (0,2), got {text!r}")
    return tuple(f"cuda:{n}" for n in numbers)
