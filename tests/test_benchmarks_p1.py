"""Checks of the P1 benchmark script (benchmarks/p1_quality.py, benchmarks/p1_peer.py) that need no training."""

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering

import oto_hf

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


def test_settings_come_from_the_p1_yaml(tmp_path):
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    model_args, data_args, train_args, run_args, oto = p1_quality.parse_settings(ctx, tmp_path / "run")
    assert train_args.learning_rate == 2e-4 and train_args.per_device_train_batch_size == 16
    assert train_args.num_train_epochs == 2 and train_args.seed == 0 and train_args.warmup_steps == 0.1
    assert str(train_args.lr_scheduler_type.value) == "linear" and str(train_args.optim.value) == "adamw_torch"
    assert data_args.max_train_samples == 4000 and data_args.max_eval_samples == 1000
    assert data_args.max_seq_length == 256 and data_args.eval_max_seq_length == 384
    assert oto["oto_target"] == "0.5"


def test_the_clis_dense_mode_is_the_benchmarks_dense_baseline(tmp_path, squad_dir):
    """`run_squad.py <P1 config> --dense --optim adamw_torch` trains the model P1's dense method trains (smoke
    scale: real MiniLM layers, real questions), so the recipe run with the CLI starts from P1's dense baseline."""
    import run_squad
    import p1_quality

    ctx = p1_quality.Ctx(smoke=True, results=tmp_path / "p1")
    benchmark = p1_quality.run_dense(ctx, "dense")  # first: it sets the thread count both then train with
    cli = run_squad.main(p1_quality.yaml_argv(ctx, "--dense", "--optim", "adamw_torch", "--output_dir",
                                              str(tmp_path / "cli"), "--report_latency_repeats", "0"))
    assert cli["training"]["steps"] == benchmark["training"]["steps"] > 0
    assert cli["training"]["train_loss"] == benchmark["training"]["train_loss"]
    assert cli["quality"]["dense"] == benchmark["quality"]
    assert json.loads((tmp_path / "cli" / "eval_predictions.json").read_text()) == \
        json.loads((tmp_path / "p1" / "dense" / p1_quality.PREDICTIONS).read_text())
    # the losses the real Trainer logged, read back from the run's last checkpoint (what result.json keeps)
    losses = p1_quality.logged_losses(ctx, "dense")
    steps = [e["step"] for e in losses]
    assert steps == sorted(set(steps)) and 0 < steps[-1] <= benchmark["training"]["steps"] and len(steps) >= 2
    assert all(e.keys() == {"step", "loss"} and 0 < e["loss"] < 20 for e in losses)


def _write_trainer_state(run_dir, step, log_history):
    (run_dir / f"checkpoint-{step}").mkdir(parents=True)
    (run_dir / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"log_history": log_history}))


def test_logged_losses_come_from_the_last_checkpoint_into_result_json_and_the_loss_table(tmp_path):
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    method = "oto50zerouniformfromdensekdalpha09early"
    entry = lambda step, task: {"step": step, "loss": 0.5, "distill_task_loss": task, "distill_kd_loss": 0.25,
                                "learning_rate": 1e-4, "grad_norm": 3.0}
    early = [entry(20, 2.0)]
    late = [entry(20, 2.0), entry(40, 1.5), {"step": 40, "eval_f1": 50.0}, {"step": 40, "train_runtime": 9.0,
                                                                             "train_loss": 1.0}]
    # checkpoint-100 sorts before checkpoint-20 as text: the last one is the highest step, not the last name
    _write_trainer_state(tmp_path / method / "run", 20, early)
    _write_trainer_state(tmp_path / method / "run", 100, late)
    losses = p1_quality.logged_losses(ctx, method)
    assert losses == [{"step": 20, "loss": 0.5, "distill_task_loss": 2.0, "distill_kd_loss": 0.25},
                      {"step": 40, "loss": 0.5, "distill_task_loss": 1.5, "distill_kd_loss": 0.25}]
    assert p1_quality.logged_losses(ctx, "dense") is None  # no run folder
    # --fill_losses copies them into a finished result that has none; the table then reads the result alone
    (tmp_path / method / "result.json").write_text(json.dumps({"method": method, "training": {"steps": 40}}))
    p1_quality.fill_losses(ctx)
    assert json.loads((tmp_path / method / "result.json").read_text())["training"]["loss_log"] == losses
    shutil.rmtree(tmp_path / method / "run")
    assert p1_quality.loss_table(ctx, [method], (20, 40))[2] == f"| {method} | 2.00 / 0.25 | 1.50 / 0.25 |"
    with pytest.raises(SystemExit, match=r"nothing logged at step\(s\) \[30\].*every 20 steps up to 40"):
        p1_quality.loss_table(ctx, [method], (20, 30))
    with pytest.raises(SystemExit, match="dense: no logged losses"):
        p1_quality.loss_table(ctx, ["dense"], (20,))


def _tiny_qa(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=96, max_position_embeddings=128)
    return BertForQuestionAnswering(config).eval()


def test_torch_pruning_peer_gives_an_equal_compressed_model():
    pytest.importorskip("torch_pruning")
    import p1_peer

    dense = _tiny_qa()
    x = {"input_ids": torch.randint(0, 200, (4, 32)), "attention_mask": torch.ones(4, 32, dtype=torch.long)}
    out = dense(**x, start_positions=torch.tensor([1, 2, 3, 4]), end_positions=torch.tensor([5, 6, 7, 8]))
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in dense.named_parameters() if p.grad is not None}
    dense.zero_grad(set_to_none=True)
    pruned = p1_peer.tp_prune(dense, grads, 0.5)
    stats = oto_hf.model_stats(pruned, 384)
    assert sum(stats.heads_per_layer) == 4 and sum(stats.ffn_width_per_layer) < 2 * 96
    assert dense.bert.encoder.layer[0].intermediate.dense.out_features == 96  # the dense model is left untouched
    small, info = p1_peer.to_oto_bert(dense, pruned)
    assert info["max_abs_logit_diff_tp_vs_compressed"] < 1e-5
    assert oto_hf.model_stats(small, 384) == stats


