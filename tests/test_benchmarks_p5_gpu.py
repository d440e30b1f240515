"""benchmarks/p5_gpu.py, the prepared GPU benchmark, in its CPU smoke mode on the tiny config (so that it cannot rot
between GPU runs), and its refusal to run without CUDA."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture
def p5_gpu():
    import p5_gpu

    threads = torch.get_num_threads()
    yield p5_gpu
    torch.set_num_threads(threads)  # the smoke mode runs on one thread


def test_smoke_mode_on_the_cpu(p5_gpu, tmp_path, capsys):
    out = tmp_path / "p5.json"
    assert p5_gpu.main(["--device", "cpu", "--repeats", "1", "--config", "tiny", "--shapes", "2x16", "1x8",
                        "--warmup", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())["results"]["tiny"]
    assert result["attention"] == "sdpa"
    assert set(result["latency"]) == {"fp16 2x16", "fp16 1x8", "bf16 2x16", "bf16 1x8"}
    for block in result["latency"].values():
        assert set(block["median_s"]) == {"dense", "50%", "70%"} and block["repeats"] == 1
    # The uniform layout removes the fraction of every layer's FLOPs at 384 tokens (to within a neuron).
    ratios = result["encoder_flops_ratio_dense_over_compressed"]["384"]
    assert ratios["50%"] == pytest.approx(2.0, rel=0.02) and ratios["70%"] == pytest.approx(1 / 0.3, rel=0.02)
    assert max(result["max_abs_logit_diff_sparse_vs_compressed_fp32"].values()) <= 1e-5
    assert "speedup/FLOPs" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_refuses_without_cuda(p5_gpu, tmp_path, capsys):
    assert p5_gpu.main(["--config", "tiny", "--out", str(tmp_path / "p5.json")]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "p5.json").exists()
