"""OTOTrainer on a small real BERT (MiniLM cut to 2 layers) and a small real SQuAD sample."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard
from safetensors.torch import load_file
import torch
import yaml
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, BertForQuestionAnswering, GPT2Config, GPT2ForQuestionAnswering, HfArgumentParser

from conftest import tiny_bert_config, torchrun
from oto_hf import OTOBertForQuestionAnswering, OTOTrainer, OTOTrainingArguments, UnsupportedModelError, model_stats
from oto_hf.tasks.common import sample_examples
from oto_hf.tasks.squad import load_squad, local_squad_files, postprocess_predictions, tokenize_squad


SEQ = 128


@pytest.fixture(scope="module")
def squad_sample(minilm_path, squad_dir):
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    raw = load_squad(**local_squad_files("genuine-first11", squad_dir))
    train = sample_examples(raw["train"], 48, seed=0)
    valid = sample_examples(raw["validation"], 16, seed=0)
    features = tokenize_squad({"train": train}, tokenizer, "train", max_seq_length=SEQ, doc_stride=32, max_query_length=32)
    valid_features = tokenize_squad({"validation": valid}, tokenizer, "validation", max_seq_length=SEQ, doc_stride=32, max_query_length=32)
    return tokenizer, features, valid, valid_features


def small_bert(minilm_path):
    torch.manual_seed(0)
    return BertForQuestionAnswering.from_pretrained(minilm_path, num_hidden_layers=2)


def make_args(output_dir, **overrides):
    values = dict(
        output_dir=str(output_dir), per_device_train_batch_size=8, max_steps=12, learning_rate=1e-4, use_cpu=True,
        report_to=[], logging_steps=3, save_strategy="no", seed=0, disable_tqdm=True, oto_target=0.4,
        oto_seq_len=SEQ, oto_half_space_start=0.25, oto_prune_fraction=0.5, oto_num_periods=2,
    )
    values.update(overrides)
    return OTOTrainingArguments(**values)


def predict_logits(model, features):
    inputs = {k: torch.tensor(features[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    model.eval()
    with torch.no_grad():
        out = model(**inputs)
    return out.start_logits.numpy(), out.end_logits.numpy()


def test_short_run_reaches_target_and_saved_model_answers_the_same(minilm_path, squad_sample, tmp_path):
    tokenizer, features, valid, valid_features = squad_sample
    trainer = OTOTrainer(model=small_bert(minilm_path), args=make_args(tmp_path / "run"), train_dataset=features,
                         processing_class=tokenizer)
    trainer.train()

    stats = model_stats(trainer.model, SEQ)
    dense = model_stats(trainer.model, SEQ, exclude_zero_groups=False)
    removed = 1 - stats.encoder_flops / dense.encoder_flops
    assert abs(removed - 0.4) <= 0.01, removed
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and {"oto/group_sparsity", "oto/heads_kept", "oto/ffn_neurons_kept", "oto/encoder_flops_kept",
                       "oto/encoder_params_kept", "oto/lambda"} <= set(logged[-1])
    assert logged[-1]["oto/encoder_flops_kept"] == pytest.approx(1 - removed)

    trainer.save_model()
    sparse_logits = predict_logits(trainer.model, valid_features)
    reloaded = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "run")
    assert isinstance(reloaded, OTOBertForQuestionAnswering)
    small_logits = predict_logits(reloaded, valid_features)
    for a, b in zip(sparse_logits, small_logits):
        assert np.abs(a - b).max() <= 1e-4
    answers_sparse = postprocess_predictions(valid, valid_features, *sparse_logits)
    answers_small = postprocess_predictions(valid, valid_features, *small_logits)
    assert answers_sparse == answers_small
    assert sum(p.numel() for p in reloaded.parameters()) < sum(p.numel() for p in trainer.model.parameters())


def test_saved_folder_and_model_card(minilm_path, squad_sample, tmp_path):
    tokenizer, features, _, _ = squad_sample
    args = make_args(tmp_path / "run", max_steps=4, oto_half_space_start=0.0, oto_prune_fraction=0.5,
                     oto_save_group_sparse=True)
    trainer = OTOTrainer(model=small_bert(minilm_path), args=args, train_dataset=features, processing_class=tokenizer)
    trainer.train()
    trainer.log({"eval_f1": 12.5, "eval_exact_match": 7.0})
    trainer.save_model()
    folder = tmp_path / "run"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_oto.py", "configuration_oto.py", "architectures.py", "README.md",
            "tokenizer.json", "tokenizer_config.json", "group_sparse"} <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForQuestionAnswering"].endswith("OTOBertForQuestionAnswering")
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "question-answering"
    # The packaged MiniLM is a copy of a Hub model: the card names that model, never the package's folder.
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and "site-packages" not in card.content
    heads = config["num_attention_heads_per_layer"]
    widths = config["intermediate_size_per_layer"]
    for i in range(2):
        assert f"| {i} | {heads[i]} / 12 | {widths[i]} / 1536 |" in card.content
    assert "| evaluation data | evaluation | F1 | 12.50 |" in card.content
    assert "encoder FLOPs per example (128 tokens)" in card.content
    assert card.content.count("\n# all-MiniLM-L6-v2-oto") == 1
    # The full-size group-sparse copy is a stock BERT checkpoint.
    assert json.loads((folder / "group_sparse" / "config.json").read_text())["model_type"] == "bert"


def test_push_to_hub_uploads_the_compressed_model_and_its_card(minilm_path, squad_sample, tmp_path, monkeypatch):
    """There is no Hub here: what push_to_hub hands huggingface_hub's upload is checked instead (the folder and the
    patterns it leaves out)."""
    from huggingface_hub.utils import filter_repo_objects

    calls = []

    class Hub:  # records the two calls Trainer.push_to_hub makes
        def create_repo(self, repo_id, **kwargs):
            return type("RepoUrl", (), {"repo_id": f"user/{repo_id}"})()

        def upload_folder(self, **kwargs):
            calls.append(kwargs)

    monkeypatch.setattr("transformers.trainer.hf_api", lambda: Hub())
    tokenizer, features, _, _ = squad_sample
    args = make_args(tmp_path / "minilm-squad-oto", max_steps=4, oto_half_space_start=0.0, oto_prune_fraction=0.5,
                     save_strategy="steps", save_steps=2)
    trainer = OTOTrainer(model=small_bert(minilm_path), args=args, train_dataset=features, processing_class=tokenizer)
    trainer.train()
    trainer.push_to_hub()
    (upload,) = calls
    folder = Path(upload["folder_path"])
    files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    uploaded = set(filter_repo_objects(files, ignore_patterns=upload["ignore_patterns"]))
    assert upload["repo_id"] == "user/minilm-squad-oto" and any(f.startswith("checkpoint-") for f in files)
    assert {"README.md", "config.json", "model.safetensors", "modeling_oto.py", "configuration_oto.py",
            "architectures.py", "tokenizer.json", "tokenizer_config.json"} <= uploaded
    assert not any(f.startswith("checkpoint-") for f in uploaded)
    # The weights uploaded are the compressed model's: each layer's FFN as narrow as its config says.
    config = json.loads((folder / "config.json").read_text())
    weights = load_file(folder / "model.safetensors")
    widths = [weights[f"bert.encoder.layer.{i}.intermediate.dense.weight"].shape[0] for i in range(2)]
    assert config["model_type"] == "oto_bert" and widths == config["intermediate_size_per_layer"] and max(widths) < 1536
    assert ModelCard.load(folder / "README.md").data.model_name == "minilm-squad-oto"


def test_interrupt_and_resume_equals_the_uninterrupted_run(minilm_path, squad_sample, tmp_path):
    _, features, _, _ = squad_sample
    # Dropout stays on: the RNG state must be restored too.
    args = dict(max_steps=10, save_strategy="steps", save_steps=4, oto_half_space_start=0.2, oto_prune_fraction=0.6)
    full = OTOTrainer(model=small_bert(minilm_path), args=make_args(tmp_path / "full", **args), train_dataset=features)
    full.train()

    torch.manual_seed(1234)  # the resumed run must not depend on the state of the process it starts in
    resumed = OTOTrainer(model=small_bert(minilm_path), args=make_args(tmp_path / "resumed", **args),
                         train_dataset=features)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    assert resumed.hspg.step_count == full.hspg.step_count == 10
    assert torch.equal(full.oto_groups.is_zero(), resumed.oto_groups.is_zero())
    assert full.oto_groups.is_zero().any()
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_two_process_ddp_ranks_agree_on_zero_groups(tmp_path):
    records = torchrun("ddp_train.py", tmp_path, port=29517)
    assert [r["world_size"] for r in records] == [2, 2]
    assert records[0]["zero_groups"] == records[1]["zero_groups"] and records[0]["zero_groups"]
    assert len(records[0]["grad_checksums"]) == len(records[0]["weight_checksums"]) == 16
    assert records[0]["weights_checksum"] == records[1]["weights_checksum"], _first_disagreement(*records)
    assert abs(records[0]["flops_removed"] - 0.4) <= 0.05  # a tiny model: one head is 6% of its FLOPs


def _first_disagreement(rank0: dict, rank1: dict) -> str:
    """Where two DDP ranks' per-step checksums first part: in the gradients the optimizer was given (all-reduce or
    clipping) or only in the weights it left (the optimizer step)."""
    for step, (g0, g1, w0, w1) in enumerate(zip(rank0["grad_checksums"], rank1["grad_checksums"],
                                                rank0["weight_checksums"], rank1["weight_checksums"]), start=1):
        if g0 != g1:
            return f"ranks' gradients first differ at step {step}: {g0!r} vs {g1!r}"
        if w0 != w1:
            return f"same gradients, but the weights after step {step} differ: {w0!r} vs {w1!r}"
    return "per-step checksums agree; the weights differ only after training ended"


def test_arguments_round_trip_through_hf_argument_parser(tmp_path):
    parser = HfArgumentParser(OTOTrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--oto_target", "0.3", "--oto_target_unit", "params", "--oto_direction",
         "sgd", "--no_oto_prune_heads", "--oto_epsilon", "0.5", "--oto_allocation", "balanced", "--oto_saliency",
         "fisher", "--oto_layer_floor", "0.1", "--use_cpu"]
    )
    assert (args.oto_target, args.oto_target_unit, args.oto_direction, args.oto_prune_heads, args.oto_epsilon,
            args.oto_allocation, args.oto_saliency, args.oto_layer_floor) == (0.3, "params", "sgd", False, 0.5,
                                                                              "balanced", "fisher", 0.1)
    (lambda_only,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--oto_lambda_only"])
    assert lambda_only.oto_settings.target is None
    with pytest.raises(ValueError, match="--oto_allocation 'global' was retired.*Use 'uniform'"):
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--oto_allocation", "global"])

    config = {"output_dir": str(tmp_path), "oto_target": None, "oto_lambda": 0.01, "oto_num_periods": 3,
              "learning_rate": 3e-5}
    path = tmp_path / "args.yaml"
    path.write_text(yaml.safe_dump(config))
    (from_yaml,) = parser.parse_yaml_file(str(path))
    assert from_yaml.oto_settings.target is None and from_yaml.oto_lambda == 0.01 and from_yaml.oto_num_periods == 3
    (from_json,) = parser.parse_json_file(str(_write_json(tmp_path / "args.json", config)))
    assert from_json.oto_lambda == 0.01


def _write_json(path, values):
    path.write_text(json.dumps(values))
    return path


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(oto_target=1.2), "--oto_target must lie in"),
        (dict(oto_epsilon=1.0), "--oto_epsilon"),
        (dict(oto_lambda=-1.0), "--oto_lambda"),
        (dict(oto_half_space_start=0.6, oto_prune_fraction=0.5), "--oto_prune_fraction"),
        (dict(optim="adafactor"), "--oto_direction"),
        (dict(oto_allocation="even"), "--oto_allocation"),
        (dict(oto_saliency="random"), "--oto_saliency"),
        (dict(oto_layer_floor=1.0), "--oto_layer_floor must lie"),
        (dict(oto_prune_heads=False, oto_prune_neurons=False), "nothing would be pruned"),
        (dict(oto_hold_lr_through_window=True), "--oto_hold_lr_through_window was retired.*gave no gain.*Drop it"),
        (dict(oto_saliency_zero_init=False), "--oto_saliency_zero_init was retired.*always starts at zero"),
        (dict(oto_allocation="global"), "--oto_allocation 'global' was retired"),
        (dict(oto_num_periods=0), "--oto_num_periods must be ≥ 1"),
        (dict(push_to_hub=True, hub_strategy="every_save"), "full-size group-sparse model"),
        (dict(push_to_hub=True, oto_save_group_sparse=True), "would upload beside the compressed model"),
        (dict(oto_save_group_sparse=True, oto_prune_hidden=True), "loads with stock LayerNorms over every channel"),
    ],
)
def test_bad_settings_are_refused_with_what_to_change(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


def test_every_problem_is_listed_at_once(tmp_path):
    with pytest.raises(ValueError) as refused:
        make_args(tmp_path, oto_target=1.2, oto_lambda=-1.0, optim="adafactor", oto_hold_lr_through_window=True)
    assert str(refused.value).count("\n  - ") == 4, str(refused.value)


def test_retired_options_asking_for_what_stays_only_warn_and_the_old_target_name_still_works(tmp_path):
    with pytest.warns(DeprecationWarning, match="always starts at zero"):
        make_args(tmp_path, oto_saliency_zero_init=True)
    with pytest.warns(DeprecationWarning, match="gave no gain"):
        make_args(tmp_path, oto_hold_lr_through_window=False)
    args = make_args(tmp_path, oto_target=0.3)
    with pytest.warns(DeprecationWarning, match="oto_settings.target"):
        assert args.oto_effective_target == 0.3 == args.oto_settings.target
    assert "oto_saliency_zero_init" not in args.to_dict()  # retired options are no longer settings


def test_refused_before_any_training(tmp_path):
    args = make_args(tmp_path)
    gpt2 = GPT2ForQuestionAnswering(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="GPT2ForQuestionAnswering"):
        OTOTrainer(model=gpt2, args=args)
    model = BertForQuestionAnswering(tiny_bert_config())
    with pytest.raises(ValueError, match="builds its own optimizer"):
        OTOTrainer(model=model, args=args, optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None))
    with pytest.raises(ValueError, match="hold only"):
        OTOTrainer(model=model, args=make_args(tmp_path, oto_target=0.9, oto_prune_heads=False))
    import families

    with pytest.raises(UnsupportedModelError, match="has encoder.conv, which mixes.*prune_hidden=False"):
        OTOTrainer(model=families.build("deberta-v2", "DebertaV2ForSequenceClassification", conv_kernel_size=3),
                   args=make_args(tmp_path, oto_prune_hidden=True))
    from transformers import TrainingArguments

    with pytest.raises(TypeError, match="OTOTrainingArguments"):
        OTOTrainer(model=model, args=TrainingArguments(str(tmp_path)))


def test_the_optimizer_is_built_from_the_oto_settings(tmp_path):
    args = make_args(tmp_path, max_steps=20, oto_allocation="balanced", oto_saliency="fisher", oto_layer_floor=0.1,
                     oto_direction="sgd", oto_momentum=0.8)
    trainer = OTOTrainer(model=BertForQuestionAnswering(tiny_bert_config()), args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=20)
    settings = trainer.optimizer.settings
    assert (settings.allocation, settings.saliency, settings.layer_floor, settings.direction, settings.momentum) == (
        "balanced", "fisher", 0.1, "sgd", 0.8)
    assert (trainer.optimizer.policy.layout.name, trainer.optimizer.policy.saliency.name) == ("balanced", "fisher")
    assert trainer.optimizer.param_groups[0]["momentum"] == 0.8
    assert settings.target == args.oto_target == 0.4
    # The fractions of training, in optimizer steps: stage 2 from 0.25 · 20, a window of 0.5 · 20 steps.
    assert (settings.half_space_start_step, settings.prune_steps, settings.num_periods) == (5, 10, 2)
    assert trainer.oto_window_end == 15
    assert make_args(tmp_path).oto_layer_floor == 0.25  # the default: a quarter of each layer's heads and neurons


# ---- every supported family: train, save_model, reload in a fresh process ----

HIDDEN_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "data2vec-text", "ernie", "distilbert",
                "deberta-v2", "modernbert", "vit", "deit")


@pytest.fixture(scope="module")
def trained_families(tmp_path_factory):
    """For every model type, a tiny random classifier trained by OTOTrainer for a few steps to 50% of its encoder
    FLOPs removed (the hidden width pruned too where the family's can be), saved with `save_model`, with the
    compressed model's logits on reference inputs."""
    import families

    root = tmp_path_factory.mktemp("trained_families")
    for model_type in families.MODEL_TYPES:
        model = families.build(model_type, families.classifier(model_type), num_labels=3).train()
        examples = [{**{k: v[0] for k, v in families.inputs(model_type, batch=1, seed=i).items()}, "labels": i % 3}
                    for i in range(16)]
        args = make_args(root / model_type, per_device_train_batch_size=4, max_steps=8, learning_rate=1e-3,
                         oto_target=0.5, oto_seq_len=None, oto_half_space_start=0.0, oto_prune_fraction=0.5,
                         remove_unused_columns=False, oto_prune_hidden=model_type in HIDDEN_TYPES)
        trainer = OTOTrainer(model=model, args=args, train_dataset=examples)
        trainer.train()
        trainer.save_model()
        small = trainer.compress().eval()
        inputs = families.inputs(model_type)
        with torch.no_grad():
            torch.save({"inputs": inputs, "logits": small(**inputs).logits, "flops_removed":
                        trainer.hspg.sparsity_report()["flops_removed"]}, root / model_type / "reference.pt")
    return root


RELOAD_EVERY_FAMILY = """
    import torch
    from pathlib import Path
    from transformers import AutoModel, AutoModelForImageClassification, AutoModelForSequenceClassification
    for folder in sorted(Path("{root}").iterdir()):
        ref = torch.load(folder / "reference.pt")
        auto = AutoModelForImageClassification if "pixel_values" in ref["inputs"] else AutoModelForSequenceClassification
        model = auto.from_pretrained(folder{extra}).eval()
        with torch.no_grad():  # trained with eager attention, loaded with the default (sdpa where the family has it)
            bound = 1e-5 * max(1.0, float(ref["logits"].abs().max()))  # float32 rounding, relative to the outputs
            assert (model(**ref["inputs"]).logits - ref["logits"]).abs().max() <= bound, folder.name
        base = AutoModel.from_pretrained(folder{extra})
        print(folder.name, type(model).__module__.split(".")[0], type(model).__name__, type(base).__name__)
"""


def test_every_family_trains_to_its_target(trained_families):
    import families

    for model_type in families.MODEL_TYPES:
        reference = torch.load(trained_families / model_type / "reference.pt")
        assert 0.49 <= reference["flops_removed"] <= 0.5, model_type
        config = json.loads((trained_families / model_type / "config.json").read_text())
        assert config["model_type"] == "oto_" + model_type
        # The stream was cut where the family's can be (and its card says so).
        assert (config.get("compressed_hidden_size") or 32) < 32 if model_type in HIDDEN_TYPES else (
            config.get("compressed_hidden_size") is None), model_type
        if model_type in HIDDEN_TYPES:
            assert f"hidden width 32 → {config['compressed_hidden_size']}" in (
                trained_families / model_type / "README.md").read_text()


def test_every_family_reloads_with_oto_hf_in_a_fresh_process(trained_families, tmp_path):
    import families

    out = families.run_python("import oto_hf\n" + textwrap.dedent(RELOAD_EVERY_FAMILY).format(root=trained_families, extra=""),
                              tmp_path)
    assert [line.split()[0] for line in out.splitlines()] == sorted(families.MODEL_TYPES)
    assert all(line.split()[1] == "oto_hf" for line in out.splitlines()), out


def test_every_family_reloads_without_oto_hf_through_trust_remote_code(trained_families, tmp_path):
    import families

    # oto_hf is made unimportable in the child: the modeling code must come from the checkpoint itself.
    out = families.run_python("import sys\nsys.modules['oto_hf'] = None\n" + textwrap.dedent(RELOAD_EVERY_FAMILY).format(
        root=trained_families, extra=", trust_remote_code=True"), tmp_path)
    assert [line.split()[0] for line in out.splitlines()] == sorted(families.MODEL_TYPES)
    assert all(line.split()[1] == "transformers_modules" for line in out.splitlines()), out


# ---- a speed target ----


def speed_args(output_dir, **overrides):
    """make_args without a cost target (the default one, which --oto_speedup replaces), at a small latency shape
    (large enough that the tiny model's full size runs clearly slower than its empty blocks, even timed once)."""
    values = dict(oto_target=OTOTrainingArguments.oto_target, oto_seq_len=None, oto_speedup=1.2,
                  oto_latency_shape="8x32", oto_latency_threads=1)
    values.update(overrides)
    return make_args(output_dir, **values)


@pytest.fixture
def quick_tables(monkeypatch, tmp_path):
    """OTOTrainer's latency tables measured small and fast (3 repeats, 3 grid points, no waiting for quiet), cached
    under tmp_path (OTO_HF_CACHE); returns the log lines of each measurement. Three repeats, not one: a single
    hiccup in one timing (the suite ran on a busy machine once) made the tiny model's largest possible speedup read
    1.11× instead of its usual 1.8-3.5×, below the 1.2× asked."""
    from oto_hf import latency, trainer as trainer_module

    monkeypatch.setenv("OTO_HF_CACHE", str(tmp_path / "cache"))
    logged = []

    def measure(model, spec, log=None, **kwargs):
        return latency.measure_latency_table(model, spec, head_points=3, width_points=3, repeats=3, patience_s=0,
                                             log=logged.append)

    monkeypatch.setattr(trainer_module, "measure_latency_table", measure)
    return logged


def test_speedup_replaces_the_default_target_and_refuses_another(tmp_path):
    args = speed_args(tmp_path, oto_speedup=2.0)
    settings = args.oto_settings
    assert (settings.target, settings.speedup, settings.allocation) == (None, 2.0, "latency")
    assert (settings.latency_runtime, settings.latency_shape, settings.latency_threads) == ("torch", "8x32", 1)
    assert args.oto_cost_target is None and settings.has_target
    with pytest.raises(ValueError, match="--oto_speedup and --oto_target are two targets: give one"):
        make_args(tmp_path, oto_speedup=2.0)  # make_args' --oto_target 0.4
    with pytest.raises(ValueError) as refused:
        speed_args(tmp_path, oto_speedup=0.5, oto_latency_shape="1x", oto_latency_threads=0)
    assert str(refused.value).count("\n  - ") == 3, str(refused.value)
    with pytest.raises(ValueError, match="--oto_allocation 'latency' spends a speed target: set --oto_speedup"):
        make_args(tmp_path, oto_allocation="latency")


def test_a_speedup_measures_the_table_at_construction(tmp_path, quick_tables):
    model = BertForQuestionAnswering(tiny_bert_config())
    trainer = OTOTrainer(model=model, args=speed_args(tmp_path / "run", max_steps=20))
    table = trainer.oto_latency_table
    assert table is not None and not table.cached and "measured the latency table" in " ".join(quick_tables)
    assert Path(table.path).parent == tmp_path / "cache" / "latency"
    assert table.spec == {"runtime": "torch", "batch_size": 8, "seq_len": 32, "threads": 1}
    assert table.model_class == "BertForQuestionAnswering" and table.num_layers == 3
    trainer.create_optimizer_and_scheduler(num_training_steps=20)
    hspg = trainer.optimizer
    assert hspg.latency_table is table and hspg.time_budget is not None and hspg.policy.layout.name == "latency"
    assert hspg.seq_len == 32  # FLOPs counted at the served length
    assert hspg.time_budget.target_seconds == pytest.approx(hspg.time_budget.dense_seconds / 1.2)
    # A second trainer of the same model on the same settings reads the cached table.
    again = OTOTrainer(model=BertForQuestionAnswering(tiny_bert_config()), args=speed_args(tmp_path / "run2"))
    assert again.oto_latency_table.cached and again.oto_latency_table.key == table.key


def test_an_unreachable_speedup_is_refused_at_construction(tmp_path, quick_tables):
    model = BertForQuestionAnswering(tiny_bert_config())
    with pytest.raises(ValueError, match=r"--oto_speedup 1000 cannot be reached on torch at 8x32.*Ask for at most"):
        OTOTrainer(model=model, args=speed_args(tmp_path / "run", oto_speedup=1000.0))
    assert len(list((tmp_path / "cache" / "latency").glob("*.json"))) == 1  # measured before refusing
    assert not (tmp_path / "run").exists(), "refused before any training"
