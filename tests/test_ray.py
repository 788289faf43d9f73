"""The Ray engine on a real local Ray cluster (2 CPUs): the same output as a local run, resume
through the same completion records, and model programmers as an actor pool."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.xdist_group("ray")  # one Ray cluster at a time on this machine

from proxkit.config import RefineConfig  # noqa: E402
from proxkit.pipeline.run import run  # noqa: E402

from conftest import example_records  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray_corpus")
    records = example_records()
    for part in range(3):
        chosen = records[part * 60 : (part + 1) * 60]
        (folder / f"p{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return folder


def refine(corpus: Path, output: Path, **options) -> dict:
    config = RefineConfig(
        inputs=(str(corpus),),
        output=str(output),
        doc_programmer="rules",
        chunk_programmer="rules",
        batch_size=16,
        workers=1,
        **options,
    )
    return run(config, progress=False).to_dict()


def shards(folder: Path) -> dict[str, bytes]:
    return {p.name: gzip.decompress(p.read_bytes()) for p in sorted(folder.glob("part-*"))}


def test_ray_writes_what_a_local_run_writes(corpus, tmp_path):
    local = refine(corpus, tmp_path / "local")
    on_ray = refine(corpus, tmp_path / "ray", engine="ray")
    assert shards(tmp_path / "ray") == shards(tmp_path / "local")
    assert len(shards(tmp_path / "ray")) == 3
    assert {k: v for k, v in on_ray.items() if k != "programmers"} == {
        k: v for k, v in local.items() if k != "programmers"
    }


def test_a_ray_run_resumes_from_its_completion_records(corpus, tmp_path):
    output = tmp_path / "out"
    refine(corpus, output, engine="ray")
    expected = shards(output)
    (output / "_prox" / "done" / "unit-00001.json").unlink()  # as if killed while writing unit 1
    for shard in output.glob("part-00001-*"):
        shard.rename(shard.with_name(shard.name + ".partial"))
    stats = refine(corpus, output, engine="ray")
    assert shards(output) == expected and stats["documents"] == 180


def test_model_programmers_run_as_an_actor_pool(corpus, tmp_path, tiny_model):
    from tiny_model import make_documents

    model = tiny_model(120)
    inputs = tmp_path / "docs"
    inputs.mkdir()
    pairs = make_documents(12, 11)
    (inputs / "d.jsonl").write_text(
        "".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, (t, _) in enumerate(pairs))
    )
    for engine in ("local", "ray"):
        config = RefineConfig(
            inputs=(str(inputs),),
            output=str(tmp_path / engine),
            doc_programmer=str(model),
            backend="transformers",
            stages=("doc",),
            engine=engine,
            ray_actors=1,
            output_format="jsonl",
        )
        run(config, progress=False)
    local, on_ray = (
        (tmp_path / e / "part-00000-00000.jsonl").read_text() for e in ("local", "ray")
    )
    assert local == on_ray
    assert [json.loads(line)["metadata"]["doc_program"] for line in on_ray.splitlines()] == [
        "keep_doc()" if keep else "drop_doc()" for _, keep in pairs
    ]
