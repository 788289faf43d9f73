"""The openai backend against a real `vllm serve` (vLLM's CPU build), started here as a process
on a free port: one server with proxkit installed (the exact grammar through `vllm_xargs`), one
as if without (proxkit's logits processor hidden: the grammar through vLLM's structured
outputs). Both serve the tests' refining model (`vllm_refiner`, trained in the test session).
Skipped where vLLM is not installed.

Greedy programs and keep scores through the server equal the transformers backend's and the
offline vLLM backend's; the grammar holds where the model alone would break it; a server killed
mid-run stops the run, which resumes to the bytes of a run never stopped.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytest.importorskip("torch")

from proxkit.chunking import Chunker, chunk_content
from proxkit.config import RefineConfig
from proxkit.pipeline.run import run
from proxkit.programmers.grammar import ProgramGrammar
from proxkit.programmers.hf import TransformersBackend
from proxkit.programmers.lm import Completion
from proxkit.programmers.openai import OpenAIBackend, OpenAISettings
from proxkit.programmers.vllm import cores_text
from proxkit.prompts import chunk_prompts, doc_prompts

from tiny_model import GOOD, SPAM, make_documents

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vllm")]

# The Llama-2 chat format as proxkit renders it (`prompts.llama2_chat`), for the chat API.
CHAT_TEMPLATE = (
    "{{ bos_token }}[INST] <<SYS>>\n{{ messages[0]['content'] }}\n<</SYS>>\n\n"
    "{{ messages[1]['content'].rstrip() }} [/INST]"
)
# Hides proxkit's `vllm.logits_processors` entry point from a server: vLLM without proxkit.
WITHOUT_PROXKIT = """\
import importlib.metadata as metadata

_entry_points = metadata.entry_points


def entry_points(**params):
    found = _entry_points(**params)
    if params.get("group") == "vllm.logits_processors":
        return metadata.EntryPoints(e for e in found if not e.value.startswith("proxkit."))
    return found


