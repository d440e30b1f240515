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
        assert len(block["foreign_load_cores"]) == 1 and block["inner"] >= 1 and not block["truncated_by_budget"]
        assert block["speedup"]["50%"]["ratio_of_medians"] > 0 and block["speedup"]["70%"]["encoder_flops_ratio"] > 2
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


def test_the_benchmark_models_share_of_flops_is_removed_from_every_layer(p5_gpu):
    """common.zero_uniform, the one layout P3, P5 and export_attention use: at 50% of a layer with an even number of
    heads and neurons, exactly half of each, in every layer; a seeded random choice is reproducible."""
    import common
    import oto_hf
    from oto_hf.groups import HEAD, NEURON

    def zeroed_per_layer(selection):
        model, _ = common.build_model("tiny", seed=0)
        common.zero_uniform(model, 0.5, selection, seed=3)
        groups = oto_hf.zero_invariant_groups(model)
        zero = groups.is_zero()
        return [(int((zero & (groups.layers == layer) & (groups.kinds == kind)).sum()) for kind in (HEAD, NEURON))
                for layer in range(groups.num_layers)], zero

    counts, by_norm = zeroed_per_layer("norm")
    assert [tuple(c) for c in counts] == [(2, 64), (2, 64)]  # tiny: 4 heads and 128 neurons per layer
    _, random_a = zeroed_per_layer("random")
    _, random_b = zeroed_per_layer("random")
    assert bool((random_a == random_b).all()) and not bool((random_a == by_norm).all())
    with pytest.raises(ValueError, match="selection must be"):
        common.zero_uniform(common.build_model("tiny", seed=0)[0], 0.5, "largest")