def test_learning_rate_sweep_point_has_its_own_folder_and_lr(tmp_path):
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, learning_rate=4e-4)
    assert ctx.results.name == "p1_lr0.0004"
    assert "--learning_rate 0.0004" in ctx.cli_suffix()
    train_args = p1_quality.parse_settings(ctx, tmp_path / "run")[2]
    assert train_args.learning_rate == 4e-4
    argv = p1_quality.oto_argv(ctx, "oto50", tmp_path / "run")
    assert argv[argv.index("--learning_rate") + 1] == "0.0004"
    # Without --learning_rate the folder is named by the YAML's lr, so a change of the YAML never mixes lrs.
    default = p1_quality.Ctx(smoke=False)
    yaml_lr = p1_quality.parse_settings(default, tmp_path / "run")[2].learning_rate
    assert default.results.name == f"p1_lr{yaml_lr:g}" and default.cli_suffix() == ""


def test_full_scale_trains_and_scores_every_question_off_the_cpu_with_the_proxys_other_settings(tmp_path):
    import run_squad
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, learning_rate=2e-4, full_scale=True, model_name_or_path=str(tmp_path / "minilm"))
    proxy = p1_quality.Ctx(smoke=False, learning_rate=2e-4)
    assert ctx.results.name == "p1_full_lr0.0002" and ctx.results.parent == proxy.results.parent
    assert ctx.cli_suffix() == f" --full_scale --model_name_or_path {tmp_path / 'minilm'} --learning_rate 0.0002"
    (model, data, train, *_), (proxy_model, proxy_data, proxy_train, *_) = (
        p1_quality.parse_settings(c, tmp_path / "run") for c in (ctx, proxy))
    # every question of the reconstructed train file (83,380) and of dev (10,570) is "fewer than asked for"
    assert data.max_train_samples > 87_599 and data.max_eval_samples > 10_570
    assert not train.use_cpu and proxy_train.use_cpu
    assert model.model_name_or_path == str(tmp_path / "minilm")
    assert (train.per_device_train_batch_size, train.num_train_epochs, train.learning_rate, train.seed) == (
        proxy_train.per_device_train_batch_size, proxy_train.num_train_epochs, proxy_train.learning_rate,
        proxy_train.seed)
    assert (data.max_seq_length, data.doc_stride, data.eval_max_seq_length) == (
        proxy_data.max_seq_length, proxy_data.doc_stride, proxy_data.eval_max_seq_length)
    # OTO gets the same overrides through run_squad; the plain peer follows today's default OTO run
    oto_data, oto_settings = run_squad.parse_arguments(p1_quality.oto_argv(ctx, "oto50zerouniform", tmp_path / "run"))[1:3]
    assert oto_data.max_train_samples == data.max_train_samples and not oto_settings.use_cpu
    assert p1_quality.matched_oto(ctx, "tp50") == "oto50zerouniform" != p1_quality.matched_oto(proxy, "tp50")
    assert p1_quality.matched_oto(ctx, "tp50kdalpha09") == "oto50zerouniformfromdensekdalpha09"
    with pytest.raises(SystemExit, match="opposites"):
        p1_quality.Ctx(smoke=True, full_scale=True)


def test_saved_models_are_found_from_the_results_folder(tmp_path):
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path / "moved")
    assert p1_quality.saved_model_dir(ctx, "dense") == tmp_path / "moved" / "dense" / "model"
    assert p1_quality.saved_model_dir(ctx, "tp70") == tmp_path / "moved" / "tp70" / "model"
    assert p1_quality.saved_model_dir(ctx, "oto70uniform") == tmp_path / "moved" / "oto70uniform" / "run" / "compressed_model"


def test_latency_reference_is_a_saved_dense_model_else_the_pretrained_checkpoint(tmp_path):
    import run_squad
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    # a fresh checkout: no fine-tuned dense model, so the checkpoint the dense run starts from (same shapes)
    pretrained = p1_quality.dense_latency_reference(ctx)
    assert pretrained == Path(run_squad.resolve_model_path(p1_quality.parse_settings(ctx, tmp_path)[0].model_name_or_path))
    assert (pretrained / "config.json").exists()
    # any seed's fine-tuned dense model is preferred to it
    (tmp_path / "denseseed2" / "model").mkdir(parents=True)
    (tmp_path / "denseseed2" / "model" / "config.json").write_text("{}")
    assert p1_quality.dense_latency_reference(ctx) == tmp_path / "denseseed2" / "model"


def test_equal_compute_points_train_twice_the_yaml_epochs(tmp_path):
    import run_squad
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    for method, target in (("oto50x2", 0.5), ("oto70x2", 0.7)):
        settings = run_squad.parse_arguments(p1_quality.oto_argv(ctx, method, tmp_path / "run"))[2]
        assert settings.num_train_epochs == 4 and settings.oto_target == target
    for percent in (50, 70):  # today's defaults at the peer's compute: the uniform point with twice the epochs alone
        once = run_squad.parse_arguments(p1_quality.oto_argv(ctx, f"oto{percent}zerouniform", tmp_path / "run"))[2]
        twice = run_squad.parse_arguments(p1_quality.oto_argv(ctx, f"oto{percent}zerouniformx2", tmp_path / "run"))[2]
        assert _differing(twice, once.to_dict()) == {"num_train_epochs"} and twice.num_train_epochs == 4
    settings = run_squad.parse_arguments(p1_quality.oto_argv(ctx, "oto50", tmp_path / "run"))[2]
    assert settings.num_train_epochs == 2


def test_oto50late_opens_the_window_later(tmp_path):
    import run_squad
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    settings = run_squad.parse_arguments(p1_quality.oto_argv(ctx, "oto50late", tmp_path / "run"))[2]
    assert settings.oto_half_space_start == 0.3 and settings.oto_prune_fraction == 0.4
    assert settings.oto_target == 0.5 and settings.num_train_epochs == 2


