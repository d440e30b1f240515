"""oto_hf.timing: the interleaved, load-aware timer every speed figure goes through. Real timings (sleeps and busy
loops), no mocks; bounds are loose, for a noisy shared CI machine: structure and coarse ratios only."""

import multiprocessing
import os
import subprocess
import sys
import time

import pytest
import torch
from transformers import BertConfig, BertModel

from oto_hf import report, timing

PROC_STAT = os.path.exists("/proc/stat")


def test_order_rotates_every_repeat_and_warm_up_is_not_kept():
    calls = []
    variants = {name: (lambda name=name: calls.append(name)) for name in "ABC"}
    result = timing.interleaved(variants, repeats=4, warmup=2)
    assert result.orders == [("A", "B", "C"), ("B", "C", "A"), ("C", "A", "B"), ("A", "B", "C")]
    assert len(calls) == 3 * (2 + 4)  # warm-up rounds run every variant too
    assert calls[6:] == [name for order in result.orders for name in order]
    assert {name: len(t) for name, t in result.seconds.items()} == {"A": 4, "B": 4, "C": 4}
    assert result.repeats == 4 and not result.truncated_by_deadline and result.inner == 1


def test_a_variant_twice_as_slow_gives_a_ratio_near_two():
    result = timing.interleaved({"slow": lambda: time.sleep(0.02), "fast": lambda: time.sleep(0.01)}, repeats=5)
    ratio = result.ratio("slow", "fast")
    assert 1.5 < ratio["paired_median"] < 2.6 and 1.5 < ratio["ratio_of_medians"] < 2.6 and ratio["n"] == 5
    assert ratio["paired_min"] <= ratio["paired_q1"] <= ratio["paired_median"] <= ratio["paired_q3"] <= ratio["paired_max"]
    assert result.medians()["slow"] == pytest.approx(0.02, rel=1.0)  # a sleep never returns early


def test_inner_is_calibrated_on_the_fastest_variant_and_timings_are_per_call():
    result = timing.interleaved({"slow": lambda: time.sleep(0.01), "fast": lambda: time.sleep(0.002)}, repeats=2,
                                min_timing_s=0.02, max_inner=50)
    assert 3 <= result.inner <= 10  # about 0.02 / 0.002 calls (sleeps overshoot, so a few fewer)
    assert result.median("fast") < 0.008 and result.median("slow") >= 0.01  # seconds per call, not per timing
    capped = timing.interleaved({"a": lambda: None}, repeats=1, min_timing_s=1.0, max_inner=7)
    assert capped.inner == 7


def test_deadline_stops_adding_repeats_and_says_so():
    start = time.perf_counter()
    result = timing.interleaved({"a": lambda: time.sleep(0.05), "b": lambda: time.sleep(0.05)}, repeats=50,
                                deadline=start + 0.3)
    assert result.truncated_by_deadline and 1 <= result.repeats < 10 and result.requested_repeats == 50
    assert time.perf_counter() - start < 2.0
    past = timing.interleaved({"a": lambda: None}, repeats=3, deadline=start)  # the first repeat always runs
    assert past.repeats == 1 and past.truncated_by_deadline
    floor = timing.interleaved({"a": lambda: None}, repeats=5, deadline=start, min_repeats=3)  # and min_repeats
    assert floor.repeats == 3 and floor.truncated_by_deadline
    few = timing.interleaved({"a": lambda: None}, repeats=2, deadline=start, min_repeats=3)  # never more than asked
    assert few.repeats == 2 and not few.truncated_by_deadline


def test_synchronize_brackets_every_timing():
    events = []
    timing.interleaved({"a": lambda: events.append("call")}, repeats=2, warmup=1, inner=3,
                       synchronize=lambda: events.append("sync"))
    assert events == ["sync", "call", "sync"] + ["sync", "call", "call", "call", "sync"] * 2


