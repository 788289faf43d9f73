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
    ("c4_page", PROSE + "\nWe write a block with { braces } in it.", "c4_curly_bracket"),
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
    assert make_programmer("rules:fineweb_pipeline").doc_rules[-2:] == (
        "c4_page_fineweb",
        "fineweb_after_c4",
    )
    assert (
        "c4_no_terminal_punctuation" in programmer.line_rules
        and "navigation" in programmer.line_rules
    )
    with pytest.raises(UnknownProgrammer, match="unknown chunk-level rule 'nonsense'"):
        make_programmer("rules:nonsense")


def _naive_ngram_repetition(text: str) -> str | None:
    """Gopher's n-gram rules as plainly as they can be written (n-grams as joined strings, a
    left-to-right scan that skips past each repeat), for comparison."""
    from collections import Counter

    from proxkit.rules.doc import DUPLICATE_NGRAM_LIMITS, TOP_NGRAM_LIMITS
    from proxkit.rules.words import words

    tokens, length = words(text), max(len(text), 1)
    for n, limit in TOP_NGRAM_LIMITS.items():
        grams = [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        if grams:
            gram, count = Counter(grams).most_common(1)[0]
            if len(gram) * count / length > limit:
                return f"gopher_top_{n}gram"
    for n, limit in DUPLICATE_NGRAM_LIMITS.items():
        seen, chars, index = set(), 0, 0
        while index < len(tokens) - n + 1:
            gram = "".join(tokens[index : index + n])
            if gram in seen:
                chars += len(gram)
                index += n
            else:
                seen.add(gram)
                index += 1
        if chars / length > limit:
            return f"gopher_duplicate_{n}grams"
    return None


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(
    st.lists(
        st.sampled_from(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "the", ",", "."]),
        min_size=0,
        max_size=160,
    )
)
@settings(max_examples=400, deadline=None)
def test_the_fast_ngram_rule_decides_as_the_plain_one(tokens):
    """numpy n-gram classes and the candidate-only scan change nothing, at any n."""
    text = " ".join(tokens)
    assert DOC_RULES["gopher_ngram_repetition"](Features.of(text)) == _naive_ngram_repetition(text)


def test_gopher_and_fineweb_count_as_datatrove_does():
    from proxkit.rules.doc import first_failure

    # stop words: distinct, and as written ("The" is not "the")
    assert fails("gopher_stop_words", "the the the the The quick fox") == "gopher_stop_words"
    assert fails("gopher_stop_words", "the fox and the dog") is None
    # punctuation tokens count against the share of tokens holding a letter
    code = " ".join(["x = f(a, b) + g[0]; y = {k: v} # ok"] * 20)
    assert fails("gopher_alphabetic_words", code) == "gopher_alphabetic_words"
    # FineWeb's "list" ratio: more than 0.3 newlines per token
    listing = "\n".join(f"https://example.com/downloads/archive-{i}.zip." for i in range(40))
    assert fails("fineweb_quality", listing) == "fineweb_list_ratio"
    # the FineWeb pipeline runs FineWeb's rules on the lines C4 keeps
    rules = tuple(DOC_RULES[n] for n in ("c4_page_fineweb", "fineweb_after_c4"))
    navigation = "\n".join(["Home", "About", "Contact us", "Shop"] * 3)
    assert first_failure(f"{navigation}\n{PROSE}", rules) is None  # C4 drops the short lines
    assert fails("fineweb_quality", f"{navigation}\n{PROSE}") is not None


def test_tokens_are_spacy_english_tokens():
    from proxkit.rules.words import sentence_count, words

    assert words("Hello, world! It's a well-known fact (see https://example.com/a?b=1).") == [
        "Hello", ",", "world", "!", "It", "'s", "a", "well", "-", "known", "fact", "(",
        "see", "https://example.com/a?b=1", ")", ".",
    ]  # fmt: skip
    assert words("U.S. e.g. don't cannot 3.14 $10 10km 50% Mr. Smith") == [
        "U.S.", "e.g.", "do", "n't", "can", "not", "3.14", "$", "10", "10", "km", "50", "%",
        "Mr.", "Smith",
    ]  # fmt: skip
    assert words("def f(x): return os.path.join(a, b)") == [
        "def", "f(x", "):", "return", "os.path.join(a", ",", "b", ")",
    ]  # fmt: skip
    assert sentence_count(words("One. Two! Three? Four")) == 4
    assert sentence_count(words("No end mark here")) == 1


_PIECE_PARTS = [
    *"aZé1_²➀─٣-.,'’()[]\"“:;/=+@#$%&*",
    "can",
    "n't",
    "nt",
    "km",
    "10",
    "http://",
    "Dr",
]


@given(st.lists(st.sampled_from(_PIECE_PARTS), min_size=1, max_size=6).map("".join))
@settings(max_examples=500, deadline=None)
def test_fast_paths_split_pieces_as_the_full_rules_do(piece):
    """The shortcuts for plain words with a mark beside them give the full rules' tokens."""
    from proxkit.rules.words import _piece_tokens, _split_piece

    assert _piece_tokens(piece) == tuple(_split_piece(piece))
