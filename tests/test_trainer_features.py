"""OTOTrainer with the Trainer features the HF example scripts (run_glue.py and its kin) use: evaluation during
training, best-model selection, early stopping, gradient accumulation, epochs/max_steps, bf16, label smoothing,
length-grouped sampling, evaluate/predict, model cards with the scripts' arguments, and what is refused.

The model is the real MiniLM cut to 2 layers with a sequence-classification head (its vocabulary cut to 1,000 tokens
so that checkpoints stay small); the data a few dozen synthetic examples whose label is written in their second token.
"""

from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import BertForSequenceClassification, EarlyStoppingCallback, TrainerCallback
from transformers.trainer_pt_utils import LabelSmoother, LengthGroupedSampler

from conftest import assert_exact, tiny_bert_config
from oto_hf import OTOTrainer, OTOTrainingArguments, model_stats


SEQ = 32  # oto_seq_len: the length at which FLOPs (and so the target) are counted
VOCAB = 1000
TARGET = 0.4


def classifier(minilm_path):
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(minilm_path, num_hidden_layers=2, num_labels=2)
    model.resize_token_embeddings(VOCAB)
    return model


def examples(n, seed, lengths=(12,)):
    generator = torch.Generator().manual_seed(seed)
    data = []
    for i in range(n):
        length, label = lengths[i % len(lengths)], i % 2
        ids = torch.randint(200, VOCAB, (length,), generator=generator)
        ids[0], ids[1], ids[-1] = 101, 150 + label, 102
        data.append({"input_ids": ids.tolist(), "attention_mask": [1] * length, "labels": label})
    return data


def pad(batch):
    width = max(len(e["input_ids"]) for e in batch)
    return {"input_ids": torch.tensor([e["input_ids"] + [0] * (width - len(e["input_ids"])) for e in batch]),
            "attention_mask": torch.tensor([e["attention_mask"] + [0] * (width - len(e["input_ids"])) for e in batch]),
            "labels": torch.tensor([e["labels"] for e in batch])}