def test_oto70zerouniformshort_closes_the_window_earlier_and_changes_nothing_else(tmp_path):
    import run_squad
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    short = run_squad.parse_arguments(p1_quality.oto_argv(ctx, "oto70zerouniformshort", tmp_path / "run"))[2]
    uniform = run_squad.parse_arguments(p1_quality.oto_argv(ctx, "oto70zerouniform", tmp_path / "run"))[2]
    assert (short.oto_half_space_start, short.oto_prune_fraction, uniform.oto_prune_fraction) == (0.1, 0.3, 0.5)
    assert _differing(short, uniform.to_dict()) == {"oto_prune_fraction"}


def test_oto50hold_holds_the_lr_through_the_window(tmp_path):
    import run_squad
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    settings = run_squad.parse_arguments(p1_quality.oto_argv(ctx, "oto50hold", tmp_path / "run"))[2]
    assert settings.oto_hold_lr_through_window and settings.oto_target == 0.5
    assert (settings.oto_half_space_start, settings.oto_prune_fraction) == (0.1, 0.5)
    assert not run_squad.parse_arguments(p1_quality.oto_argv(ctx, "oto50", tmp_path / "run"))[2].oto_hold_lr_through_window


def test_uniform_points_use_the_uniform_allocation(tmp_path):
    import run_squad
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    for method, target in (("oto50uniform", 0.5), ("oto70uniform", 0.7)):
        settings = run_squad.parse_arguments(p1_quality.oto_argv(ctx, method, tmp_path / "run"))[2]
        assert settings.oto_allocation == "uniform" and settings.oto_target == target
    assert run_squad.parse_arguments(p1_quality.oto_argv(ctx, "oto70", tmp_path / "run"))[2].oto_allocation == "balanced"


def test_floor_points_use_the_balanced_allocation_with_a_layer_floor(tmp_path):
    import run_squad
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    for method, target in (("oto50floor", 0.5), ("oto70floor", 0.7)):
        settings = run_squad.parse_arguments(p1_quality.oto_argv(ctx, method, tmp_path / "run"))[2]
        assert (settings.oto_allocation, settings.oto_layer_floor, settings.oto_target) == ("balanced", 0.25, target)
    assert run_squad.parse_arguments(p1_quality.oto_argv(ctx, "oto70", tmp_path / "run"))[2].oto_layer_floor == 0.0


def _differing(settings, base_settings: dict) -> set[str]:
    return {k for k, v in settings.to_dict().items() if base_settings[k] != v}


def _differing_model_fields(model, base_model) -> set[str]:
    base_fields = dataclasses.asdict(base_model)
    return {k for k, v in dataclasses.asdict(model).items() if base_fields[k] != v}


def test_seed_points_change_only_the_training_seed(tmp_path):
    import run_squad
    import p1_quality

    assert p1_quality.split_seed("tp50seed12") == ("tp50", 12) and p1_quality.split_seed("oto50") == ("oto50", None)
    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    base_data, base = run_squad.parse_arguments(p1_quality.oto_argv(ctx, "oto50", tmp_path / "run"))[1:3]
    base_settings = base.to_dict()
    for seed in p1_quality.SEEDS:
        data, seeded = run_squad.parse_arguments(p1_quality.oto_argv(ctx, f"oto50seed{seed}", tmp_path / "run"))[1:3]
        assert (seeded.seed, base.seed) == (seed, 0)
        assert data == base_data  # same questions (sample_seed), same features
        differing = _differing(seeded, base_settings)
        assert differing == {"seed"}, f"oto50seed{seed} must differ from oto50 in the seed alone, not in {differing}"
    zero = run_squad.parse_arguments(p1_quality.oto_argv(ctx, "oto50zero", tmp_path / "run"))[2]
    assert _differing(zero, base_settings) == {"oto_saliency_zero_init"} and zero.oto_saliency_zero_init
    assert not base.oto_saliency_zero_init  # oto50 ran with the first-step start, before the default changed
    zero_seeded = run_squad.parse_arguments(p1_quality.oto_argv(ctx, "oto50zeroseed2", tmp_path / "run"))[2]
    assert _differing(zero_seeded, zero.to_dict()) == {"seed"} and zero_seeded.seed == 2
    # oto50floor runs the library's default floor; oto50zerofloor adds the zero start to it
    floor = run_squad.parse_arguments(p1_quality.oto_argv(ctx, "oto50floorseed1", tmp_path / "run"))[2]
    assert _differing(floor, base_settings) == {"seed", "oto_layer_floor"} and floor.oto_layer_floor == 0.25
    from oto_hf.trainer import OTOTrainingArguments
    assert floor.oto_layer_floor == OTOTrainingArguments.__dataclass_fields__["oto_layer_floor"].default  # the default
    both = run_squad.parse_arguments(p1_quality.oto_argv(ctx, "oto50zerofloorseed1", tmp_path / "run"))[2]
    assert _differing(both, floor.to_dict()) == {"oto_saliency_zero_init"} and both.oto_saliency_zero_init
    uniform = run_squad.parse_arguments(p1_quality.oto_argv(ctx, "oto50uniformseed1", tmp_path / "run"))[2]
    assert _differing(uniform, base_settings) == {"seed", "oto_allocation"} and uniform.oto_allocation == "uniform"
    # dense and the peer read their settings with parse_settings
    _, dense_data, dense, _, _ = p1_quality.parse_settings(ctx, tmp_path / "run")
    _, data, seeded, _, _ = p1_quality.parse_settings(ctx, tmp_path / "run", seed=2)
    assert data == dense_data and seeded.seed == 2 and _differing(seeded, dense.to_dict()) == {"seed"}


