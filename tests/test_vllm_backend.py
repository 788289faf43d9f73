"""The vLLM backend on a real GPU: skipped cleanly where there is no CUDA device or no vLLM."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU", allow_module_level=True)

from proxkit.io.readers import Document  # noqa: E402
from proxkit.programmers.hf import TransformersBackend  # noqa: E402
from proxkit.programmers.lm import DocScoring, LMProgrammer  # noqa: E402
from proxkit.programmers.vllm import VLLMBackend  # noqa: E402

from tiny_model import build_tiny_model, make_documents  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def model(tmp_path_factory, llama2_dir):
    return build_tiny_model(tmp_path_factory.mktemp("vllm_model"), llama2_dir, steps=120)


def test_vllm_writes_the_same_programs_as_transformers(model):
    docs = [Document(str(i), t, {}, "mem", i) for i, (t, _) in enumerate(make_documents(16, 3))]
    vllm = LMProgrammer(VLLMBackend(str(model), dtype="float32"))
    reference = LMProgrammer(TransformersBackend(str(model)))
    assert [w.program for w in vllm.write("doc", docs)] == [
        w.program for w in reference.write("doc", docs)
    ]
    generated = LMProgrammer(vllm.backend, DocScoring("generate")).write("doc", docs)
    assert [w.program for w in generated] == [w.program for w in vllm.write("doc", docs)]
