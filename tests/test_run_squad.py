"""run_squad.py end to end on a tiny real setting (MiniLM cut to 2 layers, tens of real SQuAD questions)."""

import gzip
import json
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard
import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, BertForQuestionAnswering, GPT2Config, GPT2Model

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
import run_squad  # noqa: E402
from oto_hf.runner import RETIRED_OPTIONS, RunError  # noqa: E402
from oto_hf.tasks import squad  # noqa: E402
from oto_hf.tasks.common import sample_examples  # noqa: E402


@pytest.fixture(scope="module")
def small_model_dir(minilm_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("minilm2")
    BertForQuestionAnswering.from_pretrained(minilm_path, num_hidden_layers=2).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    # A derived model's card names the Hub model it came from, as the cards oto_hf writes do.
    (folder / "README.md").write_text("---\nbase_model: sentence-transformers/all-MiniLM-L6-v2\nlicense: apache-2.0\n"
                                      "---\n\nall-MiniLM-L6-v2 cut to 2 layers.\n")
    return folder


def read_card(folder, *paths_it_must_not_name):
    """The card in `folder`, parsed back with huggingface_hub; its text names no machine path and no temporary name."""
    card = ModelCard.load(folder / "README.md")
    for path in (*paths_it_must_not_name, ".partial", "site-packages", "/tmp/", "/root/"):
        assert str(path) not in card.content, path
    return card


def tiny_argv(model_dir, output_dir, squad_dir, **overrides):
    values = {
        "model_name_or_path": model_dir, "output_dir": output_dir,
        "train_file": squad_dir / squad.SQUAD_TRAIN_GENUINE_FILE, "validation_file": squad_dir / squad.SQUAD_DEV_FILE,
        "max_train_samples": 40, "max_eval_samples": 24, "max_seq_length": 128, "eval_max_seq_length": 128,
        "doc_stride": 32, "max_query_length": 32, "num_train_epochs": 1, "per_device_train_batch_size": 8,
        "learning_rate": 1e-4, "use_cpu": "true", "report_to": "none", "logging_steps": 1, "save_steps": 2,
        "oto_target": 0.3, "oto_seq_len": 128, "oto_half_space_start": 0.2, "oto_prune_fraction": 0.6,
        "oto_num_periods": 2, "report_latency_repeats": 2, "report_latency_batch_size": 2, "seed": 0,
    }
    values.update(overrides)
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def test_tiny_end_to_end_run(small_model_dir, squad_dir, tmp_path):
    out = tmp_path / "run"
    report = run_squad.main(tiny_argv(small_model_dir, out, squad_dir, export_onnx="true", quantize="int8"))

    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["quality"] == report["quality"]
    # --export_onnx --quantize int8: the ONNX file's start/end logits agree with PyTorch's, the int8 file is scored
    # with EM/F1 on the same dev questions and both are timed in onnxruntime.
    onnx = report["onnx"]
    assert set(onnx["max_abs_diff"]) == {"start_logits", "end_logits"} and max(onnx["max_abs_diff"].values()) <= 1e-4
    assert {"exact_match", "f1"} <= set(onnx["int8"]["quality"]) and onnx["int8"]["latency"]["speedup"] > 0
    assert (out / "onnx" / "model.int8.onnx").is_file() and "## ONNX Runtime" in (out / "report.md").read_text()
    assert report["quality"]["identical_predictions"] is True
    assert report["quality"]["compressed"] == report["quality"]["group_sparse"]
    assert abs(1 - report["model"]["kept"]["encoder_flops"] - 0.3) <= 0.01
    assert report["latency"]["speedup"] > 0 and report["latency"]["encoder_flops_ratio"] > 1.3
    for name in ("report.md", "plots/training.png", "plots/kept_per_layer.png", "compressed_model/config.json"):
        assert (out / name).is_file(), name
    assert not (out / "compressed_model.partial").exists()
    md = (out / "report.md").read_text()
    assert "identical predictions" in md and "| layer | heads | FFN width |" in md

    # The model card: Hub metadata the Hub reads, the run's real name, and no path of this machine.
    card = read_card(out / "compressed_model", tmp_path, small_model_dir, squad_dir)
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and card.data.license == "apache-2.0"
    assert card.data.pipeline_tag == "question-answering" and card.data.library_name == "transformers"
    assert {"oto-hf", "structured-pruning", "bert"} <= set(card.data.tags)
    assert {(r.task_type, r.dataset_name, r.dataset_split, r.metric_type, r.metric_value) for r in card.data.eval_results} \
        == {("question-answering", "dev-v1.1.json.gz", "validation", key, round(report["quality"]["compressed"][key], 4))
            for key in ("exact_match", "f1")}
    assert card.content.count("\n# all-MiniLM-L6-v2-squad-oto30\n") == 1
    assert "trust_remote_code=True" in card.content and "| 1 | " in card.content and "@inproceedings{chen2021otov1" in card.content
    assert f"{report['latency']['speedup']:.2f}× faster" in card.content

    # The saved model, reloaded, scores exactly what the report says.
    model = AutoModelForQuestionAnswering.from_pretrained(out / "compressed_model")
    tokenizer = AutoTokenizer.from_pretrained(out / "compressed_model")
    raw = squad.load_squad(validation_file=squad_dir / squad.SQUAD_DEV_FILE)
    examples = sample_examples(raw["validation"], 24, 0)
    features = squad.tokenize_squad(examples, tokenizer, "validation", max_seq_length=128, doc_stride=32,
                                    max_query_length=32)
    metrics, answers = squad.evaluate_squad(model, examples, features)
    assert metrics == report["quality"]["compressed"]
    assert json.loads((out / "eval_predictions.json").read_text()) == answers

    # A second start on the same folder refuses to overwrite the finished run.
    with pytest.raises(RunError, match="already holds a finished run"):
        run_squad.main(tiny_argv(small_model_dir, out, squad_dir))

    # The answering command works on the saved model.
    context = examples[0]["context"]
    result = subprocess.run([sys.executable, "-m", "oto_hf.answer", str(out / "compressed_model"), "--question",
                             examples[0]["question"], "--context", context, "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert context[answer["start"] : answer["end"]] == answer["answer"]


def test_interrupted_run_resumes_from_its_last_checkpoint(small_model_dir, squad_dir, tmp_path):
    out = tmp_path / "run"
    argv = tiny_argv(small_model_dir, out, squad_dir, max_steps=4, report_latency_repeats=0)
    # "Interrupt" after 2 of 4 steps: a run that stops at step 2 leaves checkpoint-2 and no report.
    first = run_squad.main(tiny_argv(small_model_dir, out, squad_dir, max_steps=2, report_latency_repeats=0))
    (out / "report.json").unlink()  # as if it had been killed before reporting
    assert (out / "checkpoint-2").is_dir()
    second = run_squad.main(argv)
    assert second["training"]["steps"] == 4 and first["training"]["steps"] == 2


def test_distillation_from_a_teacher_folder(small_model_dir, squad_dir, tmp_path):
    out = tmp_path / "run"
    report = run_squad.main(tiny_argv(small_model_dir, out, squad_dir, max_steps=4, report_latency_repeats=0,
                                      teacher_model_name_or_path=small_model_dir, distillation_alpha=0.6))
    assert report["distillation"] == {"teacher": str(small_model_dir), "alpha": 0.6, "temperature": 2.0}
    history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    kd = [entry["distill_kd_loss"] for entry in history if "distill_kd_loss" in entry]
    assert len(kd) == 4 and all(value >= 0 for value in kd)  # logging_steps 1


def test_bad_teacher_or_distillation_settings_are_refused_before_any_work(small_model_dir, squad_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RunError, match="--teacher_model_name_or_path: no such folder"):
        run_squad.main(tiny_argv(small_model_dir, out, squad_dir, teacher_model_name_or_path=tmp_path / "nowhere"))
    (tmp_path / "no_config").mkdir()
    with pytest.raises(RunError, match="--teacher_model_name_or_path: cannot read a model config"):
        run_squad.main(tiny_argv(small_model_dir, out, squad_dir, teacher_model_name_or_path=tmp_path / "no_config"))
    with pytest.raises(RunError, match="alpha must lie in"):
        run_squad.main(tiny_argv(small_model_dir, out, squad_dir, teacher_model_name_or_path=small_model_dir,
                                 distillation_alpha=0))
    assert not (out / "report.json").exists() and not list(out.glob("checkpoint-*"))


@pytest.mark.parametrize("option, value", [("distillation_hidden_weight", "1"), ("oto_hold_lr_through_window", "true"),
                                           ("oto_saliency_zero_init", "false")])
def test_a_retired_option_is_refused_before_any_work_on_the_command_line_and_in_a_config(
        small_model_dir, squad_dir, tmp_path, option, value):
    out = tmp_path / "run"
    with pytest.raises(RunError, match=f"--{option} was retired in oto_hf 0.3: .*commit 9a312b9 still runs it"):
        run_squad.main(tiny_argv(small_model_dir, out, squad_dir, **{option: value}))
    config = tmp_path / "old.yaml"
    config.write_text((REPO_ROOT / "configs" / "quickstart.yaml").read_text() + f"{option}: {value}\n")
    with pytest.raises(RunError, match=f"--{option} was retired"):
        run_squad.parse_arguments([str(config), "--output_dir", str(out)])
    assert not out.exists() and RETIRED_OPTIONS[option].startswith(f"--{option} was retired")


def test_the_script_prints_a_retired_option_as_one_error_line_and_exits_with_status_2(tmp_path):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "run_squad.py"), "--distillation_hidden_weight", "1",
                             "--output_dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == f"run_squad.py: error: {RETIRED_OPTIONS['distillation_hidden_weight']}"
    assert not (tmp_path / "run").exists()


def test_dense_run_then_pruning_from_it_and_distilling_from_it(small_model_dir, squad_dir, tmp_path):
    """The dense-start + teacher recipe with the CLI alone: --dense, then OTO from that model, taught by it."""
    dense_out = tmp_path / "dense"
    dense = run_squad.main(tiny_argv(small_model_dir, dense_out, squad_dir, dense="true", report_latency_repeats=0))
    assert dense["mode"] == "dense" and dense["training"]["optimizer"] == "torch.optim.adamw.AdamW"
    assert json.loads((dense_out / "report.json").read_text())["quality"] == dense["quality"]
    assert "# Dense fine-tuning report" in (dense_out / "report.md").read_text()
    assert not (dense_out / "compressed_model").exists() and not (dense_out / "model.partial").exists()

    # Full size and trained: the saved model has every head and neuron, differs from its start, and scores what the
    # report says.
    model = AutoModelForQuestionAnswering.from_pretrained(dense_out / "model")
    start = AutoModelForQuestionAnswering.from_pretrained(small_model_dir)
    assert model.config.model_type == "bert"
    assert dense["model"]["after"] == dense["model"]["before"]
    assert dense["model"]["after"]["heads_per_layer"] == [start.config.num_attention_heads] * 2
    assert not torch.equal(model.bert.encoder.layer[0].attention.self.query.weight,
                           start.bert.encoder.layer[0].attention.self.query.weight)
    raw = squad.load_squad(validation_file=squad_dir / squad.SQUAD_DEV_FILE)
    examples = sample_examples(raw["validation"], 24, 0)
    features = squad.tokenize_squad(examples, AutoTokenizer.from_pretrained(dense_out / "model"), "validation",
                                    max_seq_length=128, doc_stride=32, max_query_length=32)
    metrics, answers = squad.evaluate_squad(model, examples, features)
    assert metrics == dense["quality"]["dense"]
    assert json.loads((dense_out / "eval_predictions.json").read_text()) == answers

    # The second run of the recipe starts from that model and distils from it.
    pruned = run_squad.main(tiny_argv(dense_out / "model", tmp_path / "oto", squad_dir, report_latency_repeats=0,
                                      teacher_model_name_or_path=dense_out / "model"))
    assert pruned["mode"] == "oto" and pruned["distillation"]["teacher"] == str(dense_out / "model")
    assert abs(1 - pruned["model"]["kept"]["encoder_flops"] - 0.3) <= 0.01
    assert pruned["quality"]["identical_predictions"] is True

    # Both cards name the Hub model the chain started from; the pruned model's card sets its scores beside the dense
    # model's, read from the dense model's own card.
    dense_card = read_card(dense_out / "model", tmp_path, small_model_dir)
    assert dense_card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert {r.metric_type: r.metric_value for r in dense_card.data.eval_results} == {
        k: round(v, 4) for k, v in dense["quality"]["dense"].items() if k in ("exact_match", "f1")}
    card = read_card(tmp_path / "oto" / "compressed_model", tmp_path, small_model_dir)
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert "dense baseline" in card.content and f"{dense['quality']['dense']['f1']:.2f} |" in card.content
    assert '"teacher": "a local model derived from sentence-transformers/all-MiniLM-L6-v2"' in card.content


def test_dense_run_with_a_teacher_is_refused_before_any_work(small_model_dir, squad_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RunError, match="--dense fine-tunes the full model without a teacher"):
        run_squad.main(tiny_argv(small_model_dir, out, squad_dir, dense="true",
                                 teacher_model_name_or_path=small_model_dir))
    assert not (out / "report.json").exists() and not list(out.glob("checkpoint-*"))


def write_gz(path, data):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize("problem", ["missing", "not_json", "not_squad"])
def test_bad_data_file_is_named_before_any_work(problem, small_model_dir, squad_dir, tmp_path):
    bad = tmp_path / "train.json.gz"
    if problem == "not_json":
        write_gz(bad, "{ this is not json")
    elif problem == "not_squad":
        write_gz(bad, {"version": "1.1", "articles": []})
    out = tmp_path / "run"
    with pytest.raises(RunError, match="train.json.gz"):
        run_squad.main(tiny_argv(small_model_dir, out, squad_dir, train_file=bad))
    assert not (out / "report.json").exists() and not (out / "compressed_model").exists()


@pytest.mark.parametrize("model_type", ["distilbert", "modernbert"])
def test_other_families_run_end_to_end(model_type, minilm_path, squad_dir, tmp_path):
    """A tiny random DistilBERT / ModernBERT QA model (neither takes token_type_ids, which the MiniLM tokenizer
    gives) through the whole job: trained to its target, compressed with identical answers, reloadable."""
    import families

    folder = tmp_path / model_type
    families.build(model_type, families.task_heads(model_type)["AutoModelForQuestionAnswering"],
                   vocab_size=30522, max_position_embeddings=512).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    out = tmp_path / "run"
    report = run_squad.main(tiny_argv(folder, out, squad_dir, max_train_samples=16, max_eval_samples=8,
                                      report_latency_repeats=0))
    assert report["quality"]["identical_predictions"] is True
    assert abs(1 - report["model"]["kept"]["encoder_flops"] - 0.3) <= 0.01
    assert json.loads((out / "compressed_model" / "config.json").read_text())["model_type"] == "oto_" + model_type
    assert AutoModelForQuestionAnswering.from_pretrained(out / "compressed_model").config.num_attention_heads_per_layer


def test_model_that_is_not_supported_is_refused(squad_dir, tmp_path):
    gpt2 = tmp_path / "gpt2"
    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(gpt2)
    with pytest.raises(RunError, match="'gpt2' model.*bert, roberta"):
        run_squad.main(tiny_argv(gpt2, tmp_path / "run", squad_dir))
    with pytest.raises(RunError, match="no such folder"):
        run_squad.main(tiny_argv(tmp_path / "nowhere", tmp_path / "run", squad_dir))
    (tmp_path / "no_config").mkdir()
    with pytest.raises(RunError, match="cannot read a model config"):
        run_squad.main(tiny_argv(tmp_path / "no_config", tmp_path / "run", squad_dir))


def test_unwritable_output_dir_is_refused(small_model_dir, squad_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(RunError, match="not writable"):
        run_squad.main(tiny_argv(small_model_dir, blocker / "run", squad_dir))


def test_config_file_with_overrides(tmp_path):
    args = run_squad.parse_arguments([str(REPO_ROOT / "configs" / "quickstart.yaml"), "--oto_target", "0.5",
                                      "--output_dir", str(tmp_path)])
    model_args, data_args, training_args, run_args = args
    assert training_args.oto_target == 0.5 and data_args.max_train_samples == 1600
    assert training_args.output_dir == str(tmp_path) and training_args.use_cpu
    run_squad.parse_arguments([str(REPO_ROOT / "configs" / "minilm_squad_p1.yaml"), "--output_dir", str(tmp_path)])
    # The bert-base config is for a GPU (bf16): here only check that every key is a known option.
    _, data_args, training_args, _ = run_squad.parse_arguments(
        [str(REPO_ROOT / "configs" / "bert_base_squad.yaml"), "--bf16", "false", "--output_dir", str(tmp_path)])
    assert data_args.dataset_name == "squad" and training_args.oto_num_periods == 8
    with pytest.raises(RunError, match="does not exist"):
        run_squad.parse_arguments(["nowhere.yaml"])
    # Options alone override the default (quickstart) config.
    _, data_args, training_args, _ = run_squad.parse_arguments(["--oto_target", "0.4", "--output_dir", str(tmp_path)])
    assert training_args.oto_target == 0.4 and data_args.max_train_samples == 1600



def test_overwrite_output_dir_starts_fresh_instead_of_resuming(small_model_dir, squad_dir, tmp_path):
    """--overwrite_output_dir true is the fresh start the trainer's refusal of a mismatched resume points to: the
    checkpoints already in the folder are not resumed from."""
    out = tmp_path / "run"
    run_squad.main(tiny_argv(small_model_dir, out, squad_dir, max_steps=2, report_latency_repeats=0))
    assert (out / "checkpoint-2").is_dir()
    again = run_squad.main(tiny_argv(small_model_dir, out, squad_dir, max_steps=2, report_latency_repeats=0,
                                     oto_target=0.2, overwrite_output_dir="true"))
    assert again["training"]["steps"] == 2 and again["oto_settings"]["oto_target"] == 0.2


def test_a_truncated_weight_file_is_named_before_any_data_work(small_model_dir, squad_dir, tmp_path, monkeypatch):
    # Issue 43 item 6: not safetensors' bare error after tokenising, but the file named, before the data is read.
    import shutil

    torn = tmp_path / "torn"
    shutil.copytree(small_model_dir, torn)
    weights = torn / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the model was checked")

    monkeypatch.setattr(run_squad.TASK, "load_data", no_data)
    with pytest.raises(RunError, match=rf"--model_name_or_path: cannot load weights from {weights}: "):
        run_squad.main(tiny_argv(torn, tmp_path / "run", squad_dir))
    with pytest.raises(RunError, match=r"--model_name_or_path: no such folder 'runs/x/model'"):
        run_squad.main(tiny_argv("runs/x/model", tmp_path / "run", squad_dir))
