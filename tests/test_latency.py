"""oto_hf.latency: the speed target's shape and runtime, the latency table's prediction (on hand-made tables, no
timing), its measurement and cache (on a tiny BERT, asserting what was measured and cached, never how fast), and the
measured speedup. No timed assertion: speed figures live in the benchmarks."""

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertForQuestionAnswering, BertForSequenceClassification

from conftest import tiny_bert_config
from oto_hf import compress, latency, zero_invariant_groups
from oto_hf.latency import LatencySpec, LatencyTable, count_grid, runtime_problem
from oto_hf.timing import Timings


# ---- what a speed target holds for ----


def test_runtime_problem():
    assert runtime_problem("torch") is None
    assert "must be one of ('torch', 'onnxruntime', 'cuda'), got 'tpu'" in runtime_problem("tpu")
    with pytest.raises(ValueError, match="--oto_latency_runtime must be one of"):
        LatencySpec.of("tpu", "1x8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_runtime_problem_cuda_without_a_gpu():
    assert "'cuda' needs a CUDA GPU" in runtime_problem("cuda")


def test_runtime_problem_onnxruntime_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    assert "pip install 'oto-hf[onnx]'" in runtime_problem("onnxruntime")


def test_latency_spec_of_an_option_pair():
    spec = LatencySpec.of("torch", "2 x 8", threads=3)
    assert (spec.runtime, spec.batch_size, spec.seq_len, spec.threads, spec.shape) == ("torch", 2, 8, 3, "2x8")
    assert LatencySpec.of("torch", "1x8").threads == torch.get_num_threads()
    assert spec.describe() == "torch, 2x8 (batch × tokens), 3 threads"
    assert LatencySpec.of("torch", "1x8", threads=1).describe().endswith("1 thread")


# ---- the grid ----


@pytest.mark.parametrize("full,points", [(12, 9), (1536, 10), (3072, 10), (24, 5), (7, 4), (100, 3)])
def test_count_grid_spans_zero_one_and_full(full, points):
    grid = count_grid(full, points)
    assert grid[:2] == [0, 1] and grid[-1] == full
    assert grid == sorted(set(grid))
    assert len(grid) <= max(points, 3)


@pytest.mark.parametrize("full,points", [(4, 9), (9, 9), (1, 5), (0, 3)])
def test_count_grid_of_a_small_full_size_is_every_count(full, points):
    assert count_grid(full, points) == list(range(full + 1))


# ---- the prediction, on hand-made tables ----


def hand_table(heads_seconds, width_seconds, full_seconds, num_layers=3, heads_grid=(0, 1, 2, 4),
               width_grid=(0, 1, 12, 24)):
    """A table as measured (whole-model seconds per grid point), for a 3-layer model of 4 heads and 24 neurons."""
    return LatencyTable(spec={"runtime": "torch", "batch_size": 1, "seq_len": 8, "threads": 1}, model_type="bert",
                        model_class="BertForQuestionAnswering", num_layers=num_layers, heads_grid=list(heads_grid),
                        heads_seconds=list(heads_seconds), width_grid=list(width_grid),
                        width_seconds=list(width_seconds), full_heads=heads_grid[-1], full_width=width_grid[-1],
                        full_seconds=full_seconds)


# Additive: full = empty + (heads block) + (FFN block), so the calibration is 1.
ADDITIVE = dict(heads_seconds=[1.0, 1.3, 1.6, 2.2], width_seconds=[1.0, 1.6, 2.2, 3.4], full_seconds=4.6)
# Noisy: neither curve is monotone, and the full model is slower than the sum of its blocks.
NOISY = dict(heads_seconds=[1.0, 1.5, 1.4, 2.0], width_seconds=[1.0, 0.9, 2.5, 2.3], full_seconds=4.0)


@pytest.mark.parametrize("values", [ADDITIVE, NOISY])
def test_prediction_is_monotone_in_heads_and_in_width(values):
    table = hand_table(**values)
    heads = table.attention_seconds(torch.arange(0, 4.01, 0.25))
    width = table.ffn_seconds(torch.arange(0, 24.01, 0.5))
    assert (heads.diff() >= 0).all() and (width.diff() >= 0).all()
    assert float(heads[0]) == 0 and float(width[0]) == 0
    sizes = [(h, w) for h in range(5) for w in (0, 1, 5, 12, 13, 24)]
    for h, w in sizes:  # growing any one layer's block never makes the model predicted faster
        base = table.predict([h, 2, 4], [w, 12, 24])
        if h < 4:
            assert table.predict([h + 1, 2, 4], [w, 12, 24]) >= base
        if w < 24:
            assert table.predict([h, 2, 4], [w + 1, 12, 24]) >= base


def test_prediction_interpolates_linearly_between_grid_points():
    table = hand_table(**ADDITIVE)
    assert table.calibration == pytest.approx(1.0)
    # Per layer: heads 0 / 0.1 / 0.2 / 0.4 above empty at 0 / 1 / 2 / 4 heads; FFN 0 / 0.2 / 0.4 / 0.8 at 0 / 1 / 12
    # / 24 neurons (the whole-model times over 3 layers).
    assert float(table.attention_seconds(3)) == pytest.approx(0.3)
    assert float(table.attention_seconds(2)) == pytest.approx(0.2)
    assert float(table.ffn_seconds(6)) == pytest.approx(0.2 + 0.2 * 5 / 11)
    assert float(table.ffn_seconds(18)) == pytest.approx(0.6)
    assert table.predict([3, 0, 4], [18, 24, 0]) == pytest.approx(1.0 + 0.3 + 0.4 + 0.6 + 0.8)
    # Beyond the grid a count is held at the full size.
    assert float(table.attention_seconds(9)) == pytest.approx(0.4)


@pytest.mark.parametrize("values", [ADDITIVE, NOISY])
def test_prediction_is_exact_at_full_size_and_empty(values):
    table = hand_table(**values)
    full = ([4] * 3, [24] * 3)
    assert table.predict(*full) == pytest.approx(table.full_seconds, rel=1e-12)
    assert table.predict([0] * 3, [0] * 3) == table.empty_seconds == values["heads_seconds"][0]
    assert table.speedup(*full) == pytest.approx(1.0, rel=1e-12)
    assert table.speedup([0] * 3, [0] * 3) == pytest.approx(table.full_seconds / table.empty_seconds)
    half = ([2] * 3, [12] * 3)
    assert table.speedup(*half, dense=half) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="for 3 layers, got 2 head counts"):
        table.predict([4, 4], [24, 24, 24])


