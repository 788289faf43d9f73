"""The rule programmer: classic heuristics written as ProX programs, no model needed.

Doc level: `drop_doc()` when a document fails a Gopher/C4/FineWeb rule (the rule is named in
`metadata.prox.doc_info.rules`), else `keep_doc()`. Chunk level: `remove_lines` for runs of
lines that line rules remove and `normalize` for noise, over the whole document's line
numbers. Rules and language models thereby share one program space and one executor, so
their outputs can be compared and combined.

Spec: `rules` (the defaults) or `rules:NAME,NAME` with rule or rule-set names; see
`proxkit.rules` for the names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from proxkit.io.readers import Document
from proxkit.program.ops import Normalize, operation_to_text, removals
from proxkit.programmers.base import Stage, Written
from proxkit.rules.doc import DEFAULT_DOC_RULES, DOC_RULE_SETS, DOC_RULES, first_failure
from proxkit.rules.lines import (
    CONTEXT_RULES,
    DEFAULT_LINE_RULES,
    LINE_RULE_SETS,
    NORMALIZE_RULES,
    SINGLE_LINE_RULES,
    line_reasons,
    normalizations,
)


def _expand(
    names: Sequence[str], sets: dict[str, tuple[str, ...]], known: set[str], stage: str
) -> tuple[str, ...]:
    expanded: list[str] = []
    for name in names:
        members = sets.get(name, (name,))
        unknown = [m for m in members if m not in known]
        if unknown:
            choices = ", ".join(sorted(set(sets) | known))
            raise ValueError(f"unknown {stage}-level rule {unknown[0]!r}; choose from: {choices}")
        expanded += [m for m in members if m not in expanded]
    return tuple(expanded)


def doc_rules(names: Sequence[str] = DEFAULT_DOC_RULES) -> tuple[str, ...]:
    return _expand(names, DOC_RULE_SETS, set(DOC_RULES), "doc")


def line_rules(names: Sequence[str] = DEFAULT_LINE_RULES) -> tuple[str, ...]:
    known = set(SINGLE_LINE_RULES) | set(CONTEXT_RULES) | set(NORMALIZE_RULES)
    return _expand(names, LINE_RULE_SETS, known, "chunk")


@dataclass(frozen=True)
class RulesProgrammer:
    doc_rules: tuple[str, ...] = doc_rules()
    line_rules: tuple[str, ...] = line_rules()
    name: str = "rules"
    parallel: bool = True  # pure Python on each document: safe in worker processes

    @classmethod
    def from_spec(cls, spec: str) -> RulesProgrammer:
        """`rules` or `rules:NAME,...` (names apply to the stage they belong to)."""
        _, _, names = spec.partition(":")
        if not names:
            return cls()
        chosen = [n.strip() for n in names.split(",") if n.strip()]
        doc_names = [n for n in chosen if n in DOC_RULE_SETS or n in DOC_RULES]
        other = [n for n in chosen if n not in doc_names]
        return cls(doc_rules(doc_names), line_rules(other), name=spec)

    def write(self, stage: Stage, documents: Sequence[Document]) -> list[Written]:
        if stage == "doc":
            return [self._doc(d.text) for d in documents]
        return [self._chunk(d.text) for d in documents]

    def _doc(self, text: str) -> Written:
        if not self.doc_rules:
            return Written("keep_doc()")
        reason = first_failure(text, tuple(DOC_RULES[name] for name in self.doc_rules))
        if reason is None:
            return Written("keep_doc()")
        return Written("drop_doc()", {"rules": [reason]})

    def _chunk(self, text: str) -> Written:
        lines = text.split("\n")
        reasons = line_reasons(lines, self.line_rules)
        program: list[str] = []
        fired: Counter[str] = Counter()
        for rule, source, target in normalizations(text, self.line_rules):
            program.append(operation_to_text(Normalize(source, target)))
            fired[rule] += 1
        fired.update(reason for reason in reasons if reason is not None)
        removed = [index for index, reason in enumerate(reasons) if reason is not None]
        program += [operation_to_text(op) for op in removals(removed)]
        if not program:
            return Written("keep_doc()")
        return Written("\n".join(program), {"rules": dict(sorted(fired.items()))})