def test_a_peer_seed_prunes_the_same_seeds_dense_model(tmp_path):
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    (tmp_path / "dense" / "model").mkdir(parents=True)
    (tmp_path / "dense" / "model" / "config.json").write_text("{}")  # seed 0's dense model must not be used
    with pytest.raises(SystemExit, match="run --methods denseseed1 first"):
        p1_quality.run_tp(ctx, "tp50seed1", allow_without_oto=True)
    assert p1_quality.oto_steps_for(ctx, "tp50seed1")[2] == "oto50seed1"
    # tp70's seeds follow the default settings' OTO seeds: the old oto70 never ran at another seed
    assert p1_quality.oto_steps_for(ctx, "tp70seed2")[2] == "oto70zerofloorseed2"
    assert p1_quality.oto_steps_for(ctx, "tp70")[2] == "oto70"
    assert p1_quality.oto_steps_for(ctx, "tp30")[2] == "oto30zerouniform"  # the first 30% point at lr 2e-4
    assert p1_quality.oto_steps_for(ctx, "tp30seed1")[2] == "oto30zerouniformseed1"


def _stand_in_dense_models(results):
    """Folders where P1 looks for the dense fine-tuned models of every seed (a config.json is what it checks)."""
    import p1_quality

    for dense in ("dense", *(p1_quality.with_seed("dense", s) for s in p1_quality.SEEDS)):
        (results / dense / "model").mkdir(parents=True)
        (results / dense / "model" / "config.json").write_text("{}")


@pytest.mark.parametrize("suffix", ["fromdense", "kd", "fromdensekd"])
def test_fromdense_and_distilled_points_name_the_same_seeds_dense_model_and_change_nothing_else(suffix, tmp_path):
    import run_squad
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    with pytest.raises(SystemExit, match="run --methods denseseed1 first"):
        p1_quality.oto_argv(ctx, f"oto50zerouniform{suffix}seed1", tmp_path / "run")
    _stand_in_dense_models(tmp_path)
    for percent in (50, 70):
        for seed in (None, 1):
            variant = p1_quality.with_seed(f"oto{percent}zerouniform{suffix}", seed)
            model_args, _, settings = run_squad.parse_arguments(p1_quality.oto_argv(ctx, variant, tmp_path / "run"))[:3]
            reference_model, _, reference = run_squad.parse_arguments(
                p1_quality.oto_argv(ctx, p1_quality.with_seed(f"oto{percent}zerouniform", seed), tmp_path / "run"))[:3]
            dense = str(tmp_path / p1_quality.with_seed("dense", seed) / "model")
            if suffix == "fromdense":  # starts from the dense fine-tuned model, the peer's start
                assert model_args.model_name_or_path == dense and model_args.teacher_model_name_or_path is None
            elif suffix == "kd":  # starts from the pretrained checkpoint like today's defaults, taught by the dense model
                assert model_args.model_name_or_path == reference_model.model_name_or_path
                assert model_args.teacher_model_name_or_path == dense
            else:  # the peer's recipe: starts from the dense model and is taught by it
                assert model_args.model_name_or_path == dense == model_args.teacher_model_name_or_path
            assert reference_model.model_name_or_path != dense and reference_model.teacher_model_name_or_path is None
            assert _differing(settings, reference.to_dict()) == set(), variant


def _against_the_recipe(ctx, variant, seed, settings_differing=frozenset()):
    """The model arguments of the recipe's `variant` and of the recipe at the same target (oto<N>zerouniformfromdensekd)
    at `seed`, and the model-argument fields in which they differ; their data must not differ at all, their training
    settings only in `settings_differing`."""
    import run_squad
    import p1_quality

    recipe_method = f"oto{p1_quality.target_percent(variant)}zerouniformfromdensekd"
    (model, data, settings, *_), (recipe_model, recipe_data, recipe_settings, *_) = (
        run_squad.parse_arguments(p1_quality.oto_argv(ctx, p1_quality.with_seed(m, seed), ctx.results / "run"))
        for m in (variant, recipe_method))
    assert data == recipe_data and _differing(settings, recipe_settings.to_dict()) == set(settings_differing)
    return model, recipe_model, _differing_model_fields(model, recipe_model)


def test_the_strong_teacher_points_are_the_recipe_with_alpha_0_9_and_nothing_else(tmp_path):
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    _stand_in_dense_models(tmp_path)
    assert {p1_quality.target_percent(m) for m in p1_quality.STRONG_TEACHER} == {50, 70}
    for variant in p1_quality.STRONG_TEACHER:
        for seed in (None, 1):
            strong, recipe, differing = _against_the_recipe(ctx, variant, seed)
            assert strong.distillation_alpha == 0.9 and recipe.distillation_alpha == 0.5
            assert differing == {"distillation_alpha"}
    results = [{"method": "oto50zerouniformfromdensekdalpha09seed1", "family": "oto_variant", "target_flops_removed": 0.5},
               {"method": "tp50kdseed1", "family": "tp_variant"}, {"method": "denseseed1", "family": "dense"}]
    assert {("oto50zerouniformfromdensekdalpha09seed1", "tp50kdseed1"),
            ("oto50zerouniformfromdensekdalpha09seed1", "denseseed1")} <= set(p1_quality.comparison_pairs(results))


