"""Quality-gated chunk refining (--chunk-score-range LO,HI): only kept documents scored inside
the band reach the chunk stage; the others pass unchanged with their own outcome, counted,
with the chunk-stage time they saved estimated; a band without keep scores is refused."""

from __future__ import annotations

import pytest

from proxkit.config import ConfigError, RefineConfig
from proxkit.pipeline.batch import check_score_band
from proxkit.pipeline.stats import RunStats
from proxkit.pipeline.verify import verify
from proxkit.report.collect import collect

from conftest import refine_records

TEXT = (
    "MENU Home | News\n" + "The river rose by two metres overnight and the town was flooded. " * 3
)


@pytest.mark.parametrize("backend", ["transformers", "vllm", "openai"])
def test_every_model_backend_gives_the_band_its_keep_scores(backend):
    check_score_band(RefineConfig.from_dict({"chunk_score_range": "0.5,0.9", "backend": backend}))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"doc_programmer": "rules"}, "needs doc-level keep scores"),
        ({"doc_programmer": "datatrove"}, "needs doc-level keep scores"),
        ({"doc_scoring": "generate"}, "doc scoring generate"),
        ({"stages": ("chunk",)}, "run both stages"),
    ],
)
def test_a_band_that_cannot_be_honoured_is_refused_at_start_up(tmp_path, options, message):
    config = RefineConfig.from_dict({"chunk_score_range": "0.5,0.9", **options})
    with pytest.raises(ConfigError, match=message):
        check_score_band(config)
    if options.get("doc_programmer") == "rules":  # a whole run stops before writing anything
        with pytest.raises(ConfigError, match=message):
            refine_records(tmp_path, "run", [{"id": "a", "text": TEXT}], **options,
                           chunk_programmer="rules", chunk_score_range=(0.5, 0.9))  # fmt: skip
        assert not list((tmp_path / "run").glob("part-*"))


@pytest.mark.parametrize(
    ("value", "message"),
    [("0.9,0.5", "0 <= LO <= HI <= 1"), ("0.5", "a score range is LO,HI"), ("a,b", "LO,HI")],
)
def test_a_band_that_is_not_one_is_refused_with_the_configuration(value, message):
    with pytest.raises(ConfigError, match=message):
        RefineConfig.from_dict({"chunk_score_range": value})


def test_a_band_read_from_a_flag_or_yaml_is_two_numbers():
    assert RefineConfig.from_dict({"chunk_score_range": "0.5,0.9"}).chunk_score_range == (0.5, 0.9)
    assert RefineConfig.from_dict({"chunk_score_range": [0, 1]}).chunk_score_range == (0.0, 1.0)


def stored(score: float | None) -> dict:
    info = {} if score is None else {"doc_info": {"keep_score": score}}
    return {
        "doc_program": "keep_doc()",
        "chunk_program": "remove_lines(line_start=0, line_end=0)",
        "prox": info,
    }


def test_documents_outside_the_band_pass_unchanged_with_their_own_outcome(tmp_path):
    scores = {"low": 0.3, "mid": 0.6, "edge": 0.9, "high": 0.95, "unscored": None}
    records = [{"id": k, "text": TEXT, "metadata": stored(s)} for k, s in scores.items()]
    options = {"doc_programmer": "stored", "chunk_programmer": "stored"}
    out, stats = refine_records(tmp_path, "band", records, **options, chunk_score_range=(0.5, 0.9))
    outcome = {r["id"]: r["metadata"]["prox"]["chunk"]["outcome"] for r in out}
    assert outcome == {
        "low": "below_score_band",
        "mid": "refined",
        "edge": "refined",  # the band is closed
        "high": "above_score_band",
        "unscored": "refined",  # no score: refined as without a band
    }
    text = {r["id"]: r["text"] for r in out}
    assert text["high"] == text["low"] == TEXT and "MENU" not in text["mid"]
    assert stats["chunk_skipped_chars"] == 2 * len(TEXT)
    assert stats["chunk_stage_chars"] == 3 * len(TEXT)
    rows = dict(RunStats.from_dict(stats).summary_lines())
    assert rows["chunk stage skipped: keep score above / below the band"] == "1 / 1"
    assert "40.0% of the kept characters" in rows["chunk stage time saved (estimated)"]
    report = collect(str(tmp_path / "band"), 10, 0, None)
    assert report.outcomes["chunk: above_score_band"] == 1
    assert verify(tmp_path / "band").problems == []  # the auditor gates as the run did

    without, _ = refine_records(tmp_path, "all", records, **options)
    assert {r["id"]: r["text"] for r in without}["high"] != TEXT  # the band made the difference


def test_a_model_scores_then_refines_only_inside_the_band(tmp_path, refiner):
    pages = [{"id": f"p{i}", "text": TEXT.replace("river", f"river {i}")} for i in range(6)]
    model = {
        "doc_programmer": str(refiner),
        "chunk_programmer": str(refiner),
        "device": "cpu",
        "backend": "transformers",
    }
    model["doc_keep_threshold"] = 0.0  # every page kept: the band alone decides
    scored, _ = refine_records(tmp_path, "scores", pages, **model, stages=("doc",))
    scores = sorted(r["metadata"]["prox"]["doc_info"]["keep_score"] for r in scored)
    high = (scores[2] + scores[3]) / 2  # half of the documents above the band
    out, stats = refine_records(
        tmp_path, "band", pages, **model, chunk_max_new_tokens=24, chunk_score_range=(0.0, high)
    )
    above = [r for r in out if r["metadata"]["prox"]["doc_info"]["keep_score"] > high]
    assert len(above) == 3
    assert all(r["metadata"]["prox"]["chunk"]["outcome"] == "above_score_band" for r in above)
    assert all(r["text"] == r["raw_content"] for r in above)
    assert stats["programmers"]["chunk"]["prompts"] == 3  # one chunk each, for the other three
    assert stats["chunk_stage_seconds"] > 0
