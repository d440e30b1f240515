"""OTOSettings (oto_hf.settings): one check for the trainer and HSPG, the schedule in steps, retired options."""

import pytest
from transformers import BertForQuestionAnswering

from conftest import tiny_bert_config
from oto_hf import zero_invariant_groups
from oto_hf.settings import RETIRED_OPTIONS, InvalidOTOSettings, OTOSettings


def test_every_problem_is_listed_in_one_message_named_as_the_caller_spelled_it():
    with pytest.raises(InvalidOTOSettings) as keywords:
        OTOSettings(target=1.5, lmbda=-1.0, saliency="random", prune_steps=10)
    assert len(keywords.value.problems) == 3
    assert "target must lie in [0, 1)" in str(keywords.value) and "lmbda (λ) must be ≥ 0" in str(keywords.value)
    with pytest.raises(InvalidOTOSettings, match="--oto_lambda \\(λ\\) must be ≥ 0"):
        OTOSettings(lmbda=-1.0, named_as="options")


def test_the_schedule_is_in_steps_or_in_fractions_not_both():
    with pytest.raises(InvalidOTOSettings, match="not both or neither"):
        OTOSettings(half_space_start_step=3, half_space_start_fraction=0.1)
    with pytest.raises(InvalidOTOSettings, match="not both or neither"):
        OTOSettings(half_space_start_step=None)
    with pytest.raises(InvalidOTOSettings, match="pruning window ends inside training"):
        OTOSettings(target=0.5, half_space_start_step=None, half_space_start_fraction=0.6, prune_fraction=0.5)


@pytest.mark.parametrize(
    "max_steps,fractions,expected",
    [(100, (0.1, 0.5, 4), (10, 50, 4)),     # the trainer's defaults
     (3, (0.5, 0.5, 4), (2, 1, 1)),         # rounding: the window still ends inside training, one period per step
     (1, (0.5, 0.5, 4), (0, 1, 1)),
     (0, (0.1, 0.5, 2), (0, 1, 1))],        # before the number of steps is known: at least one step
)
def test_in_steps_turns_fractions_into_a_window_inside_training(max_steps, fractions, expected):
    start, prune, periods = fractions
    settings = OTOSettings(target=0.5, half_space_start_step=None, half_space_start_fraction=start,
                           prune_fraction=prune, num_periods=periods).in_steps(max_steps)
    assert (settings.half_space_start_step, settings.prune_steps, settings.num_periods) == expected
    assert settings.window_end_step <= max(1, max_steps)
    assert settings.half_space_start_fraction is None and settings.prune_fraction is None


def test_without_a_target_there_is_no_window():
    settings = OTOSettings(half_space_start_step=None, half_space_start_fraction=0.2, prune_fraction=0.5)
    assert settings.in_steps(50).prune_steps is None and settings.in_steps(50).window_end_step is None


def test_an_impossible_target_is_refused_against_the_groups():
    model = BertForQuestionAnswering(tiny_bert_config())
    groups = zero_invariant_groups(model, prune_heads=False)  # FFN alone: well under 90%
    with pytest.raises(InvalidOTOSettings, match="--oto_target 0.9 asks to remove 90%.*hold only"):
        OTOSettings(target=0.9, prune_steps=10, named_as="options").check_target_fits(groups)
    OTOSettings(target=0.05, prune_steps=10).check_target_fits(groups)  # 5.1% fits: nothing raised


def test_retired_options_and_choices_say_why_and_what_instead():
    assert set(RETIRED_OPTIONS) == {"oto_hold_lr_through_window", "oto_saliency_zero_init"}
    for message in RETIRED_OPTIONS.values():
        assert "retired" in message and "9a312b9" in message
    with pytest.raises(InvalidOTOSettings, match="--oto_allocation 'global' was retired.*Use 'uniform'"):
        OTOSettings(allocation="global", named_as="options")


def test_the_policy_is_built_from_the_names():
    policy = OTOSettings(saliency="fisher", allocation="balanced", layer_floor=0.1, taylor_decay=0.9).selection_policy()
    assert (policy.saliency.name, policy.saliency.decay, policy.layout.name, policy.floor.fraction) == (
        "fisher", 0.9, "balanced", 0.1)


# ---- a speed target ----


SPEED = dict(speedup=2.0, prune_steps=10)


