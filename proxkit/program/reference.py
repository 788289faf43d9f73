"""Reference parsing mode: reads programs exactly as the ProX reference implementation does.

The released ProX data sets were produced by a string-splitting parser. To reproduce them byte
for byte, this module restates its behaviour (not its code). Where it differs from the strict
parser (`proxkit.program.parser`), each difference is listed here and tested in
`tests/test_reference_mode.py`:

1. Program lines are split on "\\n" after stripping spaces from the whole program; a line is
   read only if it *starts with* `remove_lines` or `normalize`. Any other line (keep_doc(),
   prose, `drop_doc()`, indented calls, and `remove_str`, which the reference predates) is
   skipped without counting an error.
2. Arguments are found by splitting the text between the first `(` and the first `)` on `,`
   and then on `=`: keyword names are ignored and order is positional, so
   `remove_lines(line_end=5, line_start=3)` reads as the empty range 5..3.
3. A missing `)` counts an error but the line is still read, minus its last character.
4. A normalize string holding `,` gives more than two pieces: the line is ignored without an
   error. A string holding `)` is cut there; one holding `=` is cut at the `=`.
5. Quotes are removed with `strip('"')`: single-quoted strings keep their quotes and escapes
   such as `\\n` or `\\u00a0` stay literal backslash text.
6. `normalize(source_str=" ")` with one argument deletes every space (the empty/space guard
   applies only to the two-argument form).
7. Line numbers go through `int()`, so `+3`, ` 3`, `3_0` are accepted; negative and reversed
   ranges are accepted and remove nothing outside the document.
8. Out-of-range errors are counted after merging overlapping or adjacent ranges, so two
   adjacent ranges past the end count one error (strict mode counts the same way).
9. Doc level: the document is dropped when the program text contains `drop` anywhere.
10. An all-whitespace document makes the reference divide by zero; here it is dropped as empty.
"""

from __future__ import annotations

from proxkit.program.ops import ChunkEdits, ProgramError


def doc_program_drops(program_text: str) -> bool:
    """The reference doc-level rule: any occurrence of `drop` drops the document."""
    return "drop" in program_text.strip(" ")


def _argument_text(operation: str) -> tuple[str | None, int]:
    """Text between the first `(` and the first `)`, as the reference slices it; errors counted."""
    open_at = operation.find("(")
    if open_at < 0:
        return None, 1
    close_at = operation.find(")")
    if close_at < 0:
        return operation[open_at + 1 : -1], 1
    return operation[open_at + 1 : close_at], 0


def _value(piece: str) -> str:
    """The reference's reading of `name=value`: the text between the first and second `=`."""
    return piece.split("=")[1]


def read_chunk_program(program_text: str) -> ChunkEdits:
    """Lower a chunk-level program the way the reference does; never raises."""
    normalizations: list[tuple[str, str]] = []
    ranges: list[tuple[int, int]] = []
    remove_all = False
    errors: list[ProgramError] = []

    for number, operation in enumerate(program_text.strip(" ").split("\n"), start=1):

        def error(reason: str, number: int = number, operation: str = operation) -> None:
            errors.append(ProgramError(number, operation, reason))

        is_range = operation.startswith("remove_lines") and "all=True" not in operation
        if not (is_range or operation.startswith("normalize")):
            remove_all = remove_all or operation.startswith("remove_lines")
            continue
        arguments, missing = _argument_text(operation)
        if arguments is None:
            error("no '(' in call")
            continue
        if missing:
            error("no ')' in call")
        pieces = arguments.split(",")
        if is_range:
            try:
                ranges.append((int(_value(pieces[0])), int(_value(pieces[1]))))
            except (IndexError, ValueError):
                error("line numbers not readable")
        elif len(pieces) == 1:
            try:
                normalizations.append((_value(pieces[0]).strip('"'), ""))
            except IndexError:
                error("source_str not readable")
        elif len(pieces) == 2:
            try:
                source = _value(pieces[0]).strip('"')
                target = _value(pieces[1]).strip('"')
            except IndexError:
                error("source_str/target_str not readable")
                continue
            if source not in (" ", ""):
                normalizations.append((source, target))

    return ChunkEdits(tuple(normalizations), tuple(ranges), remove_all, tuple(errors))
