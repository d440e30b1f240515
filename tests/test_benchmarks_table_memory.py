"""benchmarks/table_memory.py on the tiny random BERT in PyTorch, so that it cannot rot between runs on an idle
machine: a table timed whole and one split into groups by a memory reserve that leaves no room, both predicting every
layout, and the summary's errors against the measured speedups. Nothing timed is asserted."""

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_a_whole_and_a_split_table_and_their_errors(tmp_path, capsys):
    import table_memory
    from oto_hf import latency

    common = ["tiny", "--runtime", "torch", "--shape", "2x8", "--patience", "0"]
    table_memory.main(["table", *common, "--reserve", "0", "--repeats", "1", "--out", str(tmp_path / "whole.json")])
    table_memory.main(["table", *common, "--reserve", "0.999", "--repeats", "1", "--out", str(tmp_path / "split.json")])
    table_memory.main(["measured", *common, "--out", str(tmp_path / "measured.json")])
    assert latency.MEMORY_RESERVE == 0.15  # the run's reserve was put back
    whole, split = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("whole", "split"))
    assert whole["groups"] == 1
    models = len(latency.count_grid(4, 9)) + len(latency.count_grid(24, 10)) - 1 + 1  # heads, widths > 0, full
    assert split["groups"] == models  # no room beside any model: each grid model in its own group
    assert split["command"].startswith("python benchmarks/table_memory.py table tiny")
    for result in (whole, split):
        assert set(result["predicted"]) == {"75%", "50%", "25%"} and result["peak_rss_gb"] > 0
        assert all(math.isfinite(v) and v >= 1 for v in result["predicted"].values())
    capsys.readouterr()
    table_memory.main(["summary", str(tmp_path / "whole.json"), str(tmp_path / "split.json"),
                       "--measured", str(tmp_path / "measured.json")])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and lines[2].startswith("| tiny | 0% | 1 | 1 |")
    assert lines[3].startswith(f"| tiny | 100% | {models} |")
    assert lines[4].startswith("| measured (`measure_speedup`) |") and lines[2].count("%)") == 3
