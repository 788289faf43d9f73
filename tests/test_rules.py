"""Every heuristic rule with a document or line that fails it and one that passes it."""

from __future__ import annotations

import pytest

from proxkit.io.readers import Document
from proxkit.program import execute_chunk, execute_doc, parse
from proxkit.programmers import UnknownProgrammer, make_programmer
from proxkit.programmers.rules import RulesProgrammer
from proxkit.rules.doc import DOC_RULES, Features
from proxkit.rules.lines import line_reasons, navigation_runs, normalizations

PROSE = (
    "The history of the river valley is long and varied. Farmers settled there because the soil was rich, "
    "and they built small villages along the banks. Over the centuries the villages grew into towns with "
    "markets, schools and churches. Trade with the coast brought new ideas and goods to the region. "
    "Today the valley is known for its vineyards, its walking trails and the festivals held every summer. "
    "Visitors come to see the old stone bridges and to taste the local food that has been made the same way "
    "for generations. The museum in the main town tells the story of the people who shaped the landscape."
)
SECOND = (
    "A second section describes the climate. Winters are mild and wet, while summers stay warm but rarely "
    "hot. Most rain falls in autumn, when storms roll in from the west. Snow is unusual except on the hills."
)
assert len(PROSE.split()) > 100


def fails(rule: str, text: str) -> str | None:
    return DOC_RULES[rule](Features.of(text))


# (rule, failing text, expected reason); PROSE passes every one of them
DOC_CASES = [
    (
        "gopher_word_count",
        "Too short to be a real document with the and of.",
        "gopher_short_document",
    ),
    ("gopher_word_count", "word " * 100_001, "gopher_long_document"),
    ("gopher_mean_word_length", " ".join(["a"] * 60), "gopher_mean_word_length"),
    (
        "gopher_mean_word_length",
        " ".join(["incomprehensibilities"] * 60),
        "gopher_mean_word_length",
    ),
    ("gopher_symbol_ratio", PROSE + " #tag" * 20, "gopher_hash_ratio"),
    ("gopher_symbol_ratio", PROSE + " wait..." * 20, "gopher_ellipsis_ratio"),
    (
        "gopher_line_shapes",
        "\n".join(f"• item number {i} of the list" for i in range(20)),
        "gopher_bullet_lines",
    ),
    (
        "gopher_line_shapes",
        "\n".join(["and then it went on…"] * 5 + [PROSE]),
        "gopher_ellipsis_lines",
    ),
    ("gopher_alphabetic_words", PROSE + " 1 2 3 4 5 6 7 8 9" * 10, "gopher_alphabetic_words"),
    ("gopher_stop_words", " ".join(["lorem", "data", "value", "table"] * 20), "gopher_stop_words"),
    (
        "gopher_duplicate_lines",
        "\n".join(["Buy now and save big today"] * 5 + ["A unique line of text here."] * 1),
        "gopher_duplicate_lines",
    ),
    (
        "gopher_duplicate_lines",
        "\n".join(["x", "y", "z", "w", "v", "u", PROSE, PROSE]),
        "gopher_duplicate_line_chars",
    ),
    (
        "gopher_ngram_repetition",
        PROSE + " the river the river the river the river" * 30,
        "gopher_top_2gram",
    ),
    (
        "gopher_ngram_repetition",
        PROSE + " " + " ".join(PROSE.split()[:40]),
        "gopher_duplicate_5grams",
    ),
    ("c4_page", PROSE + " Lorem ipsum dolor sit amet.", "c4_lorem_ipsum"),
    ("c4_page", PROSE + " if (x) { y(); }", "c4_curly_bracket"),
    ("c4_page", "One sentence here. Two sentences here. Three here!", "c4_too_few_sentences"),
    (
        "fineweb_quality",
        "\n".join(["Menu item without a stop"] * 9 + [PROSE]),
        "fineweb_line_punctuation",
    ),
    (
        "fineweb_quality",
        "\n".join(["Short."] * 7 + [PROSE] * 1 + [PROSE[:200] + "."]),
        "fineweb_short_lines",
    ),
    (
        "fineweb_quality",
        "\n".join([PROSE, PROSE.upper(), PROSE.upper()]),
        "fineweb_duplicate_line_chars",
    ),
]


@pytest.mark.parametrize(("rule", "text", "reason"), DOC_CASES, ids=[c[2] for c in DOC_CASES])
def test_doc_rule_fails_and_passes(rule, text, reason):
    assert fails(rule, text) == reason
    assert fails(rule, PROSE) is None


LINE_CASES = [
    ("c4_javascript", "Please enable JavaScript to view this page."),
    ("c4_policy", "By using this site you accept our Privacy Policy."),
    ("c4_lorem_ipsum", "Lorem ipsum dolor sit amet, consectetur."),
    ("c4_curly_bracket", "function f() { return 1; }"),
    ("c4_long_word", "a " + "x" * 1001 + " b."),
    ("c4_no_terminal_punctuation", "A line that just stops without an end mark"),
    ("c4_too_few_words", "Two words."),
    ("short_line", "Home"),
]


