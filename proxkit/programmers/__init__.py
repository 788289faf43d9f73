"""Programmers write ProX programs: one module per backend behind `base.Programmer`.

`make_programmer(spec, config)` turns a CLI/config value into a programmer:
`rules` / `rules:NAME,...` (classic heuristics, no model) or `stored` (programs already in
the records).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxkit.programmers.base import STAGES, Programmer, Stage, Written

if TYPE_CHECKING:
    from proxkit.config import RefineConfig


class UnknownProgrammer(ValueError):
    """A programmer spec that names no backend."""


def make_programmer(spec: str, config: RefineConfig | None = None) -> Programmer:
    if spec == "rules" or spec.startswith("rules:"):
        from proxkit.programmers.rules import RulesProgrammer

        try:
            return RulesProgrammer.from_spec(spec)
        except ValueError as exc:
            raise UnknownProgrammer(str(exc)) from exc
    if spec == "stored":
        from proxkit.programmers.stored import StoredProgrammer

        return StoredProgrammer()
    raise UnknownProgrammer(
        f"unknown programmer {spec!r}: use 'rules' (heuristics, no model) or 'stored' "
        "(programs already in metadata.doc_program / metadata.chunk_program)"
    )


__all__ = ["STAGES", "Programmer", "Stage", "UnknownProgrammer", "Written", "make_programmer"]
