"""The strict parser: model output text -> `Program` (operations + errors), with Python's `ast`.

Each program line is parsed as Python source and only literal arguments are read from the
syntax tree, so any string a model can write (commas, `=`, `)`, quotes, escapes, unicode) is
read exactly, and nothing is ever evaluated. A line that is not a valid call becomes a
`ProgramError` with the reason; parsing never raises on model output.

The calls, their arguments bound as Python binds them (positionally or by keyword, each once):
- `keep_doc()`, `drop_doc()`: no arguments.
- `remove_lines(line_start=S, line_end=E)`: integers, 0 <= S <= E; or `remove_lines(all=True)`.
- `normalize(source_str="a", target_str="b")`: strings without a newline; `target_str`
  defaults to "" (delete every occurrence).
- `remove_str(line=N, del_str="a")`: an integer N >= 0 and a non-empty string without a
  newline (the canonical form; `remove_str(N, "a")` reads the same). What it does is in
  `ops.RemoveStr`.
Any other name, argument, type or value is an error naming what is wrong.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Callable

from proxkit.program.ops import (
    DropDoc,
    KeepDoc,
    Normalize,
    Operation,
    Program,
    ProgramError,
    RemoveAllLines,
    RemoveLines,
    RemoveStr,
)


class _Invalid(ValueError):
    """A call that is syntactically Python but not a valid ProX operation."""


_NO_VALUE = object()


def parse(text: str) -> Program:
    """Parse a whole program: one or more calls per line; blank lines and comments are skipped."""
    operations: list[Operation] = []
    errors: list[ProgramError] = []
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            with warnings.catch_warnings():
                # Model strings such as "\(" are invalid escapes: read as written, don't warn.
                warnings.simplefilter("ignore")
                tree = ast.parse(line, mode="exec")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            reason = exc.msg if isinstance(exc, SyntaxError) else str(exc) or type(exc).__name__
            errors.append(ProgramError(number, line, f"not valid syntax: {reason}"))
            continue
        for statement in tree.body:
            try:
                operations.append(_statement_to_operation(statement))
            except _Invalid as exc:
                errors.append(ProgramError(number, line, str(exc)))
    return Program(tuple(operations), tuple(errors))


def _statement_to_operation(statement: ast.stmt) -> Operation:
    if not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call)):
        raise _Invalid("not a function call")
    call = statement.value
    if not isinstance(call.func, ast.Name):
        raise _Invalid("the called object is not a plain function name")
    builder = _BUILDERS.get(call.func.id)
    if builder is None:
        raise _Invalid(f"unknown function {call.func.id!r}")
    return builder(_bind(call))


def _literal(node: ast.expr) -> object:
    """A literal argument value: str, int or bool (negative ints allowed, to report them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)):
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) is int
    ):
        return -node.operand.value
    raise _Invalid(f"argument is not a string or integer literal: {ast.unparse(node)[:80]}")


def _bind(call: ast.Call) -> tuple[str, list[object], dict[str, object]]:
    if any(isinstance(arg, ast.Starred) for arg in call.args) or any(
        keyword.arg is None for keyword in call.keywords
    ):
        raise _Invalid("* and ** arguments are not allowed")
    positional = [_literal(arg) for arg in call.args]
    keywords: dict[str, object] = {}
    for keyword in call.keywords:
        assert keyword.arg is not None
        if keyword.arg in keywords:
            raise _Invalid(f"argument {keyword.arg!r} given twice")
        keywords[keyword.arg] = _literal(keyword.value)
    name = call.func.id  # type: ignore[union-attr]
    return name, positional, keywords


def _assign(
    name: str, parameters: tuple[str, ...], positional: list[object], keywords: dict[str, object]
) -> dict[str, object]:
    """Bind arguments to parameter names the way a Python call would."""
    if len(positional) > len(parameters):
        raise _Invalid(f"{name}() takes at most {len(parameters)} arguments")
    bound = dict(zip(parameters, positional))
    for key, value in keywords.items():
        if key not in parameters:
            raise _Invalid(f"{name}() got an unexpected argument {key!r}")
        if key in bound:
            raise _Invalid(f"{name}() got multiple values for {key!r}")
        bound[key] = value
    return bound


def _no_arguments(name: str, operation: Operation) -> Callable[[tuple], Operation]:
    def build(bound_call: tuple[str, list[object], dict[str, object]]) -> Operation:
        _, positional, keywords = bound_call
        if positional or keywords:
            raise _Invalid(f"{name}() takes no arguments")
        return operation

    return build


def _line_number(name: str, value: object) -> int:
    if type(value) is not int:
        raise _Invalid(f"{name} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise _Invalid(f"{name} must not be negative, got {value}")
    return value


def _remove_lines(bound_call: tuple[str, list[object], dict[str, object]]) -> Operation:
    name, positional, keywords = bound_call
    if "all" in keywords:
        if positional or len(keywords) > 1:
            raise _Invalid("remove_lines(all=True) takes no other arguments")
        if keywords["all"] is not True:
            raise _Invalid("remove_lines(all=...) must be all=True")
        return RemoveAllLines()
    bound = _assign(name, ("line_start", "line_end"), positional, keywords)
    if "line_start" not in bound or "line_end" not in bound:
        raise _Invalid("remove_lines() needs line_start and line_end")
    start = _line_number("line_start", bound["line_start"])
    end = _line_number("line_end", bound["line_end"])
    if start > end:
        raise _Invalid(f"reversed range: line_start {start} > line_end {end}")
    return RemoveLines(start, end)


def _normalize(bound_call: tuple[str, list[object], dict[str, object]]) -> Operation:
    name, positional, keywords = bound_call
    bound = _assign(name, ("source_str", "target_str"), positional, keywords)
    source = bound.get("source_str", _NO_VALUE)
    target = bound.get("target_str", "")
    if source is _NO_VALUE:
        raise _Invalid("normalize() needs source_str")
    if not isinstance(source, str) or not isinstance(target, str):
        raise _Invalid("normalize() arguments must be strings")
    if "\n" in source or "\n" in target:
        # Line numbers of the chunk programs refer to the original lines; a newline would shift them.
        raise _Invalid("normalize() strings must not contain a newline")
    return Normalize(source, target)


def _remove_str(bound_call: tuple[str, list[object], dict[str, object]]) -> Operation:
    name, positional, keywords = bound_call
    bound = _assign(name, ("line", "del_str"), positional, keywords)
    if "line" not in bound or "del_str" not in bound:
        raise _Invalid("remove_str() needs line and del_str")
    line = _line_number("line", bound["line"])
    text = bound["del_str"]
    if not isinstance(text, str):
        raise _Invalid(f"del_str must be a string, got {type(text).__name__}")
    if not text:
        raise _Invalid("del_str must not be empty")
    if "\n" in text:
        raise _Invalid("del_str must not contain a newline (a cut stays inside its line)")
    return RemoveStr(line, text)


_BUILDERS: dict[str, Callable[[tuple[str, list[object], dict[str, object]]], Operation]] = {
    "keep_doc": _no_arguments("keep_doc", KeepDoc()),
    "drop_doc": _no_arguments("drop_doc", DropDoc()),
    "remove_lines": _remove_lines,
    "normalize": _normalize,
    "remove_str": _remove_str,
}