TRAIN, EVAL = examples(32, seed=0), examples(16, seed=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are too small to gain from a second thread, and on a busy machine two threads cost far more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_args(output_dir, **overrides):
    """12 steps of 8 examples; the pruning window is steps [3, 9): from step 9 on, 40% of the FLOPs are gone."""
    values = dict(
        output_dir=str(output_dir), per_device_train_batch_size=8, per_device_eval_batch_size=16, max_steps=12,
        learning_rate=1e-4, use_cpu=True, report_to=[], logging_steps=3, save_strategy="no", seed=0,
        disable_tqdm=True, oto_target=TARGET, oto_seq_len=SEQ, oto_half_space_start=0.25, oto_prune_fraction=0.5,
        oto_num_periods=2,
    )
    values.update(overrides)
    return OTOTrainingArguments(**values)


def make_trainer(minilm_path, args, **kwargs):
    return OTOTrainer(model=classifier(minilm_path), args=args, train_dataset=kwargs.pop("train_dataset", TRAIN),
                      eval_dataset=EVAL, data_collator=pad, **kwargs)


def accuracy(prediction):
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def worsening_accuracy(holder):
    """An "accuracy" that is best at the first evaluation and worse at every later one, as a less pruned early
    checkpoint's usually is."""
    return lambda prediction: {"accuracy": 1 - holder[0].state.global_step / 100}


def flops_removed(model):
    return 1 - model_stats(model, SEQ).encoder_flops / model_stats(model, SEQ, exclude_zero_groups=False).encoder_flops


def assert_meets_target_and_compresses_exactly(trainer):
    model = trainer.model
    assert next(model.parameters()).dtype == torch.float32
    assert abs(flops_removed(model) - TARGET) <= 0.01, flops_removed(model)
    small = trainer.compress().eval()
    model.eval()
    batch = pad(EVAL)
    batch.pop("labels")
    with torch.no_grad():
        # The class's forward, in float32: after a bf16 run, accelerate leaves the instance's forward under autocast.
        sparse, compressed = type(model).forward(model, **batch).logits, small(**batch).logits
    assert sparse.dtype == compressed.dtype == torch.float32
    assert_exact(compressed, sparse, relative=1e-4, what="compressed vs group-sparse logits")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


# ---- evaluation during training, evaluate, predict ----


@pytest.fixture(scope="module")
def evaluated_run(minilm_path, tmp_path_factory):
    args = make_args(tmp_path_factory.mktemp("evaluated"), eval_strategy="steps", eval_steps=3)
    trainer = make_trainer(minilm_path, args, compute_metrics=accuracy)
    trainer.train()
    return trainer


def test_each_evaluation_log_entry_carries_the_sparsity_figures(evaluated_run):
    history = evaluated_run.state.log_history
    evaluations = [e for e in history if "eval_loss" in e]
    assert [e["step"] for e in evaluations] == [3, 6, 9, 12]
    for entry in evaluations:
        assert {"eval_accuracy", "oto/group_sparsity", "oto/heads_kept", "oto/ffn_neurons_kept",
                "oto/encoder_flops_kept", "oto/flops_removed", "oto/lambda"} <= set(entry)
    assert evaluations[0]["oto/flops_removed"] < TARGET / 2  # the first period is not over at step 3
    assert [e["oto/flops_removed"] for e in evaluations[2:]] == pytest.approx([flops_removed(evaluated_run.model)] * 2)
    # The training entries (what report.py plots) are as before, and no evaluation entry has a training "loss".
    training = [e for e in history if "loss" in e]
    assert [e["step"] for e in training] == [3, 6, 9, 12] and all("oto/group_sparsity" in e for e in training)
    assert not any("loss" in e for e in evaluations)


def test_training_plots_are_drawn_from_a_history_with_evaluations(evaluated_run, tmp_path):
    from oto_hf.report import _plots

    stats = model_stats(evaluated_run.model, SEQ)
    layers = {"heads_per_layer": stats.heads_per_layer, "ffn_width_per_layer": stats.ffn_width_per_layer}
    paths = _plots(tmp_path, {"mode": "oto", "model": {"before": layers, "after": layers}},
                   evaluated_run.state.log_history)
    assert paths["training"].is_file() and paths["layers"].is_file()


def test_evaluate_and_predict_run_on_the_pruned_model(evaluated_run):
    trainer = evaluated_run
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_accuracy"} <= set(metrics)
    assert not any(k.startswith("oto/") for k in metrics)  # the returned metrics are the evaluation's own
    assert "oto/flops_removed" in trainer.state.log_history[-1]  # its log entry has the sparsity beside them
    prediction = trainer.predict(EVAL)
    assert prediction.predictions.shape == (len(EVAL), 2) and {"test_loss", "test_accuracy"} <= set(prediction.metrics)
    assert prediction.metrics["test_accuracy"] == metrics["eval_accuracy"]
    small = trainer.compress().eval()
    batch = pad(EVAL)
    batch.pop("labels")
    with torch.no_grad():
        compressed = small(**batch).logits.numpy()
    assert_exact(torch.from_numpy(prediction.predictions), torch.from_numpy(compressed), relative=1e-4)
    assert_meets_target_and_compresses_exactly(trainer)


# ---- best model and early stopping ----


def test_load_best_model_at_end_only_chooses_a_checkpoint_after_the_pruning_window(minilm_path, tmp_path):
    holder = []
    args = make_args(tmp_path, eval_strategy="steps", eval_steps=3, save_strategy="steps", save_steps=3,
                     save_only_model=True, load_best_model_at_end=True, metric_for_best_model="accuracy")
    trainer = make_trainer(minilm_path, args, compute_metrics=worsening_accuracy(holder))
    holder.append(trainer)
    trainer.train()

    scores = {e["step"]: e["eval_accuracy"] for e in trainer.state.log_history if "eval_accuracy" in e}
    assert scores == pytest.approx({3: 0.97, 6: 0.94, 9: 0.91, 12: 0.88})  # best at step 3, inside the window
    assert trainer.oto_window_end == 9
    assert Path(trainer.state.best_model_checkpoint).name == "checkpoint-9"
    assert trainer.state.best_global_step == 9 and trainer.state.best_metric == pytest.approx(0.91)
    # The model at the end is checkpoint 9's, which meets the target.
    saved = load_file(tmp_path / "checkpoint-9" / "model.safetensors")
    for name, tensor in trainer.model.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name
    assert_meets_target_and_compresses_exactly(trainer)
    # Its card reports the evaluation of the model it holds (checkpoint 9's), not the last one's.
    trainer.save_model()
    assert "| evaluation data | evaluation | Accuracy | 0.91 |" in ModelCard.load(tmp_path / "README.md").content


class StopAtEveryEvaluation(TrainerCallback):
    def on_evaluate(self, args, state, control, **kwargs):
        control.should_training_stop = True


@pytest.mark.parametrize("stopper", ["early_stopping", "stop_at_every_evaluation"])
def test_early_stopping_waits_for_the_pruning_window_to_close(stopper, minilm_path, tmp_path):
    # 16 steps, window [4, 12), evaluations every 2 steps, each worse than the one before.
    holder = []
    args = make_args(tmp_path, max_steps=16, eval_strategy="steps", eval_steps=2, metric_for_best_model="accuracy",
                     logging_steps=2)
    trainer = make_trainer(minilm_path, args, compute_metrics=worsening_accuracy(holder))
    holder.append(trainer)
    # Added after construction, so after the trainer's own callbacks: the order must not matter.
    trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=1) if stopper == "early_stopping"
                         else StopAtEveryEvaluation())
    trainer.train()

    assert trainer.oto_window_end == 12
    evaluated = [e["step"] for e in trainer.state.log_history if "eval_accuracy" in e]
    if stopper == "early_stopping":
        # Steps 2-10 do not count; step 12 sets the best, step 14 is worse: patience 1 is used up.
        assert evaluated == [2, 4, 6, 8, 10, 12, 14] and trainer.state.global_step == 14
        assert trainer.state.best_metric == pytest.approx(0.88)  # step 12's
    else:
        assert evaluated == [2, 4, 6, 8, 10, 12] and trainer.state.global_step == 12
    assert_meets_target_and_compresses_exactly(trainer)