def test_calibration_scales_the_blocks_to_the_measured_full_size():
    table = hand_table(**NOISY)
    # Monotone blocks: heads 1.0 above empty, FFN 1.5; the full model measures 3.0 above empty.
    assert table.calibration == pytest.approx(3.0 / 2.5)
    assert float(table.attention_seconds(4)) * 3 == pytest.approx(1.0 * 1.2)
    assert "additivity factor 1.200" in table.describe()


def test_budget_of_a_tiny_model():
    model = BertForQuestionAnswering(tiny_bert_config())
    table = hand_table(**NOISY)
    groups = zero_invariant_groups(model)
    budget = table.budget(groups, 2.0)
    assert budget.fixed_seconds == table.empty_seconds
    assert budget.dense_seconds == pytest.approx(table.full_seconds)
    assert budget.target_seconds == pytest.approx(table.full_seconds / 2)
    # A kind that is not pruned counts at its size in the fixed time.
    heads_only = table.budget(zero_invariant_groups(model, prune_heads=False), 2.0)
    assert heads_only.fixed_seconds == pytest.approx(table.empty_seconds + 3 * float(table.attention_seconds(4)))
    neurons_only = table.budget(zero_invariant_groups(model, prune_neurons=False), 2.0)
    assert neurons_only.fixed_seconds == pytest.approx(table.empty_seconds + 3 * float(table.ffn_seconds(24)))
    assert heads_only.dense_seconds == neurons_only.dense_seconds == budget.dense_seconds
    # The budget's block times are the table's, by kind.
    from oto_hf.groups import HEAD, NEURON
    from oto_hf.selection import Pools

    kept = torch.tensor([0.0, 2.0, 4.0], dtype=torch.float64)
    assert torch.equal(budget.block_seconds(HEAD, kept), table.attention_seconds(kept))
    assert torch.equal(budget.block_seconds(NEURON, kept), table.ffn_seconds(kept))
    pools = Pools.of(groups, groups.costs("flops", 8), torch.device("cpu"))
    nothing = torch.zeros(groups.num_groups, dtype=torch.bool)
    assert budget.predict(nothing, pools) == pytest.approx(budget.dense_seconds)
    assert budget.predict(~nothing, pools) == pytest.approx(budget.fixed_seconds)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_prediction_of_counts_on_a_gpu_stays_there():
    table = hand_table(**NOISY)
    counts = torch.tensor([0.0, 3.0, 4.0], dtype=torch.float64)
    on_gpu = table.attention_seconds(counts.cuda())
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), table.attention_seconds(counts))
    assert table.ffn_seconds(counts.cuda()).is_cuda


