"""Classic data-filtering heuristics (Gopher, C4, FineWeb, navigation, noise), as named rules
that the rule programmer turns into ProX programs."""

from proxkit.rules.doc import DEFAULT_DOC_RULES, DOC_RULE_SETS, DOC_RULES
from proxkit.rules.lines import (
    CONTEXT_RULES,
    DEFAULT_LINE_RULES,
    LINE_RULE_SETS,
    NORMALIZE_RULES,
    SINGLE_LINE_RULES,
)

__all__ = [
    "CONTEXT_RULES",
    "DEFAULT_DOC_RULES",
    "DEFAULT_LINE_RULES",
    "DOC_RULES",
    "DOC_RULE_SETS",
    "LINE_RULE_SETS",
    "NORMALIZE_RULES",
    "SINGLE_LINE_RULES",
]