# ---- gradient accumulation, max_steps / epochs, bf16, label smoothing, length-grouped sampling ----


class RecordAutocast(TrainerCallback):
    """Records the dtype of the first layer's attention output during training steps."""

    def __init__(self):
        self.dtypes = set()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        layer = model.bert.encoder.layer[0].attention.self.query
        layer.register_forward_hook(lambda module, inputs, output: self.dtypes.add(output.dtype)
                                    if module.training else None)


@pytest.mark.parametrize("feature", ["gradient_accumulation", "epochs", "max_steps_over_epochs", "bf16",
                                     "label_smoothing", "group_by_length"])
def test_trainer_features_train_to_the_target_and_compress_exactly(feature, minilm_path, tmp_path):
    overrides, train = {}, TRAIN
    if feature == "gradient_accumulation":
        overrides = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=8)
    elif feature == "epochs":
        overrides = dict(max_steps=-1, num_train_epochs=3)  # 4 steps an epoch: 12 steps
    elif feature == "max_steps_over_epochs":
        overrides = dict(max_steps=8, num_train_epochs=100)
    elif feature == "bf16":
        overrides = dict(bf16=True)
    elif feature == "label_smoothing":
        overrides = dict(label_smoothing_factor=0.1)
    elif feature == "group_by_length":
        overrides = dict(train_sampling_strategy="group_by_length")
        train = examples(32, seed=0, lengths=(6, 20, 9, 14, 28, 11, 17, 8))
    recorder = RecordAutocast()
    trainer = make_trainer(minilm_path, make_args(tmp_path, **overrides), train_dataset=train, callbacks=[recorder])
    trainer.train()

    steps = {"gradient_accumulation": 8, "max_steps_over_epochs": 8}.get(feature, 12)
    # The window is counted in optimizer steps: [round(0.25 * steps), + round(0.5 * steps)).
    assert trainer.state.max_steps == trainer.state.global_step == trainer.hspg.step_count == steps
    assert trainer.oto_window_end == round(0.25 * steps) + round(0.5 * steps)
    if feature == "gradient_accumulation":
        assert trainer.oto_window_end == 6  # counted in micro-batches, the window would end at 12, after training
    assert recorder.dtypes == ({torch.bfloat16} if feature == "bf16" else {torch.float32})
    if feature == "label_smoothing":
        batch = pad(EVAL)
        model = trainer.model.eval()
        with torch.no_grad():
            outputs = model(**batch)
            smoothed = trainer.compute_loss(model, dict(batch))
        assert isinstance(trainer.label_smoother, LabelSmoother)
        assert smoothed == pytest.approx(float(LabelSmoother(epsilon=0.1)(outputs, batch["labels"])))
        assert smoothed != pytest.approx(float(outputs.loss))
    if feature == "group_by_length":
        assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    assert_meets_target_and_compresses_exactly(trainer)