def stream_table(narrow=(0.5, 0.75)):
    """ADDITIVE, also measured with the stream at 8 and 16 of 32 channels, every time scaled by `narrow`."""
    from dataclasses import replace

    table = hand_table(**ADDITIVE)
    return replace(table, stream_grid=[8, 16], full_stream=32,
                   stream_heads_seconds=[[f * t for t in table.heads_seconds] for f in narrow],
                   stream_width_seconds=[[f * t for t in table.width_seconds] for f in narrow],
                   stream_full_seconds=[f * table.full_seconds for f in narrow])


def test_prediction_at_a_stream_width_interpolates_between_the_measured_widths():
    table, sizes = stream_table(), ([2, 4, 1], [12, 0, 24])
    full = table.predict(*sizes)
    assert table.predict(*sizes, stream=32) == table.predict(*sizes, stream=None) == full
    assert table.predict(*sizes, stream=16) == pytest.approx(0.75 * full)
    assert table.predict(*sizes, stream=8) == pytest.approx(0.5 * full)
    assert table.predict(*sizes, stream=12) == pytest.approx(0.625 * full)  # halfway between 8 and 16
    assert table.predict(*sizes, stream=24) == pytest.approx(0.875 * full)  # halfway between 16 and 32
    assert table.predict(*sizes, stream=3) == pytest.approx(0.5 * full)  # below the narrowest: the narrowest
    assert table.speedup(*sizes, stream=8) == pytest.approx(table.speedup(*sizes) / 0.5)
    with pytest.raises(ValueError, match="measured at the full hidden width only, not at 16 channels.*stream_points"):
        hand_table(**ADDITIVE).predict(*sizes, stream=16)


def test_budget_with_the_stream_among_the_groups_predicts_at_the_width_kept():
    from oto_hf.groups import HIDDEN
    from oto_hf.selection import Pools

    model = BertForQuestionAnswering(tiny_bert_config())
    groups = zero_invariant_groups(model, prune_hidden=True)
    table = stream_table()
    budget = table.budget(groups, 2.0)
    pools = Pools.of(groups, groups.costs("flops", 8), torch.device("cpu"))
    removed = torch.zeros(groups.num_groups, dtype=torch.bool)
    assert budget.predict(removed, pools) == pytest.approx(budget.dense_seconds)
    channels = (groups.kinds == HIDDEN).nonzero().flatten()
    removed[channels[:20]] = True  # 12 channels of 32 left
    assert budget.predict(removed, pools) == pytest.approx(0.625 * budget.dense_seconds)
    assert budget.largest_speedup == pytest.approx(table.full_seconds / (0.5 * table.empty_seconds))
    with pytest.raises(ValueError, match="measured at the full hidden width only"):
        hand_table(**ADDITIVE).budget(groups, 2.0)