def _burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.skipif(not PROC_STAT, reason="foreign load is read from /proc/stat")
def test_foreign_load_is_recorded_and_a_busy_machine_says_so():
    quiet = timing.interleaved({"a": lambda: time.sleep(0.05)}, repeats=2, quiet_threshold=10.0)
    record = quiet.load()
    assert len(record["foreign_load_cores"]) == 2 and all(x >= 0 for x in record["foreign_load_cores"])
    assert record["busy"] is False and "quiet machine" in timing.describe_load(record)
    # Another process spinning on a core is someone else's load: at least most of a core shows up.
    burner = multiprocessing.get_context("spawn").Process(target=_burn, args=(5.0,))
    burner.start()
    try:
        time.sleep(0.5)  # let it start spinning
        busy = timing.interleaved({"a": lambda: time.sleep(0.2)}, repeats=3, quiet_threshold=0.5)
    finally:
        burner.terminate()
        burner.join()
    record = busy.load()
    assert record["max_foreign_load_cores"] > 0.5 and record["busy"] is True
    assert "busy machine" in timing.describe_load(record)


@pytest.mark.skipif(not PROC_STAT, reason="foreign load is read from /proc/stat")
def test_with_patience_busy_repeats_are_redone_until_patience_is_spent():
    # Every round is busy: the variant runs a child process that spins for 0.3 s (a child's CPU time is not this
    # process's own). While patience lasts a busy repeat is redone and kept aside; then repeats are taken as they come.
    spin = "import time\nend = time.perf_counter() + 0.3\nwhile time.perf_counter() < end:\n    pass"
    result = timing.interleaved({"a": lambda: subprocess.run([sys.executable, "-c", spin], check=True)}, repeats=2,
                                warmup=0, quiet_threshold=0.5, patience_s=3.0)
    assert result.repeats == 2 and len(result.seconds["a"]) == 2 and result.load()["busy"] is True
    assert all(d["foreign_load_cores"] >= 0.5 for d in result.discarded)
    redone_s = sum(d["seconds"]["a"] for d in result.discarded)
    assert result.waited_s <= 3.0 + 1e-6  # waiting never outlasts the patience
    assert result.discarded or result.waited_s > 2.0  # a quiet start leaves patience to redo a busy repeat
    assert result.waited_s + redone_s < 3.0 + 1.0  # and redoing stops once it is spent


def test_bad_input_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match="at least one variant"):
        timing.interleaved({}, repeats=1)
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        timing.interleaved({"a": lambda: None}, repeats=0)



def test_parse_shape_reads_batch_x_tokens_and_refuses_anything_else():
    assert timing.parse_shape("1x128") == (1, 128) and timing.parse_shape(" 32 X 384 ") == (32, 384)
    for bad in ("1x", "0x128", "1x0", "-1x128", "abc", "1x2x3", "", "x"):
        with pytest.raises(ValueError) as error:
            timing.parse_shape(bad, "--tune-session")
        assert str(error.value) == ("--tune-session takes BATCHxTOKENS, two positive whole numbers such as 1x128, "
                                    f"got {bad!r}")


def test_latency_ratio_keeps_its_keys_and_adds_the_load():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)
    wide, narrow = BertModel(config), BertModel(BertConfig(**{**config.to_dict(), "num_hidden_layers": 1}))
    result = report.latency_ratio(wide, narrow, batch_size=2, seq_len=16, repeats=3, vocab_size=100)
    assert report.latency_ratio is timing.latency_ratio
    assert {"batch_size", "seq_len", "repeats", "threads", "dense_median_s", "compressed_median_s", "speedup",
            "foreign_load_cores", "max_foreign_load_cores", "busy", "busy_threshold_cores"} <= set(result)
    assert result["speedup"] == pytest.approx(result["dense_median_s"] / result["compressed_median_s"])
    assert len(result["foreign_load_cores"]) == 3 and result["repeats"] == 3
    assert timing.describe_load({"speedup": 1.0}) == ""  # an older report without the load record