def test_the_early_window_points_are_the_strong_teacher_recipe_with_the_window_at_5_to_30_percent(tmp_path):
    import run_squad
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    _stand_in_dense_models(tmp_path)
    for seed in (None, 1):
        early, strong = (p1_quality.with_seed(m, seed) for m in ("oto50zerouniformfromdensekdalpha09early",
                                                                  "oto50zerouniformfromdensekdalpha09"))
        assert early in p1_quality.METHODS
        (model, data, settings, *_), (strong_model, strong_data, strong_settings, *_) = (
            run_squad.parse_arguments(p1_quality.oto_argv(ctx, m, tmp_path / "run")) for m in (early, strong))
        assert model == strong_model and data == strong_data
        assert _differing(settings, strong_settings.to_dict()) == {"oto_half_space_start", "oto_prune_fraction"}
        assert (settings.oto_half_space_start, settings.oto_prune_fraction) == (0.05, 0.25)
        assert (strong_settings.oto_half_space_start, strong_settings.oto_prune_fraction) == (0.1, 0.5)
        # started from and distilled from the same seed's dense model, like the recipe it varies
        assert model.model_name_or_path == model.teacher_model_name_or_path == strong_model.model_name_or_path
        pure = p1_quality.with_seed("oto50zerouniformfromdensekdalpha1early", seed)
        pure_model, pure_data, pure_settings, *_ = run_squad.parse_arguments(
            p1_quality.oto_argv(ctx, pure, tmp_path / "run"))
        assert pure_data == data and pure_settings.to_dict() == settings.to_dict()
        assert _differing_model_fields(pure_model, model) == {"distillation_alpha"} and pure_model.distillation_alpha == 1
        # the learned layout: only the allocation differs (the floor binds with "balanced"; "uniform" keeps every
        # layer above it anyway, so the two settings are the same floor)
        learned = p1_quality.with_seed("oto50zerofloorfromdensekdalpha09early", seed)
        learned_model, learned_data, learned_settings, *_ = run_squad.parse_arguments(
            p1_quality.oto_argv(ctx, learned, tmp_path / "run"))
        assert learned in p1_quality.METHODS and learned_model == model and learned_data == data
        assert _differing(learned_settings, settings.to_dict()) == {"oto_allocation"}
        assert (learned_settings.oto_allocation, settings.oto_allocation) == ("balanced", "uniform")
        assert learned_settings.oto_layer_floor == settings.oto_layer_floor == 0.25
    results = [{"method": "oto50zerouniformfromdensekdalpha09early", "family": "oto_variant", "target_flops_removed": 0.5},
               {"method": "tp50kd", "family": "tp_variant"}, {"method": "dense", "family": "dense"}]
    assert {("oto50zerouniformfromdensekdalpha09early", "tp50kd"),
            ("oto50zerouniformfromdensekdalpha09early", "dense")} <= set(p1_quality.comparison_pairs(results))
    # seed 2's alpha-0.9 peer ran after the early window only: it follows that run (same layout and steps), paired with it
    early2, peer2 = "oto50zerouniformfromdensekdalpha09earlyseed2", "tp50kdalpha09seed2"
    assert early2 in p1_quality.METHODS and peer2 in p1_quality.METHODS
    assert p1_quality.matched_oto(ctx, peer2) == early2
    assert p1_quality.matched_oto(ctx, "tp50kdalpha09seed1") == "oto50zerouniformfromdensekdalpha09seed1"
    results = [{"method": early2, "family": "oto_variant", "target_flops_removed": 0.5},
               {"method": peer2, "family": "tp_variant"}, {"method": "denseseed2", "family": "dense"}]
    assert {(early2, peer2), (early2, "denseseed2")} <= set(p1_quality.comparison_pairs(results))


def test_the_mixed_saliency_point_is_the_recipe_choosing_groups_by_hessos_mix_and_nothing_else(tmp_path):
    import run_squad
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    _stand_in_dense_models(tmp_path)
    for seed in (None, 1):
        mixed = p1_quality.with_seed("oto50zerouniformfromdensekdmixed", seed)
        _, _, differing = _against_the_recipe(ctx, "oto50zerouniformfromdensekdmixed", seed, {"oto_saliency"})
        assert differing == set() and mixed in p1_quality.METHODS
        settings = run_squad.parse_arguments(p1_quality.oto_argv(ctx, mixed, tmp_path / "run"))[2]
        assert settings.oto_saliency == "mixed"
    results = [{"method": "oto50zerouniformfromdensekdmixedseed1", "family": "oto_variant", "target_flops_removed": 0.5},
               {"method": "tp50kdseed1", "family": "tp_variant"}, {"method": "denseseed1", "family": "dense"}]
    assert {("oto50zerouniformfromdensekdmixedseed1", "tp50kdseed1"),
            ("oto50zerouniformfromdensekdmixedseed1", "denseseed1")} <= set(p1_quality.comparison_pairs(results))


def test_the_layer_distilled_pair_is_the_recipe_plus_the_hidden_term_on_both_sides(tmp_path, monkeypatch):
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    _stand_in_dense_models(tmp_path)
    for seed in (None, 1):
        hidden, recipe, differing = _against_the_recipe(ctx, "oto50zerouniformfromdensekdhidden", seed)
        assert hidden.distillation_hidden_weight == p1_quality.HIDDEN_WEIGHT > 0 == recipe.distillation_hidden_weight
        assert differing == {"distillation_hidden_weight"}
        _check_the_knob_peer_follows_and_is_compared_with_its_oto_run("tp50kdhidden", "oto50zerouniformfromdensekdhidden",
                                                                     seed)
    # The peer's retraining gets the same weight: run_tp hands it to train_adamw (stopped there, before training).
    assert _what_run_tp_gives_train_adamw(ctx, monkeypatch, "tp50kdhiddenseed1") == dict(
        max_steps=550, teacher=f"model at {tmp_path / 'denseseed1' / 'model'}", hidden_weight=p1_quality.HIDDEN_WEIGHT,
        alpha=None)


def test_the_alpha_0_9_peer_is_the_distilled_peer_with_alpha_0_9_following_the_alpha_0_9_oto_run(tmp_path, monkeypatch):
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    _stand_in_dense_models(tmp_path)
    for percent in (50, 70):
        for seed in (None, 1):
            _check_the_knob_peer_follows_and_is_compared_with_its_oto_run(
                f"tp{percent}kdalpha09", f"oto{percent}zerouniformfromdensekdalpha09", seed)
        assert _what_run_tp_gives_train_adamw(ctx, monkeypatch, f"tp{percent}kdalpha09seed1") == dict(
            max_steps=550, teacher=f"model at {tmp_path / 'denseseed1' / 'model'}", hidden_weight=0.0,
            alpha=p1_quality.STRONG_TEACHER_ALPHA)
    assert p1_quality.STRONG_TEACHER_ALPHA == 0.9