def test_table_round_trips_through_its_dict():
    table = hand_table(**NOISY)
    table.path, table.cached = "/somewhere.json", True
    values = json.loads(json.dumps(table.to_dict()))
    assert "path" not in values and "cached" not in values
    again = LatencyTable.from_dict(values)
    assert again.to_dict() == table.to_dict() and again.path is None and not again.cached


# ---- measuring, and the cache ----


SPEC = LatencySpec("torch", 2, 8, 1)
SMALL = dict(head_points=3, width_points=3, repeats=1, patience_s=0)


def tiny_model(cls=BertForQuestionAnswering, **config):
    torch.manual_seed(0)
    return cls(tiny_bert_config(**config)).eval()


def flat_timings(variants, repeats, seconds: float = 1e-3) -> Timings:
    """What `latency.interleaved` returns when every variant took `seconds` in one repeat (nothing is timed)."""
    return Timings(seconds={name: [seconds] for name in variants}, orders=[tuple(variants)],
                   foreign_load_cores=[0.0], requested_repeats=repeats)


def track_grid_models(monkeypatch) -> tuple[list, list]:
    """Weak references to every grid model `latency.sized_model` builds, and how many were alive before each build."""
    import weakref

    alive, alive_before = [], []
    real = latency.sized_model

    def sized(*args, **kwargs):
        alive_before.append(sum(ref() is not None for ref in alive))
        model = real(*args, **kwargs)
        alive.append(weakref.ref(model))
        return model

    monkeypatch.setattr(latency, "sized_model", sized)
    return alive, alive_before


def count_timings(monkeypatch, fake: bool) -> list:
    """Counts the latency table's timing runs (`latency.interleaved` calls), each as the sorted names of the models
    it timed; `fake`: every model takes 1 ms, nothing is timed (for what does not depend on the times)."""
    calls = []
    real = latency.interleaved

    def counted(variants, repeats, **kwargs):
        calls.append(sorted(variants))
        if not fake:
            return real(variants, repeats, **kwargs)
        return flat_timings(variants, repeats)

    monkeypatch.setattr(latency, "interleaved", counted)
    return calls


@pytest.fixture
def fake_timings(monkeypatch):
    return count_timings(monkeypatch, fake=True)


def test_a_measured_table_is_cached_and_read_back_without_measuring(tmp_path, monkeypatch):
    timings = count_timings(monkeypatch, fake=False)
    model = tiny_model()
    logged = []
    table = latency.measure_latency_table(model, SPEC, directory=tmp_path, log=logged.append, **SMALL)
    assert len(timings) == 1 and not table.cached
    # Every grid model was timed: h heads and no neuron, w neurons and no head, the full size.
    assert timings[0] == sorted(["h0", "h1", "h4", "w1", "w24", "full"])
    assert (table.heads_grid, table.width_grid, table.full_heads, table.full_width) == ([0, 1, 4], [0, 1, 24], 4, 24)
    assert table.num_layers == 3 and table.model_class == "BertForQuestionAnswering"
    assert table.width_seconds[0] == table.heads_seconds[0] == table.empty_seconds
    assert all(s > 0 for s in table.heads_seconds + table.width_seconds + [table.full_seconds])
    assert table.spec == {"runtime": "torch", "batch_size": 2, "seq_len": 8, "threads": 1}
    assert table.repeats == 1 and "busy" in table.load
    path = Path(table.path)
    assert path.parent == tmp_path and path.is_file() and not list(tmp_path.glob("*.partial"))
    assert path.name.startswith("bert-torch-2x8-1t-") and table.key[:16] in path.name
    assert json.loads(path.read_text())["key"] == table.key
    assert "measured the latency table" in " ".join(logged)
    counting = latency.interleaved

    def no_timing(*args, **kwargs):
        raise AssertionError("a cached table must not be measured again")

    monkeypatch.setattr(latency, "interleaved", no_timing)
    again = latency.measure_latency_table(tiny_model(), SPEC, directory=tmp_path, log=logged.append, **SMALL)
    assert again.cached and again.path == table.path and again.to_dict() == table.to_dict()
    assert "using the cached latency table" in logged[-1]
    # The weights do not matter (speed does not depend on them): another initialisation is the same table.
    torch.manual_seed(1)
    other_weights = BertForQuestionAnswering(tiny_bert_config())
    assert latency.measure_latency_table(other_weights, SPEC, directory=tmp_path, log=logged.append, **SMALL).cached
    # refresh measures again, whatever is cached.
    monkeypatch.setattr(latency, "interleaved", counting)
    fresh = latency.measure_latency_table(model, SPEC, directory=tmp_path, refresh=True, log=logged.append, **SMALL)
    assert not fresh.cached and fresh.path == table.path and len(timings) == 2


