"""benchmarks/p6_speed.py, the P6 predictor benchmark, in its smoke mode (benchmarks/p6.yaml's `smoke:` block: the
tiny random BERT, torch, one shape), so that it cannot rot between the runs on an idle machine. Nothing timed is
asserted: only that every point is there, finite, laid out, and that the policy met its own prediction."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run into a temporary results folder, then a second `run` (every point has a result: nothing is
    measured again) and `summarize`; their outputs."""
    import p6_speed

    threads = torch.get_num_threads()
    folder = tmp_path_factory.mktemp("p6")
    try:
        assert p6_speed.main(["run", "--smoke", "--results", str(folder)]) == 0
        first = {p.name: p.stat().st_mtime_ns for p in (folder / "points").iterdir()}
        assert p6_speed.main(["run", "--smoke", "--results", str(folder)]) == 0
        again = {p.name: p.stat().st_mtime_ns for p in (folder / "points").iterdir()}
    finally:
        torch.set_num_threads(threads)  # the smoke block runs on one thread
    return p6_speed, folder, first, again


def test_every_point_is_measured_or_refused_as_unreachable(smoke):
    _, folder, _, _ = smoke
    settings = yaml.safe_load((ROOT / "benchmarks/p6.yaml").read_text())["smoke"]
    summary = json.loads((folder / "predictor.json").read_text())
    points = summary["points"]
    assert summary["missing"] == []
    assert [(p["model"], p["runtime"], p["shape"], p["allocation"], p["asked"]) for p in points] == [
        (m, r, s, a, float(x)) for m in settings["models"] for r in settings["runtimes"] for s in settings["shapes"]
        for a in ["latency"] for x in settings["asked"]]
    measured = [p for p in points if not p["unreachable"]]
    assert measured, "the smoke block's smallest asked speedup must be reachable on the tiny model"
    for p in points:
        assert p["table"]["build_seconds"] > 0 and p["table"]["largest_speedup"] > 1
        if p["unreachable"]:
            assert p["asked"] > p["largest_reachable"] and "predicted" not in p and "measured" not in p
            continue
        assert math.isfinite(p["predicted"]) and math.isfinite(p["measured"]) and p["measured"] > 0
        assert p["error"] == pytest.approx(abs(p["predicted"] - p["measured"]) / p["measured"])
        # The layout: 2 layers, heads and FFN width within the tiny config's, the emptied blocks the zero ones.
        assert len(p["heads_per_layer"]) == len(p["ffn_width_per_layer"]) == 2
        assert all(0 <= h <= 4 for h in p["heads_per_layer"]) and all(0 <= w <= 128 for w in p["ffn_width_per_layer"])
        assert p["emptied_attention"] == [i for i, h in enumerate(p["heads_per_layer"]) if h == 0]
        assert p["emptied_ffn"] == [i for i, w in enumerate(p["ffn_width_per_layer"]) if w == 0]
        assert 0 < p["encoder_flops_kept"] < 1
        # The policy meets its predicted target, and the compressed model's sizes are what it chose.
        assert p["predicted"] >= p["asked"] - 1e-9
        assert p["predicted"] == pytest.approx(p["policy_predicted_speedup"], rel=1e-9)
        load = p["measurement"]
        assert load["repeats"] == settings["measure"]["repeats"] and load["busy"] in (True, False, None)


def test_the_table_is_measured_once_then_read_from_its_cache(smoke):
    _, folder, _, _ = smoke
    tables = list((folder / "tables").glob("*.json"))
    assert len(tables) == 1
    summary = json.loads((folder / "predictor.json").read_text())
    assert list(summary["tables"]) == ["tiny torch 8x64"] and summary["tables"]["tiny torch 8x64"]["cached"] is False


def test_a_second_run_skips_the_points_that_have_a_result(smoke):
    _, _, first, again = smoke
    assert first == again


def test_summarize_prints_the_docs_table(smoke, capsys):
    p6_speed, folder, _, _ = smoke
    assert p6_speed.main(["summarize", "--smoke", "--results", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| model | runtime | batch × tokens | allocation | asked | predicted | measured |")
    assert "| tiny | torch | 8 × 64 | latency | 1.3× |" in out and "unreachable (largest" in out
    assert "table built in" in out and "Measured on:" in out


def test_a_point_outside_the_yaml_is_refused(smoke):
    p6_speed, folder, _, _ = smoke
    with pytest.raises(SystemExit, match="not among the yaml's"):
        p6_speed.main(["run", "--smoke", "--results", str(folder), "--shapes", "1x128"])


def test_the_gpu_block_is_cuda_and_is_refused_at_once_without_a_gpu(tmp_path):
    import p6_speed

    settings = p6_speed.load_settings(block="gpu")
    assert settings["runtimes"] == ["cuda"] and list(settings["models"]) == ["minilm"]
    assert settings["results"] == "benchmarks/results/p6_gpu"
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the gpu block would run")
    with pytest.raises(SystemExit, match="'cuda' needs a CUDA GPU"):
        p6_speed.main(["run", "--gpu", "--results", str(tmp_path)])
    assert not any(tmp_path.iterdir())  # refused before any work


def test_the_stream_block_cuts_the_hidden_width_and_predicts_at_the_kept_width(tmp_path):
    """The yaml's `stream:` block (the residual stream's channels among the groups) on the smoke block's tiny model:
    the table is timed at a narrower stream width too, the layout cuts the stream, and the prediction at the kept
    width is the policy's own."""
    import p6_speed

    stream = p6_speed.load_settings(block="stream")
    assert stream["prune_hidden"] and stream["table"]["stream_points"] > 1 and "latency" not in stream["allocations"]
    settings = p6_speed.load_settings(smoke=True)
    settings.update(prune_hidden=True, allocations=stream["allocations"], asked=[1.3],
                    table={**settings["table"], "head_points": 3, "width_points": 3, "stream_points": 2})
    threads = torch.get_num_threads()
    try:
        p6_speed.run(settings, tmp_path, None, None, None, None, None, False, False, [])
    finally:
        torch.set_num_threads(threads)
    [point] = json.loads((tmp_path / "predictor.json").read_text())["points"]
    assert point["prune_hidden"] and point["table"]["stream_grid"] == [32]  # the tiny model's stream: 64 channels
    assert 0 < point["hidden_size"] < 64
    assert point["predicted"] >= 1.3 - 1e-9
    assert point["predicted"] == pytest.approx(point["policy_predicted_speedup"], rel=1e-9)
    assert f"stream {point['hidden_size']}" in p6_speed.layout_summary(point)


def test_the_latency_allocation_with_the_hidden_width_is_refused(tmp_path):
    import p6_speed

    text = (ROOT / "benchmarks/p6.yaml").read_text().replace("allocations: [uniform]", "allocations: [latency]")
    (tmp_path / "p6.yaml").write_text(text)
    with pytest.raises(SystemExit, match="(?s)allocations: .*'latency' does not plan the hidden width"):
        p6_speed.load_settings(tmp_path / "p6.yaml", block="stream")
