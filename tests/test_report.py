"""The job report's markdown: what it says of a speed measured on a busy machine."""

import json

from conftest import REPO_ROOT
from oto_hf.report import render_markdown

# A real SQuAD job report (P1 on a GPU; it measured no latency): the latency entries below are added to it.
REPORT = REPO_ROOT / "benchmarks" / "results" / "p1_full_lr0.0002" / "device_logs" / "oto50zerouniform_report.json"


def latency(busy):
    return {"batch_size": 8, "seq_len": 128, "repeats": 5, "threads": 2, "dense_median_s": 0.2,
            "compressed_median_s": 0.185, "speedup": 1.08, "encoder_flops_ratio": 2.0, "busy": busy,
            "max_foreign_load_cores": 1.9 if busy else 0.02, "foreign_load_cores": [1.9 if busy else 0.02],
            "busy_threshold_cores": 0.25}


def test_the_speed_line_says_whether_the_machine_was_busy():
    report = json.loads(REPORT.read_text())
    report["latency"] = latency(busy=True)
    text = render_markdown(report)
    assert "**1.08×**" in text and "Measured on a busy machine: other processes used up to 1.90 cores" in text
    report["latency"] = latency(busy=False)
    assert "Measured on a quiet machine" in render_markdown(report)
    report["latency"] = {k: v for k, v in latency(False).items() if "busy" not in k and "load" not in k}
    assert "busy" not in render_markdown(report) and "quiet" not in render_markdown(report)  # an older report