metadata.entry_points = entry_points
"""


class VLLMServer:
    """`python -m vllm.entrypoints.openai.api_server` (what `vllm serve` runs) on one port."""

    def __init__(self, model: Path, folder: Path, with_proxkit: bool = True) -> None:
        self.model, self.folder = model, folder
        self.env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            "VLLM_CPU_OMP_THREADS_BIND": cores_text(sorted(os.sched_getaffinity(0))),
        }
        if not with_proxkit:
            (folder / "sitecustomize.py").write_text(WITHOUT_PROXKIT)
            self.env["PYTHONPATH"] = os.pathsep.join(
                [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]
            )
        (folder / "chat.jinja").write_text(CHAT_TEMPLATE)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.folder / "server.log"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                str(self.model),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dtype",
                "float32",
                "--enforce-eager",
                "--max-model-len",
                "4096",
                "--seed",
                "0",
                "--chat-template",
                str(self.folder / "chat.jinja"),
            ],
            env=self.env,
            cwd=self.folder,  # not a source checkout, whose stale *.egg-info would hide
            # proxkit's installed entry points
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its engine process goes with it when killed
        )
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited: {log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                import httpx

                if httpx.get(self.url.removesuffix("/v1") + "/health", timeout=5).is_success:
                    return
            except OSError:
                pass
            time.sleep(1)
        self.kill()
        raise RuntimeError(f"vllm serve did not start in 900 s: {log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(vllm_refiner, tmp_path_factory):
    served = VLLMServer(vllm_refiner, tmp_path_factory.mktemp("server"))
    served.start()
    yield served
    served.kill()


@pytest.fixture(scope="module")
def plain_server(vllm_refiner, tmp_path_factory):
    served = VLLMServer(vllm_refiner, tmp_path_factory.mktemp("plain_server"), with_proxkit=False)
    served.start()
    yield served
    served.kill()


def documents() -> dict[str, str]:
    """Prose (kept) and prose with spam lines (dropped by the doc stage, and given
    remove_lines by the chunk stage)."""
    return {str(i): text for i, (text, _) in enumerate(make_documents(10, 3))}


def refine(folder: Path, model: Path, docs: dict[str, str], **overrides) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs.items()))
    config = RefineConfig(
        inputs=(str(source),),
        output=str(folder / "out"),
        doc_programmer=str(model),
        chunk_programmer=str(model),
        output_format="jsonl",
        workers=1,
        kv_cache_gib=1,
        doc_keep_threshold=0.0,  # every document goes on to the chunk stage
        **overrides,
    )
    run(config, progress=False)
    return [json.loads(line) for line in (folder / "out" / "part-00000-00000.jsonl").open()]


def programs(records: list[dict]) -> list[tuple]:
    return [
        (r["id"], r["text"], r["metadata"].get("doc_program"), r["metadata"].get("chunk_program"))
        for r in records
    ]


def keep_scores(records: list[dict]) -> list[float]:
    return [r["metadata"]["prox"]["doc_info"]["keep_score"] for r in records]


@pytest.fixture(scope="module")
def reference(vllm_refiner, tmp_path_factory) -> list[dict]:
    """Both stages through the transformers backend."""
    return refine(
        tmp_path_factory.mktemp("transformers"), vllm_refiner, documents(), backend="transformers"
    )


def test_served_programs_equal_the_transformers_and_offline_vllm_backends(
    server, vllm_refiner, reference, tmp_path
):
    served = refine(
        tmp_path / "served", vllm_refiner, documents(), backend="openai", api_base=server.url
    )
    assert {score < 0.5 for score in keep_scores(reference)} == {True, False}
    assert any(p[3] != "keep_doc()" for p in programs(reference))  # real chunk programs
    assert programs(served) == programs(reference)
    assert keep_scores(served) == pytest.approx(keep_scores(reference), abs=1e-4)
    offline = refine(tmp_path / "offline", vllm_refiner, documents(), backend="vllm")
    assert programs(served) == programs(offline)
    assert keep_scores(served) == pytest.approx(keep_scores(offline), abs=1e-4)


def test_the_chat_api_writes_the_same_programs(server, vllm_refiner, reference, tmp_path):
    """The server templates the chat messages itself (here in the Llama-2 format). Doc
    programs are generated (chat gives no exact scores): greedy writes the answer that the
    reference's keep score ranks first, and the kept documents get the same chunk programs."""
    chat = refine(
        tmp_path,
        vllm_refiner,
        documents(),
        backend="openai",
        api_base=server.url,
        api_mode="chat",
        doc_scoring="generate",
    )
    for record, expected, score in zip(chat, reference, keep_scores(reference)):
        kept = score >= 0.5
        assert record["metadata"]["doc_program"] == ("keep_doc()" if kept else "drop_doc()")
        if kept:
            assert programs([record]) == programs([expected])


def test_keep_scores_are_the_models_own_log_probabilities(server, vllm_refiner):
    """`logprob_token_ids` gives the exact next-token log-probabilities, not a top-k list:
    equal to the transformers backend's on the same weights, for likely and unlikely tokens."""
    backend = OpenAIBackend(
        str(vllm_refiner), OpenAISettings(api_base=server.url), grammars=True, token_logprobs=True
    )
    prompts = doc_prompts(list(documents().values()), backend.tokenizer)
    ids = backend.tokenizer.backend.token_to_id
    candidates = [ids("▁keep"), ids("▁drop"), ids("</s>"), 31999]  # and the vocabulary's last
    served = backend.next_token_logprobs(prompts, candidates)
    local = TransformersBackend(str(vllm_refiner)).next_token_logprobs(prompts, candidates)
    assert served == [pytest.approx(row, abs=1e-4) for row in local]


def stress(tokenizer) -> tuple[list, list[ProgramGrammar]]:
    """Chunk prompts the model never saw in training: chunks that start past line 0, where
    the tiny model writes line numbers it learned, out of the chunk's range."""
    texts = ["\n".join((GOOD + SPAM)[(i * 5 + j) % 9] for j in range(14)) for i in range(4)]
    chunks = [c for doc in Chunker(tokenizer.backend, 80)(texts) for c in doc]
    grammars = [
        ProgramGrammar("chunk", c.first_line, c.last_line, chunk_content(c.text)) for c in chunks
    ]
    return chunk_prompts(chunks, tokenizer), grammars