def test_a_table_with_stream_widths_times_every_grid_model_at_each_width(tmp_path, fake_timings):
    model = tiny_model()
    table = latency.measure_latency_table(model, SPEC, directory=tmp_path, stream_points=4, **SMALL)
    assert (table.stream_grid, table.full_stream) == ([8, 16, 24], 32)
    grid = ["h0", "h1", "h4", "w1", "w24", "full"]
    # One timing run per width (its models and, for a narrower one, the full model again as its anchor)
    assert fake_timings == [sorted(grid)] + [sorted([f"s{width}{name}" for name in grid] + [f"s{width}anchor{i}"])
                                                       for i, width in enumerate((8, 16, 24), start=1)]
    assert len(table.stream_heads_seconds) == len(table.stream_width_seconds) == len(table.stream_full_seconds) == 3
    again = LatencyTable.from_dict(json.loads(Path(table.path).read_text()))
    assert again.stream_grid == [8, 16, 24] and again.predict([4] * 3, [24] * 3, stream=12) > 0
    # the full-width table is another table (its cache entry is not this one)
    plain = latency.measure_latency_table(model, SPEC, directory=tmp_path, **SMALL)
    assert not plain.cached and plain.key != table.key and plain.stream_grid == []
    # a grid model with the stream cut: its first channels, a stock compressed model of that width
    small = latency.sized_model(model, 2, 12, stream=16)
    assert small.config.compressed_hidden_size == 16 and small.config.num_attention_heads_per_layer == [2, 2, 2]


def test_each_stream_width_is_timed_on_its_own_and_put_on_the_full_widths_scale(tmp_path, monkeypatch):
    """A width timed while the machine ran 3× slower comes out on the full width's scale (its anchor, the full model
    timed beside it, says how much slower), and one width's models are let go before the next width's are built."""

    def slower_when_narrow(variants, repeats, **kwargs):  # every model 1 ms; the narrower widths' runs 3× slower
        return flat_timings(variants, repeats, 3e-3 if any(name.startswith("s") for name in variants) else 1e-3)

    alive, most_alive = track_grid_models(monkeypatch)
    monkeypatch.setattr(latency, "interleaved", slower_when_narrow)
    table = latency.measure_latency_table(tiny_model(), SPEC, directory=tmp_path, stream_points=4, **SMALL)
    assert table.stream_full_seconds == pytest.approx([table.full_seconds] * 3) and table.full_seconds == 1e-3
    assert all(t == pytest.approx(1e-3) for row in table.stream_heads_seconds + table.stream_width_seconds for t in row)
    # torch keeps each model for its calls: at most one width's six models and its anchor are alive at once
    assert max(most_alive) <= 6 and len(alive) == 6 + 3 * 7