def _check_the_knob_peer_follows_and_is_compared_with_its_oto_run(peer_base: str, oto_base: str, seed) -> None:
    """A peer given one of the recipe's knobs follows (takes its FLOPs and steps from) the OTO run with that knob, and
    is compared with it, not with the recipe without the knob; that OTO run is still compared with the recipe's peer."""
    import p1_quality

    percent = p1_quality.target_percent(oto_base)
    assert p1_quality.target_percent(peer_base) == percent
    peer, oto = p1_quality.with_seed(peer_base, seed), p1_quality.with_seed(oto_base, seed)
    recipe, recipe_peer = (p1_quality.with_seed(m, seed) for m in (f"oto{percent}zerouniformfromdensekd", f"tp{percent}kd"))
    assert p1_quality.PEER_MATCHED_TO[peer] == oto and peer in p1_quality.METHODS
    results = [{"method": m, "family": "oto_variant", "target_flops_removed": percent / 100} for m in (oto, recipe)]
    results += [{"method": m, "family": "tp_variant"} for m in (peer, recipe_peer)]
    pairs = set(p1_quality.comparison_pairs(results))
    assert {(oto, peer), (oto, recipe_peer)} <= pairs and (recipe, peer) not in pairs


def _what_run_tp_gives_train_adamw(ctx, monkeypatch, peer: str) -> dict:
    """The step count, teacher and distillation weights that run_tp hands train_adamw for `peer`, whose one-shot cut
    is stood in for on disk (the run is stopped at train_adamw, before any training)."""
    import p1_quality

    seen = {}

    class Stop(Exception):
        pass

    class StandIn(str):  # a model folder's name that answers .train() like a model
        def train(self):
            return self

    def fake_train_adamw(model, train_args, data, run_dir, max_steps=None, teacher=None, hidden_weight=0.0,
                         alpha=None):
        seen.update(max_steps=max_steps, teacher=teacher, hidden_weight=hidden_weight, alpha=alpha)
        raise Stop

    for name, value in dict(train_adamw=fake_train_adamw, load_data=lambda *a, **k: {"model_path": None},
                            dense_reference_stats=lambda path: None, load_model=lambda path: StandIn(f"model at {path}"),
                            read_result=lambda ctx, m: {"training": {"steps": 550}, "kept": {"encoder_flops": 0.5}}
                            ).items():
        monkeypatch.setattr(p1_quality, name, value)
    (ctx.results / peer / "pruned_model").mkdir(parents=True)  # as if it had been cut already
    (ctx.results / peer / "pruned_model" / "config.json").write_text("{}")
    (ctx.results / peer / "pruning.json").write_text('{"label": "stand-in"}')
    with pytest.raises(Stop):
        p1_quality.run_tp(ctx, peer, allow_without_oto=False)
    return seen


def test_a_distilled_peer_follows_the_distilled_oto_run_and_is_compared_with_it():
    import p1_quality

    for percent in (50, 70):
        for seed in (None, 1):
            distilled = p1_quality.with_seed(f"oto{percent}zerouniformkd", seed)
            from_dense = p1_quality.with_seed(f"oto{percent}zerouniformfromdensekd", seed)
            peer, plain_peer = (p1_quality.with_seed(f"tp{percent}{kind}", seed) for kind in ("kd", ""))
            # its FLOPs target and step count: the same recipe's OTO run (tp50kdseed1 ran before that existed)
            assert p1_quality.PEER_MATCHED_TO[peer] == (distilled if peer == "tp50kdseed1" else from_dense)
            results = [{"method": m, "family": "oto_variant", "target_flops_removed": percent / 100}
                       for m in (distilled, from_dense, p1_quality.with_seed(f"oto{percent}zerouniform", seed))]
            results += [{"method": peer, "family": "tp_variant"}, {"method": plain_peer, "family": "tp"}]
            pairs = set(p1_quality.comparison_pairs(results))
            assert {(distilled, peer), (distilled, plain_peer), (from_dense, peer), (from_dense, plain_peer)} <= pairs
            # a run without a teacher is not paired with the distilled peer
            assert (p1_quality.with_seed(f"oto{percent}zerouniform", seed), peer) not in pairs


def test_more_data_points_train_twice_the_questions_for_half_the_epochs_and_are_compared_with_each_other(tmp_path):
    import run_squad
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    data, settings = run_squad.parse_arguments(p1_quality.oto_argv(ctx, "oto50zerouniform8k", tmp_path / "run"))[1:3]
    base_data, base = run_squad.parse_arguments(p1_quality.oto_argv(ctx, "oto50zerouniform", tmp_path / "run"))[1:3]
    assert (data.max_train_samples, base_data.max_train_samples) == (8000, 4000)
    assert dataclasses.replace(data, max_train_samples=4000) == base_data  # same sample seed, eval set, features
    assert _differing(settings, base.to_dict()) == {"num_train_epochs"}
    assert (settings.num_train_epochs, base.num_train_epochs) == (1, 2)  # same steps: twice the features, one pass
    # dense8k: the same change to the dense run's settings, and it is run as a dense method
    _, dense_data, dense, _, _ = p1_quality.parse_settings(ctx, tmp_path / "run", None,
                                                           p1_quality.more_data_options(ctx, tmp_path / "run"))
    _, plain_data, plain, _, _ = p1_quality.parse_settings(ctx, tmp_path / "run")
    assert dense_data == data and _differing(dense, plain.to_dict()) == {"num_train_epochs"}
    assert p1_quality.is_dense("dense8k") and p1_quality.is_dense("denseseed1") and not p1_quality.is_dense("tp50")
    results = [{"method": m, "family": fam, "target_flops_removed": 0.5}
               for m, fam in (("dense", "dense"), ("dense8k", "dense_variant"), ("tp50", "tp"),
                              ("oto50zerouniform8k", "oto_variant"))]
    pairs = p1_quality.comparison_pairs(results)
    assert ("oto50zerouniform8k", "dense8k") in pairs and ("dense8k", "dense") in pairs
    # the peer trained on the 4,000 questions: not a pair for a run on 8,000
    assert ("oto50zerouniform8k", "tp50") not in pairs
    # a seed of the more-data run is compared with the same seed's more-data dense run
    seeded = [dict(r, method=p1_quality.with_seed(r["method"], 1)) for r in results]
    seeded_pairs = p1_quality.comparison_pairs(results + seeded)
    assert ("oto50zerouniform8kseed1", "dense8kseed1") in seeded_pairs
    assert ("oto50zerouniform8kseed1", "dense8k") not in seeded_pairs
    # --smoke doubles its own few questions instead of training on 8,000
    smoke = p1_quality.Ctx(smoke=True, results=tmp_path / "smoke")
    assert p1_quality.more_data_options(smoke, tmp_path / "run") == ("--max_train_samples", "96",
                                                                     "--num_train_epochs", "0.5")


