"""benchmarks/p5_onnx.py, the prepared CPU serving benchmark (onnxruntime, fp32 and int8), in its smoke mode on the
tiny config, so that it cannot rot between the runs on an idle machine.

The smoke run uses the TorchScript exporter: torch's dynamo exporter takes 5-8 s per tiny model here, which would
make this a 30-second test; the dynamo path of `export_onnx` is tested in tests/test_export.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["fp32 dense", "fp32 50%", "fp32 70%", "int8 dense", "int8 50%", "int8 70%"]
RATIOS = {
    "fp32 dense / fp32 50%": "fp32 compression", "fp32 dense / fp32 70%": "fp32 compression",
    "int8 dense / int8 50%": "int8 compression", "int8 dense / int8 70%": "int8 compression",
    "fp32 dense / int8 50%": "combined: int8 compressed vs fp32 dense",
    "fp32 dense / int8 70%": "combined: int8 compressed vs fp32 dense",
    "fp32 dense / int8 dense": "quantization alone", "fp32 50% / int8 50%": "quantization alone",
    "fp32 70% / int8 70%": "quantization alone",
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run in a fresh process (1 thread), its temporary folder under a TMPDIR of its own."""
    tmp = tmp_path_factory.mktemp("p5_onnx")
    (tmp / "tmp").mkdir()
    out = tmp / "p5.json"
    env = dict(os.environ, TMPDIR=str(tmp / "tmp"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "benchmarks/p5_onnx.py", "--config", "tiny", "--repeats", "1", "--shapes", "2x16",
         "--threads", "1", "--exporter", "torchscript", "--min-timing-s", "0.005", "--profile", "2", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout, tmp


def test_smoke_run_writes_every_variant_and_ratio(smoke):
    payload, stdout, tmp = smoke
    assert payload["benchmark"].startswith("P5 CPU")
    machine = payload["machine"]
    assert machine["onnxruntime_version"] and isinstance(machine["cpu_int8_flags"], list)
    assert machine["torch_threads"] == 1 and machine["load_average_at_start"] is not None
    result = payload["results"]["tiny"]
    assert result["exporter"] == "torchscript" and result["session"]["intra_op_num_threads"] == 1
    assert result["session"]["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert result["load_average_before_timing"] is not None and result["load_average_at_end"] is not None

    assert list(result["files"]) == VARIANTS
    for name, file in result["files"].items():
        assert file["bytes"] > 0
        diff = max(file["max_abs_diff_vs_pytorch"].values())
        assert diff <= (1e-4 if name.startswith("fp32") else 0.5)
    assert all(result["files"][f"int8 {m}"]["bytes"] < result["files"][f"fp32 {m}"]["bytes"]
               for m in ("dense", "50%", "70%"))
    assert max(result["max_abs_logit_diff_sparse_vs_compressed_fp32"].values()) <= 1e-5
    ratios = result["encoder_flops_ratio_dense_over_compressed"]["384"]
    assert ratios["50%"] == pytest.approx(2.0, rel=0.02) and ratios["70%"] == pytest.approx(1 / 0.3, rel=0.02)

    block = result["latency"]["2x16"]
    assert block["repeats"] == 1 and not block["truncated_by_budget"]
    assert list(block["median_s"]) == VARIANTS and all(s > 0 for s in block["median_s"].values())
    assert len(block["foreign_load_cores"]) == 1
    assert {k: r["kind"] for k, r in block["ratios"].items()} == RATIOS
    for key, r in block["ratios"].items():
        assert r["ratio_of_medians"] > 0 and r["n"] == 1
        assert ("encoder_flops_ratio" in r) == r["kind"].endswith("compression")
        assert "meets_target" not in r  # the target applies at 32 x 384 only

    assert "speedup/FLOPs" in stdout and "fp32 dense / int8 70%" in stdout
    profile = result["profile"]  # --profile 2: time per operator type of every file at the first shape
    assert (profile["shape"], profile["runs"], list(profile["ms_per_run_by_op"])) == ("2x16", 2, VARIANTS)
    for name, by_op in profile["ms_per_run_by_op"].items():
        assert "MatMul" in "".join(by_op) and all(ms >= 0 for ms in by_op.values()), (name, by_op)
        assert list(by_op.values()) == sorted(by_op.values(), reverse=True)
    assert "ms per run by operator type" in stdout
    assert result["workdir"] is None and not list((tmp / "tmp").glob("p5_onnx_*"))  # the .onnx files are gone


def test_show_prints_the_tables_of_a_finished_run(smoke, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import p5_onnx

    payload, _, tmp = smoke
    assert p5_onnx.main(["--show", str(tmp / "p5.json")]) == 0
    shown = capsys.readouterr().out
    assert "int8 70%" in shown and "fp32 dense / int8 dense" in shown and "by operator type" in shown


def test_target_is_judged_on_fp32_at_32x384():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import p5_onnx

    seconds = {"fp32 dense": [2.0, 2.0], "fp32 50%": [1.0, 1.1], "int8 dense": [1.0, 1.0], "int8 50%": [0.5, 0.5]}
    block = {"seconds": seconds}
    ratios = p5_onnx.ratios(block, ["50%"], {"50%": 2.0}, (32, 384))
    fp32 = ratios["fp32 dense / fp32 50%"]
    assert fp32["speedup_over_flops_ratio"] == pytest.approx(2.0 / 1.05 / 2.0) and fp32["meets_target"] is True
    assert "meets_target" not in ratios["int8 dense / int8 50%"]
    assert ratios["fp32 dense / int8 50%"]["ratio_of_medians"] == pytest.approx(4.0)
    slow = p5_onnx.ratios({"seconds": dict(seconds, **{"fp32 50%": [1.2, 1.2]})}, ["50%"], {"50%": 2.0}, (32, 384))
    assert slow["fp32 dense / fp32 50%"]["meets_target"] is False  # 1.67 / 2.0 < 0.9
