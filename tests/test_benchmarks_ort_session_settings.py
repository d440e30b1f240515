"""benchmarks/ort_session_settings.py (the evidence of docs/deployment.md's "Session settings") in its smoke mode on
the tiny config, so that it cannot rot between real runs. The TorchScript exporter keeps it to seconds (the dynamo
path is tested in tests/test_export.py). No timed assertions: only what the result file must hold."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from oto_hf import export  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_times_every_file_under_every_settings(tmp_path):
    out = tmp_path / "settings.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/ort_session_settings.py", "--config", "tiny", "--shapes", "2x16", "1x8",
         "--repeats", "2", "--threads", "1", "--exporter", "torchscript", "--min-timing-s", "0.005", "--patience", "0",
         "--out", str(out)],
        cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["machine"]["onnxruntime_version"] and payload["machine"]["torch_threads"] == 1
    assert list(payload["session_settings"]) == list(export.SESSION_SETTINGS)
    result = payload["results"]["tiny"]
    assert result["threads"] == 1 and list(result["zeroed"]) == ["70%"]
    for label in ("dense", "70%"):
        diffs = result["max_abs_diff_vs_pytorch"][label]
        assert set(diffs) == set(export.SESSION_SETTINGS) and all(max(d.values()) <= 1e-4 for d in diffs.values())
    assert list(result["shapes"]) == ["2x16", "1x8"]
    for key, block in result["shapes"].items():
        assert block["repeats"] == 2 and len(block["foreign_load_cores"]) == 2 and "busy" in block
        assert len(block["seconds"]) == 2 * len(export.SESSION_SETTINGS)
        assert list(block["files"]) == ["dense", "70%"]
        for file in block["files"].values():
            medians = file["median_ms"]
            assert set(medians) == set(export.SESSION_SETTINGS) and all(v > 0 for v in medians.values())
            assert file["fastest"] == min(file["median_ms"], key=file["median_ms"].get)
            ratio = file["all_fusions_over_others"]["no_skip_layernorm_fusion"]
            assert ratio["n"] == 2 and ratio["paired_min"] <= ratio["paired_median"] <= ratio["paired_max"]
            pick = file["fastest_session_settings"]
            assert pick["settings"] in export.SESSION_SETTINGS and f"{pick['batch_size']}x{pick['seq_len']}" == key
    assert "fastest_session_settings picks" in proc.stdout and f"wrote {out}" in proc.stdout


def test_a_bad_shape_is_refused_before_any_work(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ort_session_settings

    with pytest.raises(SystemExit) as stop:  # argparse's refusal: status 2, the reason on stderr
        ort_session_settings.main(["--config", "tiny", "--shapes", "0x16", "--out", "/nonexistent/x.json"])
    assert stop.value.code == 2 and "--shapes takes BATCHxTOKENS" in capsys.readouterr().err