def outside(grammars: list[ProgramGrammar], completions: list) -> int:
    """How many completions the exact automaton refuses."""
    count = 0
    for grammar, completion in zip(grammars, completions):
        assert isinstance(completion, Completion), completion
        state = grammar.feed(grammar.start(), completion.text)
        count += state is None or not (completion.hit_limit or grammar.accepts(state))
    return count


@pytest.mark.parametrize("which", ["server", "plain_server"])
def test_the_grammar_holds_where_the_model_alone_breaks_it(which, vllm_refiner, request):
    """Through proxkit's processor (`vllm_xargs`) and through vLLM's structured outputs: no
    program outside the grammar, and the same programs as the transformers backend."""
    served = request.getfixturevalue(which)
    backend = OpenAIBackend(str(vllm_refiner), OpenAISettings(api_base=served.url), grammars=True)
    assert backend.stats()["grammar"] == (
        "vllm_xargs" if which == "server" else "structured_outputs"
    )
    prompts, grammars = stress(backend.tokenizer)
    assert outside(grammars, backend.generate(prompts, 64)) >= len(prompts) // 4
    constrained = backend.generate(prompts, 64, grammars)
    assert outside(grammars, constrained) == 0
    assert backend.stats()["outside_grammar"] == 0
    local = TransformersBackend(str(vllm_refiner)).generate(prompts, 64, grammars)
    assert [c.text.strip() for c in constrained] == [c.text.strip() for c in local]


def test_concurrent_requests_come_back_to_their_own_prompts(server, vllm_refiner):
    """32 requests at once (each prompt three times) answer as one at a time do."""
    answers = {}
    for concurrency in (1, 32):
        backend = OpenAIBackend(
            str(vllm_refiner), OpenAISettings(api_base=server.url, max_concurrency=concurrency)
        )
        prompts, _ = stress(backend.tokenizer)
        answers[concurrency] = [c.text for c in backend.generate(prompts * 3, 64)]
    assert answers[32] == answers[1]
    assert answers[1][: len(prompts)] * 3 == answers[1]


def test_a_server_killed_mid_run_stops_the_run_which_resumes_to_the_same_bytes(
    plain_server, vllm_refiner, tmp_path
):
    """`prox refine --backend openai` as a user runs it: the server is killed once a unit is
    done; the run stops in one line, the server comes back on its port, the same command
    finishes the run, and its output equals a run's that was never stopped. (Last in this
    module: it restarts the server.)"""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pairs = make_documents(24, 7)
    for part in range(4):
        lines = [
            json.dumps({"id": f"{part}.{i}", "text": text})
            for i, (text, _) in enumerate(pairs[part * 6 : part * 6 + 6])
        ]
        (corpus / f"part{part}.jsonl").write_text("\n".join(lines) + "\n")

    def command(output: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "proxkit.cli",
            "refine",
            str(corpus),
            "-o",
            str(output),
            "--doc-programmer",
            str(vllm_refiner),
            "--chunk-programmer",
            str(vllm_refiner),
            "--backend",
            "openai",
            "--api-base",
            plain_server.url,
            "--batch-size",
            "2",
            "--max-retries",
            "2",
            "-q",
        ]

    whole = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    stopped = subprocess.Popen(command(tmp_path / "out"), stderr=subprocess.PIPE, text=True)
    done = tmp_path / "out" / "_prox" / "done"
    while not (done.is_dir() and any(done.iterdir())) and stopped.poll() is None:
        time.sleep(0.05)
    plain_server.kill()
    _, stderr = stopped.communicate(timeout=300)
    assert stopped.returncode == 1, stderr
    [line] = stderr.strip().splitlines()
    assert "does not answer" in line and "run the same command to resume" in line
    assert 1 <= len(list(done.iterdir())) < 4
    plain_server.start()
    resumed = subprocess.run(command(tmp_path / "out"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    written = sorted(p.name for p in (tmp_path / "whole").glob("part-*"))
    assert written and written == sorted(p.name for p in (tmp_path / "out").glob("part-*"))
    for name in written:
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