def test_zerouniform_points_run_the_librarys_default_settings_and_zerofloor_points_the_balanced_allocation(tmp_path):
    import run_squad
    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)

    def settings(method):
        return run_squad.parse_arguments(p1_quality.oto_argv(ctx, method, tmp_path / "run"))[2]

    for percent in (30, 50, 70):
        default = run_squad.parse_arguments(p1_quality.yaml_argv(
            ctx, "--oto_target", str(percent / 100), "--output_dir", str(tmp_path / "run"),
            "--report_latency_repeats", "0"))[2]
        assert default.oto_allocation == "uniform"
        uniform, balanced = settings(f"oto{percent}zerouniform"), settings(f"oto{percent}zerofloor")
        assert _differing(uniform, default.to_dict()) == set(), percent  # a plain run_squad.py --oto_target 0.X
        # the default before the uniform layout: the same run with the balanced allocation
        assert _differing(balanced, default.to_dict()) == {"oto_allocation"} and balanced.oto_allocation == "balanced"
        for method in (f"oto{percent}zerouniform", f"oto{percent}zerofloor"):
            seeded = settings(f"{method}seed1")
            assert _differing(seeded, settings(method).to_dict()) == {"seed"} and seeded.seed == 1


def test_seed_variants_are_compared_with_the_same_seed_and_summarised_together():
    import p1_quality

    results = [{"method": m, "family": fam, "target_flops_removed": 0.5, "quality_full_dev": {"f1": f1}}
               for m, fam, f1 in (("dense", "dense", 64.0), ("denseseed1", "dense", 65.0), ("oto50", "oto", 59.0),
                                  ("oto50seed1", "oto_variant", 55.0), ("oto50seed2", "oto_variant", 57.0),
                                  ("tp50", "tp", 60.0), ("tp50seed1", "tp", 61.0))]
    pairs = p1_quality.comparison_pairs(results)
    assert ("oto50seed1", "denseseed1") in pairs and ("tp50seed1", "denseseed1") in pairs
    assert ("oto50seed1", "tp50seed1") in pairs and ("oto50", "tp50") in pairs
    # oto50seed2 has neither a seed-2 dense nor a seed-2 peer: no pair, rather than one with another seed's run
    assert not [p for p in pairs if p[0] == "oto50seed2"] and ("denseseed1", "dense") not in pairs
    rows = {line.split(" | ")[0]: line for line in p1_quality.seed_lines(results) if line.startswith("| ")}
    assert rows["| oto50"] == "| oto50 | 0: 59.00, 1: 55.00, 2: 57.00 | 57.00 | 4.00 |"
    assert rows["| dense"] == "| dense | 0: 64.00, 1: 65.00 | 64.50 | 1.00 |" and "| tp50" in rows


def test_paired_difference_and_its_interval():
    import p1_quality

    same = p1_quality.paired_difference([0.5, 1.0, 0.0], [0.5, 1.0, 0.0])
    assert same["difference"] == 0 and same["ci95"] == (0.0, 0.0) and same["a_better"] == same["b_better"] == 0
    shifted = p1_quality.paired_difference([0.6] * 50, [0.5] * 50)  # the same +10 F1 points on every question
    assert shifted["difference"] == pytest.approx(10.0) and shifted["ci95"] == pytest.approx((10.0, 10.0))
    # a wins half the questions and loses the other half: no difference, and an interval on both sides of 0
    split = p1_quality.paired_difference([1.0, 0.0] * 500, [0.0, 1.0] * 500)
    assert split["difference"] == 0 and split["ci95"][0] < -3 and split["ci95"][1] > 3
    assert (split["a_better"], split["b_better"], split["questions"]) == (500, 500, 1000)


def test_paired_lines_score_saved_predictions_against_the_p1_questions(tmp_path, squad_dir):
    import json

    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    golds = p1_quality.reference_answers(ctx)
    assert len(golds) == 1000  # the P1 YAML's dev sample
    ids = sorted(golds)
    # dense answers everything right; oto50 the first half; the peer nothing
    answers = {"dense": {q: golds[q][0] for q in ids},
               "oto50": {q: golds[q][0] if i < 500 else "" for i, q in enumerate(ids)},
               "tp50": {q: "" for q in ids}}
    for method, preds in answers.items():
        (tmp_path / method).mkdir()
        (tmp_path / method / "predictions.json").write_text(json.dumps(preds))
    results = [{"method": "dense", "family": "dense"}, {"method": "oto50", "family": "oto", "target_flops_removed": 0.5},
               {"method": "tp50", "family": "tp"}, {"method": "oto70", "family": "oto", "target_flops_removed": 0.7}]
    assert p1_quality.comparison_pairs(results) == [("oto50", "dense"), ("tp50", "dense"), ("oto70", "dense"),
                                                    ("oto50", "tp50")]
    rows = [line for line in p1_quality.paired_lines(ctx, results) if line.startswith("| oto") or line.startswith("| tp")]
    # oto70 has no predictions: no row; the others' differences follow from the answers above
    assert [r.split(" | ")[:3] for r in rows] == [["| oto50", "dense", "-50.00"], ["| tp50", "dense", "-100.00"],
                                                  ["| oto50", "tp50", "+50.00"]]
    assert rows[0].endswith("| 0 / 500 |") and rows[2].endswith("| 500 / 0 |")


