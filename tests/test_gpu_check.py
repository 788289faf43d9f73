"""The GPU check runs on a lent machine as it is: what it carries fits the run tool's limit,
proxkit starts without zstandard, its figures are computed as stated, and the whole check runs
end to end on a CPU with tiny sizes, writing its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "bench" / "gpu"))

from bench_gpu_refine import covered, datasheet_peak, device_intervals
from prepare import TooLarge, folder_bytes, prepare


def test_the_carry_holds_the_tokenizer_within_the_limit(llama2_dir, tmp_path):
    size = prepare(tmp_path / "carry", llama2_dir, wheels=[])
    assert (tmp_path / "carry" / "llama2" / "tokenizer.json").is_file()
    assert size == folder_bytes(tmp_path / "carry") < 64 * 2**20


def test_a_carry_over_the_limit_is_refused_and_left_empty(llama2_dir, tmp_path):
    with pytest.raises(TooLarge, match="over the 0 MiB limit"):
        prepare(tmp_path / "carry", llama2_dir, wheels=[], limit=1000)
    assert not (tmp_path / "carry").exists()


def test_proxkit_and_its_help_start_without_zstandard(tmp_path):
    blocked = "import sys; sys.modules['zstandard'] = None; "
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    help_run = subprocess.run(
        [sys.executable, "-c", blocked + "sys.argv = ['prox', '--help']; "
         "from proxkit.cli import main; main()"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert help_run.returncode == 0, help_run.stderr
    assert "refine" in help_run.stdout
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "a", "text": "Some text."}) + "\n")
    refine = subprocess.run(
        [sys.executable, "-c", blocked + "sys.argv = ['prox', 'refine', 'in.jsonl', '-o', "
         "'out.jsonl', '--doc-programmer', 'rules', '--chunk-programmer', 'rules']; "
         "from proxkit.cli import main; main()"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert refine.returncode == 0, refine.stderr
    assert json.loads((tmp_path / "out.jsonl").read_text())["id"] == "a"


def test_datasheet_peaks_by_device_name_and_kernel_time_as_a_union():
    assert datasheet_peak("NVIDIA H200") == 989e12
    assert datasheet_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert datasheet_peak("NVIDIA H100 PCIe") == 756e12
    assert datasheet_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert datasheet_peak("Some Other GPU") is None
    # overlapping kernels (two streams) count once, gaps not at all
    assert covered([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17
    assert covered([]) == 0


def test_the_kernel_trace_is_read_from_this_torchs_profiler():
    torch = pytest.importorskip("torch")
    from torch.profiler import ProfilerActivity, profile

    profiler = profile(activities=[ProfilerActivity.CPU])
    profiler.start()
    torch.randn(64, 64) @ torch.randn(64, 64)
    profiler.stop()
    assert device_intervals(profiler) == []  # CPU work only: no CUDA interval


@pytest.mark.slow
def test_the_check_runs_end_to_end_on_a_cpu_and_writes_its_json(llama2_dir, tmp_path):
    pytest.importorskip("torch")
    carry = REPO / "bench" / "gpu" / "carry"
    if not (carry / "llama2" / "tokenizer.json").is_file():
        prepare(carry, llama2_dir, wheels=[])
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    arguments = [
        "--device", "cpu", "--shape", "tiny", "--raw-tokens", "6000", "--train-steps", "2",
        "--train-batch-size", "2", "--max-chunk-tokens", "256", "--max-doc-tokens", "512",
        "--warmup-docs", "2", "--batch-size", "8", "--runs", "transformers", "unconstrained",
        "--reference-rows", "4", "--reference-batch", "2", "--chunk-max-new-tokens", "32",
        "--work", str(tmp_path / "work"),
    ]  # fmt: skip
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu" / "check.sh"), *arguments],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert results["phases_done"][-1] == "comparison"
    decoded = results["decode_loop_vs_generate"]  # fp32 on a CPU: token for token
    assert decoded["prompts"] == 4 and decoded["dtype"] == "float32"
    assert decoded["without_grammar"]["identical_outputs"] == 1.0
    assert decoded["with_grammar"]["identical_outputs"] == 1.0
    assert set(results["identical_programs"]) == {"transformers vs unconstrained"}
    run = results["runs"]["transformers"]
    assert results["runs"]["unconstrained"]["steps_corrected_by_grammar"] == 0
    assert run["documents"] == results["measured_documents"] > 0
    assert run["failures"] == run["rejected"] == run["oom_splits"] == 0
    assert run["raw_tokens_per_second"] > 0 and run["mfu_vs_datasheet_peak"] is None
    assert run["kernel_time"] == {"error": "no CUDA device"}
    assert (run["batch_tokens"], run["max_batch_size"]) == (16_384, 64)
    assert (tmp_path / "out" / "gpu_check.log").is_file()
