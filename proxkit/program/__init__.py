"""The ProX program language: operations, the strict and reference parsers, the executor."""

from proxkit.program.executor import (
    MODES,
    Edited,
    ExecutionResult,
    Mode,
    Outcome,
    Thresholds,
    apply_edits,
    edit,
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
    RemoveStr,
    is_deletion,
    is_subsequence,
)
from proxkit.program.parser import parse

__all__ = [
    "MODES",
    "DropDoc",
    "Edited",
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
    "RemoveStr",
    "Thresholds",
    "apply_edits",
    "edit",
    "execute_chunk",
    "execute_doc",
    "is_deletion",
    "is_subsequence",
    "parse",
]
