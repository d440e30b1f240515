"""benchmarks/hidden_norm_cost.py (the evidence for hidden-width pruning's LayerNorm decision) in its smoke mode on
the tiny config, and its alternative norm against its definition. No timed assertions: only what the result file
must hold."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")

from conftest import assert_exact  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_the_alternative_norm_is_the_full_width_norm_over_a_zero_padded_stream():
    from hidden_norm_cost import OriginalWidthLayerNorm

    torch.manual_seed(0)
    full = nn.LayerNorm(16)
    with torch.no_grad():
        full.weight.normal_()
        full.bias.normal_()
    kept = torch.tensor([0, 2, 3, 7, 8, 11, 15])
    narrow = nn.LayerNorm(len(kept))
    with torch.no_grad():
        narrow.weight.copy_(full.weight[kept])
        narrow.bias.copy_(full.bias[kept])
    x = torch.randn(2, 5, len(kept)) * 3 + 1
    padded = torch.zeros(2, 5, 16)
    padded[..., kept] = x
    assert_exact(OriginalWidthLayerNorm(narrow, 16)(x), full(padded)[..., kept])


def test_smoke_run_times_both_norms_in_both_runtimes_and_the_training_step(tmp_path):
    out = tmp_path / "hidden_norm.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/hidden_norm_cost.py", "--config", "tiny", "--shapes", "2x16", "--repeats", "2",
         "--train-shape", "2x16", "--threads", "1", "--exporter", "torchscript", "--min-timing-s", "0.005",
         "--patience", "0", "--out", str(out)],
        cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())["results"]["tiny"]
    assert result["compressed"]["stream_original"] == 64 > result["compressed"]["stream_kept"] > 0
    block = result["serving"]["2x16"]
    assert set(block["median_ms"]) == {f"{rt} {label}" for rt in ("torch", "onnxruntime")
                                       for label in ("stock", "original-width statistics")}
    assert set(block["alternative_over_stock"]) == {"torch", "onnxruntime"} and block["repeats"] == 2
    assert result["training"]["repeats"] == 2 and "paired_median" in result["training"]["live_over_stock"]