def test_where_memory_is_short_a_width_is_timed_in_groups_on_one_scale(tmp_path, monkeypatch, caplog):
    """With room for only five grid models (each model's memory read as it is built, here one unit per model alive),
    the full width's six are timed as two groups: the first with the full model, the second beside the full model
    again (its anchor), its times put on the first group's scale although that group ran 3× slower."""
    alive, _ = track_grid_models(monkeypatch)

    def in_use() -> int:
        return sum(ref() is not None for ref in alive)

    gib = 2**30
    most = []

    def available(cuda=False):  # 80 GiB free before any model, 10 GiB per grid model alive (torch keeps each)
        assert not cuda
        most.append(in_use())
        return (80 - 10 * in_use()) * gib

    def slower_with_an_anchor(variants, repeats, **kwargs):
        return flat_timings(variants, repeats, 3e-3 if any("anchor" in name for name in variants) else 1e-3)

    timed = []
    monkeypatch.setattr(latency, "available_memory", available)
    monkeypatch.setattr(latency, "total_memory", lambda cuda=False: 100 * gib)
    repeats_asked = []
    monkeypatch.setattr(latency, "interleaved", lambda variants, repeats, **kw: (
        timed.append(sorted(variants)) or repeats_asked.append(kw) or slower_with_an_anchor(variants, repeats, **kw)))
    with caplog.at_level("INFO"):
        table = latency.measure_latency_table(tiny_model(), SPEC, directory=tmp_path,
                                              **{**SMALL, "repeats": 5, "max_seconds": 0})
    # 80 − 10 × alive − 1.5 × 10 (one more like the full model) must stay above 15% of 100: five models at once
    assert timed == [["full", "h0", "h1", "h4", "w1"], ["anchor1", "w24"]]
    assert max(most) <= 5
    assert table.full_seconds == 1e-3 and table.width_seconds[-1] == pytest.approx(1e-3)  # 3e-3 × (1e-3 / 3e-3)
    assert "memory is short: timing 5 grid models as one group; 1 more" in caplog.text
    assert all(kw["min_repeats"] == latency.MIN_REPEATS for kw in repeats_asked)  # whatever the time limit
    # plenty of memory: one group, as before
    monkeypatch.setattr(latency, "total_memory", lambda cuda=False: 1000 * gib)
    monkeypatch.setattr(latency, "available_memory", lambda cuda=False: 900 * gib)
    timed.clear()
    latency.measure_latency_table(tiny_model(), SPEC, directory=tmp_path, refresh=True, **SMALL)
    assert timed == [["full", "h0", "h1", "h4", "w1", "w24"]]


def test_the_memory_readings_are_this_machines():
    available, total = latency.available_memory(), latency.total_memory()
    if total is None:
        pytest.skip("this system has no /proc/meminfo: a latency table times a whole width at once here")
    assert 0 < available <= total
    assert not latency.room_for(total)  # one more model as large as the machine never fits


def test_measuring_restores_the_threads_and_the_model(tmp_path):
    model = tiny_model()
    before = torch.get_num_threads()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.set_num_threads(2)  # measured on 1 thread (never more: the test machine's cores are shared)
    try:
        latency.measure_latency_table(model, SPEC, directory=tmp_path, **SMALL)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not model.training


