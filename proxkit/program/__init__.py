"""The ProX program language: operations, the strict and reference parsers, the executor."""

from proxkit.program.executor import (
    MODES,
    ExecutionResult,
    Mode,
    Outcome,
    Thresholds,
    apply_edits,
    execute_chunk,
    execute_doc,
)
from proxkit.program.ops import (
    DropDoc,
    KeepDoc,
    Normalize,
    Operation,
    Program,
    ProgramError,
    RemoveAllLines,
    RemoveLines,
)
from proxkit.program.parser import parse

__all__ = [
    "MODES",
    "DropDoc",
    "ExecutionResult",
    "KeepDoc",
    "Mode",
    "Normalize",
    "Operation",
    "Outcome",
    "Program",
    "ProgramError",
    "RemoveAllLines",
    "RemoveLines",
    "Thresholds",
    "apply_edits",
    "execute_chunk",
    "execute_doc",
    "parse",
]