def test_speed_target_refusals_are_all_listed_at_once():
    with pytest.raises(InvalidOTOSettings) as refused:
        OTOSettings(speedup=0.5, target=0.3, latency_runtime="tpu", latency_shape="1x", latency_threads=0,
                    prune_steps=10)
    problems = refused.value.problems
    assert len(problems) == 5, problems
    message = str(refused.value)
    for part in ("latency_runtime must be one of ('torch', 'onnxruntime', 'cuda'), got 'tpu'",
                 "latency_shape takes BATCHxTOKENS, two positive whole numbers such as 1x128, got '1x'", "latency_threads must be ≥ 1, got 0",
                 "speedup must be > 1", "speedup and target are two targets: give one"):
        assert part in message, part
    # Named as the command line spells them.
    with pytest.raises(InvalidOTOSettings) as refused:
        OTOSettings(speedup=1.0, latency_shape="0x128", prune_steps=10, named_as="options")
    assert len(refused.value.problems) == 2
    assert "--oto_speedup must be > 1" in str(refused.value)
    assert "--oto_latency_shape takes BATCHxTOKENS, two positive whole numbers" in str(refused.value)


@pytest.mark.parametrize("settings,message", [
    (dict(speedup=1.0), "speedup must be > 1"),
    (dict(speedup=float("nan")), "speedup must be > 1"),
    (dict(speedup=2.0, target=0.5), "two targets"),
    (dict(speedup=2.0, latency_runtime="tensorrt"), "latency_runtime must be one of"),
    (dict(speedup=2.0, latency_shape="abc"), "latency_shape takes BATCHxTOKENS"),
    (dict(speedup=2.0, latency_shape="1x2x3"), "latency_shape takes BATCHxTOKENS"),
    (dict(speedup=2.0, latency_threads=0), "latency_threads must be ≥ 1"),
    (dict(target=0.5, allocation="latency"), "allocation 'latency' spends a speed target: set speedup"),
    (dict(allocation="latency"), "allocation 'latency' spends a speed target"),
    (dict(speedup=2.0, prune_steps=None), "prune_steps"),
    (dict(speedup=2.0, prune_hidden=True, allocation="latency"), "allocation 'latency' does not plan the hidden "
     "width: with prune_hidden and speedup use 'uniform'"),
])
def test_speed_target_refusals(settings, message):
    with pytest.raises(InvalidOTOSettings, match=message):
        OTOSettings(**{"prune_steps": 10, **settings})


def test_a_speed_target_with_the_hidden_width_defaults_to_the_uniform_layout():
    assert OTOSettings(speedup=2.0, prune_steps=10).allocation == "latency"
    assert OTOSettings(speedup=2.0, prune_steps=10, prune_hidden=True).allocation == "uniform"
    assert OTOSettings(speedup=2.0, prune_steps=10, prune_hidden=True, allocation="balanced").allocation == "balanced"


def test_onnxruntime_is_refused_where_it_is_not_installed(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(InvalidOTOSettings, match="--oto_latency_runtime 'onnxruntime' needs onnxruntime.*pip install"):
        OTOSettings(latency_runtime="onnxruntime", named_as="options", **SPEED)
    OTOSettings(latency_runtime="onnxruntime", target=0.5, prune_steps=10)  # without a speedup it is not used


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_is_refused_without_a_gpu():
    with pytest.raises(InvalidOTOSettings, match="latency_runtime 'cuda' needs a CUDA GPU"):
        OTOSettings(latency_runtime="cuda", **SPEED)


def test_default_allocation_follows_the_target_and_has_target():
    speed = OTOSettings(**SPEED)
    assert speed.allocation == "latency" and speed.has_target and speed.target is None
    assert speed.selection_policy().layout.name == "latency"
    cost = OTOSettings(target=0.5, prune_steps=10)
    assert cost.allocation == "uniform" and cost.has_target
    plain = OTOSettings()
    assert plain.allocation == "uniform" and not plain.has_target and plain.window_end_step is None
    assert OTOSettings(allocation="balanced", **SPEED).allocation == "balanced"
    assert OTOSettings(**SPEED).window_end_step == 10


def test_speedup_in_steps_keeps_the_window():
    settings = OTOSettings(speedup=2.0, half_space_start_step=None, half_space_start_fraction=0.1,
                           prune_fraction=0.5, num_periods=4).in_steps(100)
    assert (settings.half_space_start_step, settings.prune_steps, settings.num_periods, settings.speedup) == (
        10, 50, 4, 2.0)


def test_latency_spec_of_the_settings():
    spec = OTOSettings(latency_shape="4x32", latency_threads=1, **SPEED).latency_spec()
    assert (spec.runtime, spec.batch_size, spec.seq_len, spec.threads) == ("torch", 4, 32, 1)