class RecordGradients(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.gradients = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone()


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_gradient_accumulation_gives_the_gradients_and_loss_of_the_whole_batch(label_smoothing, tmp_path):
    # transformers would skip the division by the accumulation steps for these heads (their forward takes **kwargs)
    # and so make the loss and gradients k times too large.
    runs = []
    for batch, accumulation in ((8, 1), (2, 4)):
        torch.manual_seed(0)
        recorder = RecordGradients()
        args = make_args(tmp_path / f"ga{accumulation}", per_device_train_batch_size=batch, max_steps=1,
                         gradient_accumulation_steps=accumulation, learning_rate=0.0, max_grad_norm=1e9,
                         logging_steps=1, label_smoothing_factor=label_smoothing)
        trainer = OTOTrainer(model=BertForSequenceClassification(tiny_bert_config(vocab_size=VOCAB, num_labels=2)),
                             args=args, train_dataset=EVAL[:8], data_collator=pad, callbacks=[recorder])
        result = trainer.train()
        runs.append((recorder.gradients, result.training_loss))
    (whole, whole_loss), (accumulated, accumulated_loss) = runs
    assert accumulated_loss == pytest.approx(whole_loss, rel=1e-4)
    torch.testing.assert_close(accumulated, whole, rtol=1e-3, atol=1e-5 * float(whole.abs().max()))


def test_the_pruning_window_ends_inside_training_whatever_the_rounding(tmp_path):
    # 0.75 * 2 and 0.25 * 2 round to 2 and 0 (+1 at least): unclamped, the window would end at step 3 of 2.
    args = make_args(tmp_path, max_steps=2, oto_half_space_start=0.75, oto_prune_fraction=0.25, oto_num_periods=1)
    trainer = OTOTrainer(model=BertForSequenceClassification(tiny_bert_config()), args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=2)
    assert trainer.oto_window_end == 2


def test_a_run_too_short_for_its_schedule_is_warned_with_the_steps_it_needs(tmp_path, caplog):
    def window(max_steps):
        args = make_args(tmp_path, max_steps=max_steps, oto_half_space_start=0.1, oto_prune_fraction=0.5,
                         oto_num_periods=4)
        trainer = OTOTrainer(model=BertForSequenceClassification(tiny_bert_config()), args=args)
        caplog.clear()
        with caplog.at_level("WARNING", logger="oto_hf"):
            trainer.create_optimizer_and_scheduler(num_training_steps=max_steps)
        return trainer.hspg.settings, [r.getMessage() for r in caplog.records if "pruning window" in r.getMessage()]

    settings, warned = window(2)  # the whole target at step 0, in one step
    assert (settings.half_space_start_step, settings.prune_steps, settings.num_periods) == (0, 1, 1)
    assert len(warned) == 1 and "1 optimizer step(s) for 4 period(s)" in warned[0]
    assert "train at least 40 optimizer steps" in warned[0]  # 5 steps a period, 4 periods, half of the run
    assert window(40)[1] == []


# ---- model cards with the example scripts' arguments ----


def test_create_model_card_and_push_to_hub_write_the_example_scripts_arguments(minilm_path, tmp_path, monkeypatch):
    calls = []

    class Hub:  # records the two calls Trainer.push_to_hub makes; there is no Hub here
        def create_repo(self, repo_id, **kwargs):
            return type("RepoUrl", (), {"repo_id": f"user/{repo_id}"})()

        def upload_folder(self, **kwargs):
            calls.append(kwargs)

    monkeypatch.setattr("transformers.trainer.hf_api", lambda: Hub())
    args = make_args(tmp_path / "minilm-mrpc-oto", max_steps=4, oto_half_space_start=0.0, eval_strategy="steps",
                     eval_steps=4)
    trainer = make_trainer(minilm_path, args, compute_metrics=accuracy)
    trainer.train()
    # What run_glue.py passes for a GLUE task.
    kwargs = {"finetuned_from": "sentence-transformers/all-MiniLM-L6-v2", "tasks": "text-classification",
              "language": "en", "dataset_tags": "glue", "dataset_args": "mrpc", "dataset": "GLUE MRPC",
              "tags": ["my-experiment"]}
    trainer.push_to_hub(**kwargs)
    (upload,) = calls
    folder = Path(upload["folder_path"])
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert data.model_name == "minilm-mrpc-oto" and data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert data.datasets == ["glue"] and data.language == "en" and data.pipeline_tag == "text-classification"
    assert {"oto-hf", "structured-pruning", "bert", "my-experiment"} <= set(data.tags)
    (result,) = data.eval_results
    assert (result.task_type, result.dataset_type, result.dataset_name, result.dataset_config, result.metric_type) == (
        "text-classification", "glue", "GLUE MRPC", "mrpc", "accuracy")
    assert result.metric_value == pytest.approx(trainer.state.log_history[-2]["eval_accuracy"], abs=1e-4)
    assert "| GLUE MRPC | evaluation | Accuracy |" in card.content
    # Lists, a task that is no pipeline tag and a licence, through create_model_card directly.
    trainer.create_model_card(model_name="my-model", tasks=["multiple-choice"], dataset_tags=["swag"],
                              dataset=["SWAG regular"], dataset_args=["regular"], language=["en", "fr"],
                              license="apache-2.0", tags="swag-run")
    data = ModelCard.load(tmp_path / "minilm-mrpc-oto" / "README.md").data
    assert data.model_name == "my-model" and data.license == "apache-2.0" and data.language == ["en", "fr"]
    assert data.pipeline_tag == "text-classification" and "swag-run" in data.tags and data.datasets == ["swag"]
    (result,) = data.eval_results
    assert (result.task_type, result.dataset_type, result.dataset_config) == ("multiple-choice", "swag", "regular")


def test_compress_cuts_once_per_state_of_the_weights(minilm_path, tmp_path):
    trainer = make_trainer(minilm_path, make_args(tmp_path, max_steps=4, oto_half_space_start=0.0))
    trainer.train()
    small = trainer.compress()
    assert trainer.compress() is small  # nothing changed: the same cut model (save_model reuses it)
    trainer.save_model(str(tmp_path / "saved"))
    assert trainer.compress() is small
    with torch.no_grad():  # any in-place write to a parameter makes it stale
        trainer.model.classifier.bias.add_(1.0)
    fresh = trainer.compress()
    assert fresh is not small
    torch.testing.assert_close(fresh.classifier.bias, trainer.model.classifier.bias)
    trainer.model.classifier.bias.data.sub_(1.0)  # .data bypasses the version counters: refresh says so
    assert trainer.compress() is fresh
    torch.testing.assert_close(trainer.compress(refresh=True).classifier.bias, trainer.model.classifier.bias)


def test_card_info_from_a_script_and_the_deprecated_dict(minilm_path, tmp_path):
    from oto_hf.model_card import CardInfo, Evaluation

    trainer = make_trainer(minilm_path, make_args(tmp_path / "run", max_steps=2, oto_half_space_start=0.0))
    trainer.train()
    evaluation = Evaluation("glue", "GLUE SST-2", "validation", {"accuracy": 0.75}, dataset_config="sst2")
    trainer.card_info = CardInfo(model_name="from-script", evaluations=[evaluation])
    trainer.save_model()
    data = ModelCard.load(tmp_path / "run" / "README.md").data
    assert data.model_name == "from-script" and [r.metric_value for r in data.eval_results] == [0.75]
    # A published model carries no pickle of the training arguments (it holds the machine's absolute paths).
    assert not (tmp_path / "run" / "training_args.bin").exists()
    with pytest.warns(DeprecationWarning, match="card_info"):
        trainer.model_card_info = {"model_name": "from-dict"}
    assert trainer.card_info == CardInfo(model_name="from-dict")
    trainer.save_model()
    assert ModelCard.load(tmp_path / "run" / "README.md").data.model_name == "from-dict"


# ---- what is refused, before any training step ----


def test_model_init_and_hyperparameter_search_are_refused_with_what_to_do_instead(tmp_path):
    args = make_args(tmp_path)
    init = lambda: BertForSequenceClassification(tiny_bert_config())  # noqa: E731
    with pytest.raises(ValueError, match="does not take model_init.*construct one\\s+OTOTrainer per trial"):
        OTOTrainer(args=args, model_init=init)
    with pytest.raises(ValueError, match="does not take model_init"):
        OTOTrainer(None, args, None, None, None, None, init)  # positionally, where Trainer takes it
    trainer = OTOTrainer(model=init(), args=args)
    with pytest.raises(ValueError, match="cannot run hyperparameter_search.*loop over the settings"):
        trainer.hyperparameter_search(hp_space=lambda trial: {}, n_trials=2)


def test_load_best_model_at_end_without_a_target_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--load_best_model_at_end cannot be combined with --oto_lambda_only"):
        make_args(tmp_path, oto_lambda_only=True, eval_strategy="steps", eval_steps=3, save_strategy="steps",
                  save_steps=3, load_best_model_at_end=True)
    # Without load_best_model_at_end, a λ-only run may still evaluate and track its best metric.
    make_args(tmp_path, oto_lambda_only=True, eval_strategy="steps", eval_steps=3, metric_for_best_model="loss")


def test_load_best_model_at_end_with_no_evaluation_after_the_window_is_refused_at_train_start(minilm_path, tmp_path):
    args = make_args(tmp_path, eval_strategy="steps", eval_steps=3, save_strategy="steps", save_steps=3,
                     load_best_model_at_end=True, eval_delay=20)
    trainer = make_trainer(minilm_path, args)
    with pytest.raises(ValueError, match="closes at step 9 of 12.*--eval_delay 20"):
        trainer.train()
    assert trainer.state.global_step == 0 and trainer.hspg.step_count == 0