def test_compare_folders_pairs_two_runs_and_names_a_missing_file(tmp_path, squad_dir):
    import json

    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    golds = p1_quality.reference_answers(ctx)
    for name, right in (("a", 300), ("b", 100)):  # a answers the first 300 questions right, b the first 100
        (tmp_path / name).mkdir()
        (tmp_path / name / "predictions.json").write_text(json.dumps(
            {q: golds[q][0] if i < right else "" for i, q in enumerate(sorted(golds))}))
    d = p1_quality.compare_folders(ctx, tmp_path / "a", tmp_path / "b")
    assert d["difference"] == pytest.approx(20.0) and (d["a_better"], d["b_better"]) == (200, 0)
    with pytest.raises(SystemExit, match="--fill_predictions"):
        p1_quality.compare_folders(ctx, tmp_path / "a", tmp_path / "missing")


def test_full_dev_scoring_uses_every_dev_question_and_its_own_predictions(tmp_path, squad_dir):
    import json

    import p1_quality

    ctx = p1_quality.Ctx(smoke=False, results=tmp_path)
    sample, full = p1_quality.reference_answers(ctx), p1_quality.reference_answers(ctx, full_dev=True)
    assert len(full) == 10570 and set(sample) < set(full)
    ids = sorted(full)
    # On the full dev set oto70 answers the first 6,000 questions right and the peer the first 3,000; their
    # 1,000-question predictions.json say the opposite, and must not be read.
    for method, right in (("oto70", 6000), ("tp70", 3000)):
        (tmp_path / method).mkdir()
        (tmp_path / method / "predictions_full_dev.json").write_text(json.dumps(
            {q: full[q][0] if i < right else "" for i, q in enumerate(ids)}))
        (tmp_path / method / "predictions.json").write_text(json.dumps({q: "" for q in sample}))
    results = [{"method": "oto70", "family": "oto", "target_flops_removed": 0.7}, {"method": "tp70", "family": "tp"}]
    rows = [line for line in p1_quality.paired_lines(ctx, results, full_dev=True) if line.startswith("| oto70")]
    assert len(rows) == 1 and rows[0].split(" | ")[2] == f"{100 * 3000 / 10570:+.2f}"
    assert p1_quality.compare_folders(ctx, tmp_path / "oto70", tmp_path / "tp70", full_dev=True)["questions"] == 10570
    with pytest.raises(SystemExit, match="--full_dev oto50"):
        p1_quality.compare_folders(ctx, tmp_path / "oto70", tmp_path / "oto50", full_dev=True)
    with pytest.raises(SystemExit, match="run `--methods oto50` first"):
        p1_quality.evaluate_full_dev(ctx, ["oto50"])
    # oto70 has its full-dev answers and no saved model (models are not committed): nothing to do, no error, so
    # `--full_dev oto70 tp70 --compare …` works in a fresh checkout
    p1_quality.evaluate_full_dev(ctx, ["oto70", "tp70"])


def test_every_committed_oto_result_still_reproduces_from_its_methods_settings(tmp_path):
    # A changed library default must not silently change what a published method runs: each committed P1 OTO result
    # recorded its oto_* settings, and the method's argv today must give the same values.
    import json

    import run_squad
    import p1_quality

    # Options added after a run are absent from its record; the run behaved as their value here does.
    before_they_existed = {"oto_layer_floor": 0.0, "oto_saliency_zero_init": False}
    # Methods that start from (or distil from) a dense fine-tuned model name its folder; saved models are not
    # committed, so stand-ins let their argv be built.
    _stand_in_dense_models(tmp_path)
    checked = 0
    for result_file in sorted(p1_quality.RESULTS.parent.glob("p1_lr*/*/result.json")):
        method = result_file.parent.name
        recorded = (json.loads(result_file.read_text()).get("training") or {}).get("oto_settings")
        if method not in p1_quality.OTO_METHODS or not recorded:
            continue
        lr = float(result_file.parent.parent.name.removeprefix("p1_lr"))
        ctx = p1_quality.Ctx(smoke=False, results=tmp_path, learning_rate=lr)
        today = run_squad.parse_arguments(p1_quality.oto_argv(ctx, method, tmp_path / "run"))[2].to_dict()
        changed = {k: (v, today[k]) for k, v in {**before_they_existed, **recorded}.items() if today[k] != v}
        assert not changed, f"{result_file}: recorded vs today's settings differ: {changed}"
        checked += 1
    assert checked >= 20


def test_the_full_dev_curve_averages_each_methods_seeds_and_skips_runs_without_a_full_dev_score(tmp_path):
    import p1_quality

    def run(method, flops, f1):
        return {"method": method, "kept": {"encoder_flops": flops},
                "quality_full_dev": {"f1": f1} if f1 is not None else None}

    results = [run("oto50zerouniform", 0.5, 60.0), run("oto50zerouniformseed1", 0.5, 58.0),
               run("oto70zerouniform", 0.3, 55.0), run("oto30zerouniform", 0.7, None),  # no full-dev score
               run("tp50", 0.499, 59.0), run("dense", 1.0, 64.0), run("oto50", 0.5, 1.0)]  # oto50: on no curve
    points = p1_quality.curve_points(results)
    default, balanced, peer, dense = (points[label] for label, *_ in p1_quality.CURVES)
    assert default == [(30.0, 55.0, {0: 55.0}), (50.0, 59.0, {0: 60.0, 1: 58.0})]  # ordered by FLOPs kept
    assert balanced == [] and peer == [(49.9, 59.0, {0: 59.0})] and dense == [(100.0, 64.0, {0: 64.0})]
    # a point without every seed the curve has is labelled with its own, not passed off as a mean of all of them
    labels = [label for label, *_ in p1_quality.CURVES]
    assert p1_quality.seed_notes(points) == {(labels[0], 30.0): "seed 0", (labels[2], 49.9): "seed 0",
                                             (labels[3], 100.0): "seed 0"}
    ctx = p1_quality.Ctx(smoke=True, results=tmp_path)
    p1_quality.plot_curve(ctx, results)
    assert (tmp_path / "f1_vs_flops_full_dev.png").stat().st_size > 10_000