@pytest.mark.parametrize(("rule", "line"), LINE_CASES, ids=[c[0] for c in LINE_CASES])
def test_line_rule_removes_and_keeps(rule, line):
    assert line_reasons([line], (rule,)) == [rule]
    assert line_reasons(
        ["This sentence is ordinary, complete and long enough to stay."], (rule,)
    ) == [None]


def test_duplicate_lines_keep_the_first_occurrence():
    lines = ["Share this page", "Real text.", "Share this page", "", ""]
    assert line_reasons(lines, ("duplicate_line",)) == [None, None, "duplicate_line", None, None]


def test_navigation_runs_need_three_short_lines_and_bridge_blank_lines():
    lines = [
        "Home",
        "",
        "About",
        "Contact",
        "A real sentence of the article follows here.",
        "Next",
        "Prev",
    ]
    assert navigation_runs(lines) == [(0, 3)]
    assert line_reasons(lines, ("navigation",)) == ["navigation"] * 4 + [None, None, None]


def test_normalizations_find_noise_in_a_safe_order():
    text = "Wow!!!!! Really??? Wait.... ok!!! zero\u200bwidth Heading¶"
    assert normalizations(text, ("zero_width", "repeated_punctuation", "heading_anchor")) == [
        ("zero_width", "\u200b", ""),
        ("repeated_punctuation", "!!!!!", "!"),
        ("repeated_punctuation", "....", "..."),
        ("repeated_punctuation", "!!!", "!"),
        ("repeated_punctuation", "???", "?"),
        ("heading_anchor", "¶", ""),
    ]
    assert (
        normalizations(
            "Nothing odd here.", ("zero_width", "repeated_punctuation", "heading_anchor")
        )
        == []
    )


PAGE = "\n".join(
    [
        "Home",
        "Products",
        "Contact us",
        PROSE,
        "Great!!!! See more.",
        SECOND,
        "We use cookies to improve your experience.",
        "Home",
    ]
)


def test_rule_programs_are_valid_prox_programs_that_do_what_the_rules_say():
    programmer = RulesProgrammer()
    document = Document("d", PAGE, {"text": PAGE}, "mem", 1)
    (doc,) = programmer.write("doc", [document])
    assert doc.program == "keep_doc()" and execute_doc(PAGE, doc.program).outcome.value == "kept"
    (chunk,) = programmer.write("chunk", [document])
    assert chunk.program == (
        'normalize(source_str="!!!!", target_str="!")\n'
        "remove_lines(line_start=0, line_end=2)\n"
        "remove_lines(line_start=6, line_end=7)"
    )
    assert chunk.info == {
        "rules": {"c4_policy": 1, "duplicate_line": 1, "navigation": 3, "repeated_punctuation": 1}
    }
    assert parse(chunk.program).errors == ()
    for mode in ("strict", "reference"):
        result = execute_chunk(PAGE, chunk.program, mode=mode)
        assert result.text == "\n".join([PROSE, "Great! See more.", SECOND])


def test_failing_documents_get_drop_doc_with_the_rule_named():
    (written,) = RulesProgrammer().write("doc", [Document("d", "tiny page", {}, "mem", 1)])
    assert (written.program, written.info) == ("drop_doc()", {"rules": ["gopher_short_document"]})


def test_rule_specs_select_rules_and_sets():
    programmer = make_programmer("rules:c4,c4_lines,navigation")
    assert programmer.doc_rules == ("c4_page",)
    assert (
        "c4_no_terminal_punctuation" in programmer.line_rules
        and "navigation" in programmer.line_rules
    )
    with pytest.raises(UnknownProgrammer, match="unknown chunk-level rule 'nonsense'"):
        make_programmer("rules:nonsense")


def _naive_ngram_repetition(text: str) -> str | None:
    """Gopher's repeated n-gram rule with every n checked (no early exit), for comparison."""
    from collections import Counter

    from proxkit.rules.doc import DUPLICATE_NGRAM_LIMITS, TOP_NGRAM_LIMITS

    words = [w.lower() for w in Features.of(text).words]
    total = sum(map(len, words))
    for n, limit in TOP_NGRAM_LIMITS.items():
        if total and len(words) >= n:
            gram, count = Counter(zip(*(words[k:] for k in range(n)))).most_common(1)[0]
            if count > 1 and count * sum(map(len, gram)) / total > limit:
                return f"gopher_top_{n}gram"
    for n, limit in DUPLICATE_NGRAM_LIMITS.items():
        if not total or len(words) < n:
            break
        grams = list(zip(*(words[k:] for k in range(n))))
        covered = set()
        for start, gram in enumerate(grams):
            if gram in grams[:start]:
                covered.update(range(start, start + n))
        if sum(len(words[i]) for i in covered) / total > limit:
            return f"gopher_duplicate_{n}grams"
    return None


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(
    st.lists(
        st.sampled_from(
            [
                "alpha",
                "beta",
                "gamma",
                "delta",
                "eps",
                "zeta",
                "eta",
                "theta",
                "iota",
                "kappa",
                "lambda",
                "mu",
            ]
        ),
        min_size=0,
        max_size=120,
    )
)
@settings(max_examples=300, deadline=None)
def test_ngram_rule_early_exit_never_changes_the_verdict(words):
    text = " ".join(words)
    assert DOC_RULES["gopher_ngram_repetition"](Features.of(text)) == _naive_ngram_repetition(text)