@pytest.mark.parametrize("change", ["num_labels", "hidden_size", "shape", "threads", "runtime_version"])
def test_the_key_holds_everything_the_table_depends_on(change, tmp_path, fake_timings, monkeypatch):
    timings = fake_timings
    cls = BertForSequenceClassification if change == "num_labels" else BertForQuestionAnswering
    first = latency.measure_latency_table(tiny_model(cls), SPEC, directory=tmp_path, **SMALL)
    model, spec = tiny_model(cls), SPEC
    if change == "num_labels":
        model = tiny_model(cls, num_labels=5)
    elif change == "hidden_size":
        model = tiny_model(hidden_size=48)
    elif change == "shape":
        spec = LatencySpec("torch", 1, 8, 1)
    elif change == "threads":
        spec = LatencySpec("torch", 2, 8, 2)
    else:
        real = latency.runtime_version
        monkeypatch.setattr(latency, "runtime_version", lambda runtime: {**real(runtime), "torch": "0.0.0-other"})
    second = latency.measure_latency_table(model, spec, directory=tmp_path, **SMALL)
    assert len(timings) == 2, "a changed setting must be measured, not read from the cache"
    assert not second.cached and second.key != first.key and second.path != first.path
    assert len(list(tmp_path.glob("*.json"))) == 2
    # and each is then read back from its own file
    assert latency.measure_latency_table(model, spec, directory=tmp_path, **SMALL).cached
    assert len(timings) == 2


@pytest.mark.parametrize("damage", ["another key", "unreadable", "not a table", "truncated"])
def test_a_cached_file_that_is_not_this_table_is_not_used(damage, tmp_path, fake_timings):
    timings = fake_timings
    table = latency.measure_latency_table(tiny_model(), SPEC, directory=tmp_path, **SMALL)
    path = Path(table.path)
    if damage == "another key":
        values = json.loads(path.read_text())
        values["key"] = "0" * 64
        path.write_text(json.dumps(values))
    elif damage == "unreadable":
        path.write_text("{not json")
    elif damage == "not a table":
        path.write_text(json.dumps({"key": table.key, "something": 1}))
    else:
        path.write_text(path.read_text()[: len(path.read_text()) // 2])
    logged = []
    again = latency.measure_latency_table(tiny_model(), SPEC, directory=tmp_path, log=logged.append, **SMALL)
    assert len(timings) == 2 and not again.cached and again.key == table.key
    assert json.loads(path.read_text())["key"] == table.key  # rewritten
    if damage in ("unreadable", "not a table", "truncated"):
        assert "is unreadable" in logged[0]


def test_the_cache_lives_under_oto_hf_cache(tmp_path, monkeypatch, fake_timings):
    monkeypatch.setenv("OTO_HF_CACHE", str(tmp_path / "cache"))
    assert latency.cache_dir() == tmp_path / "cache" / "latency"
    table = latency.measure_latency_table(tiny_model(), SPEC, **SMALL)
    assert Path(table.path).parent == tmp_path / "cache" / "latency"
    monkeypatch.delenv("OTO_HF_CACHE")
    assert latency.cache_dir() == Path.home() / ".cache" / "oto_hf" / "latency"
    monkeypatch.setenv("OTO_HF_CACHE", "")  # empty: as if unset
    assert latency.cache_dir() == Path.home() / ".cache" / "oto_hf" / "latency"


def test_table_key_ignores_what_speed_does_not_depend_on():
    model = tiny_model()
    key, fields = latency.table_key(model, SPEC, [0, 1, 4], [0, 1, 24])
    model.config.id2label = {0: "a", 1: "b"}
    model.config.label2id = {"a": 0, "b": 1}
    model.config._name_or_path = "/some/where/else"
    assert latency.table_key(model, SPEC, [0, 1, 4], [0, 1, 24])[0] == key
    assert latency.table_key(model, SPEC, [0, 2, 4], [0, 1, 24])[0] != key
    assert {"format", "model_class", "config", "spec", "versions", "machine", "heads_grid", "width_grid"} <= set(fields)


# ---- the measured speedup ----


def compressed_copy(model):
    groups = zero_invariant_groups(model)
    with torch.no_grad():
        groups.zero_(torch.nonzero(groups.layers == 0).flatten()[:10])
    return compress(model)


@pytest.mark.parametrize("modes", [(True, False), (False, True), (True, True)])
def test_measure_speedup_returns_the_record_and_leaves_the_modes(modes):
    dense = tiny_model()
    small = compressed_copy(tiny_model())
    dense.train(modes[0])
    small.train(modes[1])
    dense.bert.embeddings.eval()  # a submodule in another mode than its model keeps it too
    threads = torch.get_num_threads()  # measured on SPEC's 1 thread, then restored
    result = latency.measure_speedup(dense, small, SPEC, repeats=1, patience_s=0)
    assert {"runtime", "shape", "batch_size", "seq_len", "threads", "repeats", "dense_median_s",
            "compressed_median_s", "speedup", "session_settings", "foreign_load_cores", "max_foreign_load_cores",
            "busy", "busy_threshold_cores"} <= set(result)
    assert (result["runtime"], result["shape"], result["threads"], result["repeats"]) == ("torch", "2x8", 1, 1)
    assert result["speedup"] == pytest.approx(result["dense_median_s"] / result["compressed_median_s"])
    assert result["session_settings"] is None
    assert (dense.training, small.training) == modes
    assert not any(m.training for m in dense.bert.embeddings.modules())
    assert all(m.training == modes[0] for name, m in dense.named_modules() if not name.startswith("bert.embeddings"))
    assert all(m.training == modes[1] for m in small.modules())
    assert torch.get_num_threads() == threads


def test_an_onnxruntime_table_times_every_grid_file_under_every_session_setting(tmp_path, monkeypatch):
    """The onnxruntime runtime exports each grid model as `oto_hf.export` does and keeps, per file, the fastest of
    `export.SESSION_SETTINGS`; `measure_speedup` on it names the setting each model ran with."""
    pytest.importorskip("onnxruntime")
    from oto_hf.export import SESSION_SETTINGS

    calls = count_timings(monkeypatch, fake=False)
    spec = LatencySpec.of("onnxruntime", "2x8", 1)
    model = tiny_model(num_hidden_layers=1)
    table = latency.measure_latency_table(model, spec, directory=tmp_path, **SMALL)
    grid_models = len(table.heads_grid) + len([w for w in table.width_grid if w]) + 1
    assert len(calls[0]) == grid_models * len(SESSION_SETTINGS)
    assert {name.split("|")[1] for name in calls[0]} == set(SESSION_SETTINGS)
    assert set(table.session_settings) == {name.split("|")[0] for name in calls[0]}
    assert set(table.session_settings.values()) <= set(SESSION_SETTINGS)
    assert table.key_fields["versions"]["onnxruntime"] and table.spec["runtime"] == "onnxruntime"
    result = latency.measure_speedup(model, compressed_copy(tiny_model(num_hidden_layers=1)), spec, repeats=1,
                                     patience_s=0)
    assert set(result["session_settings"]) == {"dense", "compressed"} and result["speedup"] > 0


def test_the_speed_target_paragraph_says_what_was_asked_measured_and_what_drifted():
    entry = {"asked": 3.0, "predicted": 3.1, "measured": 2.4, "runtime": "onnxruntime", "shape": "1x128",
             "threads": 2, "shortfall": "The measured speedup 2.40× is 20% below the asked 3×",
             "measurement": {"repeats": 10, "busy": False, "max_foreign_load_cores": 0.05},
             "dense_now_over_table": 1.3,
             "layout": {"emptied_attention_layers": [2], "emptied_ffn_layers": [], "heads_per_layer": [],
                        "ffn_width_per_layer": []},
             "latency_table": {"cached": True, "build_seconds": 60}}
    text = latency.describe_speed_target(entry)
    assert "asked 3× on onnxruntime at 1x128" in text and "predicted 3.10×, measured **2.40×**" in text
    assert "Emptied blocks: attention of layer 2." in text and "came from the cache" in text
    assert "ran 1.30× as long as when the latency table was measured" in text
    assert text.endswith("**The measured speedup 2.40× is 20% below the asked 3×.**")
    text = latency.describe_speed_target({**entry, "dense_now_over_table": 1.05, "shortfall": None})
    assert "as long as when" not in text and "below the asked" not in text
