#!/usr/bin/env python
"""Text classification end to end (GLUE or your own files): train an encoder with HSPG, prune, compress, evaluate,
report.

    python run_glue.py                                    # configs/sst2_quickstart.yaml: SST-2, ~15 min on 2 CPU cores
    python run_glue.py configs/minilm_rte.yaml            # RTE (sentence pairs), the whole training set
    python run_glue.py --task_name rte --oto_target 0.7 --output_dir runs/rte70   # options override the quickstart
    python run_glue.py --train_file train.csv --validation_file dev.csv --text_columns review --output_dir runs/mine
    python run_glue.py --help                             # every option

`--task_name` takes a GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli): GLUE's own files from a local
folder ($OTO_GLUE_DIR or ../shared/data/glue) when they are there, else the Hub's nyu-mll/glue. Your own CSV / TSV /
JSON files need one or two text columns and a label column (found by name, or --text_columns / --label_column); a
label with a fraction in it makes the task a regression. Every row is checked before training starts.

The dense baseline and the dense-start + teacher recipe are two runs, as with run_squad.py:

    python run_glue.py --dense --output_dir runs/sst2_dense                          # plain AdamW, no pruning
    python run_glue.py --model_name_or_path runs/sst2_dense/model --teacher_model_name_or_path runs/sst2_dense/model \\
        --output_dir runs/sst2_oto50_from_dense

Writes into --output_dir: checkpoints while training (an interrupted run resumes from the last one when started
again), `compressed_model/` (the pruned model with its model card, loadable with `from_pretrained`),
`eval_predictions.json` (its label for each evaluation example, in order), `report.json`, `report.md` and `plots/`.
The report is written last: a folder with a report.json holds a finished run. With --dense, `model/` (the fine-tuned
full-size model) instead of `compressed_model/`.
"""

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, set_seed

import oto_hf
from oto_hf import glue, job
# ModelArguments, RunArguments, config_to_cli and resolve_model_path are also read from here by benchmarks/quality.py.
from oto_hf.job import (  # noqa: F401
    ModelArguments, RunArguments, RunError, config_to_cli, distillation_kwargs, export_and_measure,
    finish, main_guard, measure_latency, resolve_model_path, save_model_atomic, short_name,
    train_resuming, training_report
)
from oto_hf.squad import model_input_names, sample_questions


logger = logging.getLogger("run_glue")
REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "sst2_quickstart.yaml"
TASK_TYPE = "text-classification"


@dataclass
class DataArguments:
    task_name: str | None = field(
        default=None,
        metadata={"help": "A GLUE task: cola, sst2, mrpc, qqp, stsb, mnli (matched dev), qnli, rte, wnli. Its data: "
                  "the local GLUE files if found, else the Hub; with --train_file/--validation_file it only sets the "
                  "labels and metrics."},
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Load the task from this Hub dataset instead of local files (e.g. "
                                "nyu-mll/glue, the default when no local files are found)."},
    )
    train_file: str | None = field(default=None, metadata={"help": "Your training data: .csv, .tsv, .json or .jsonl (optionally .gz)."})
    validation_file: str | None = field(default=None, metadata={"help": "Your evaluation data, same format."})
    text_columns: list[str] | None = field(
        default=None, metadata={"help": "The one or two text columns of your files (default: sentence1 sentence2, "
                                "premise hypothesis, question sentence, question1 question2, sentence or text)."},
    )
    label_column: str | None = field(default=None, metadata={"help": "The label column of your files (default: label)."})
    max_seq_length: int = field(
        default=128, metadata={"help": "Longer inputs are truncated to this many tokens; batches are padded to their "
                               "longest input. Also the length of the latency measurement."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on this many sampled examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on this many sampled examples."})
    sample_seed: int = field(default=0, metadata={"help": "Seed of the samples."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})


def parse_arguments(argv: list[str]):
    """(model, data, training, run) arguments; without a config first, configs/sst2_quickstart.yaml is the config."""
    model_args, data_args, training_args, run_args = job.parse_arguments(DataArguments, argv, DEFAULT_CONFIG)
    # The quickstart's task (SST-2) is its data, not the task of the user's files: files given with options alone and
    # no --task_name are read as the user's own (their columns, labels and metrics), not as SST-2.
    given = {a.split("=")[0] for a in argv}
    if (not argv or argv[0].startswith("-")) and given & {"--train_file", "--validation_file"} \
            and "--task_name" not in given:
        data_args.task_name = None
    return model_args, data_args, training_args, run_args


def load_data(data_args: DataArguments) -> glue.ClassificationData:
    """Both splits, checked row by row and sampled (--max_train_samples, --max_eval_samples)."""
    try:
        data = glue.load_classification_data(
            task_name=data_args.task_name, dataset_name=data_args.dataset_name, train_file=data_args.train_file,
            validation_file=data_args.validation_file, text_columns=data_args.text_columns,
            label_column=data_args.label_column)
    except glue.GlueDataError as error:
        raise RunError(str(error)) from error
    data.train = sample_questions(data.train, data_args.max_train_samples, data_args.sample_seed)
    data.validation = sample_questions(data.validation, data_args.max_eval_samples, data_args.sample_seed)
    return data


def tokenize(data: glue.ClassificationData, tokenizer, max_seq_length: int, num_proc: int | None = None) -> dict:
    """{"train": …, "validation": …}: input ids (truncated, not padded), attention mask, token type ids and labels."""
    def encode(batch):
        texts = (batch["text_a"], batch["text_b"]) if data.pair else (batch["text_a"],)
        return tokenizer(*texts, truncation=True, max_length=max_seq_length)

    out = {}
    for split, dataset in (("train", data.train), ("validation", data.validation)):
        encoded = dataset.map(encode, batched=True, num_proc=num_proc, remove_columns=[c for c in dataset.column_names
                                                                                       if c != "label"],
                              desc=f"tokenizing {split}")
        out[split] = encoded.rename_column("label", "labels")
    return out


def load_model(path: str, data: glue.ClassificationData, attn_implementation: str):
    """A classification model of `path` with a head for the data's labels: a new head, unless `path` already has one
    with these labels (e.g. the dense model of a --dense run)."""
    labels = data.labels or ["score"]
    return AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        problem_type="regression" if data.is_regression else "single_label_classification",
        attn_implementation=attn_implementation, ignore_mismatched_sizes=True)


def keep_model_inputs(features: dict, model) -> dict:
    """Drop the tokenizer's outputs the model's forward does not take (token_type_ids for DistilBERT, ModernBERT…)."""
    keep = set(model_input_names(model, features["train"].column_names)) | {"labels"}
    return {split: ds.remove_columns([c for c in ds.column_names if c not in keep]) for split, ds in features.items()}


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args, run_args = parse_arguments(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    if training_args.oto_seq_len is None:  # FLOPs are counted at the length the task is trained and served at
        training_args.oto_seq_len = data_args.max_seq_length

    # ---- everything that can be wrong with the input is checked before any long work ----
    model_path, teacher_path = job.check_inputs(model_args, training_args, run_args, "AutoModelForSequenceClassification", "run_glue.py")
    data = load_data(data_args)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if data_args.max_seq_length > tokenizer.model_max_length:
        raise RunError(f"--max_seq_length {data_args.max_seq_length} exceeds what {model_path} takes "
                       f"({tokenizer.model_max_length} tokens); lower it")
    features = tokenize(data, tokenizer, data_args.max_seq_length, data_args.preprocessing_num_workers)
    logger.info("%s: %d training and %d evaluation examples", data.title, len(data.train), len(data.validation))

    # ---- train with HSPG (or, with --dense, plain AdamW) ----
    set_seed(training_args.seed)  # seeds the new classification head
    model = load_model(model_path, data, model_args.attn_implementation)
    features = keep_model_inputs(features, model)
    collator = DataCollatorWithPadding(tokenizer)
    trainer_kwargs = dict(args=training_args, train_dataset=features["train"], eval_dataset=features["validation"],
                          processing_class=tokenizer, data_collator=collator,
                          compute_metrics=glue.compute_metrics_for(data))
    report = {"script": "run_glue.py",
              "task": {"title": data.title, "metrics": list(data.metrics), "fractions": True, "unit": "predictions"},
              "data": {**data.source, "train_examples": len(data.train), "eval_examples": len(data.validation),
                       "labels": data.labels, "max_seq_length": data_args.max_seq_length,
                       "summary": f"{data.title}: {len(data.train):,} training examples, {len(data.validation):,} "
                                  "evaluation examples."}}
    evaluate = dict(data=data, collator=collator, batch_size=training_args.per_device_eval_batch_size)
    out = Path(training_args.output_dir)
    if run_args.dense:
        trainer = Trainer(model=model, **trainer_kwargs)
        train_result = train_resuming(trainer, training_args)
        metrics, predictions, _ = glue.evaluate_classification(trainer.model, features["validation"], **evaluate,
                                                               desc="evaluating dense model")
        trainer.log({f"eval_{k}": v for k, v in metrics.items()})
        final = save_model_atomic(trainer, out / "model")
        write_predictions(out, predictions, data)
        stats = oto_hf.model_stats(trainer.model, training_args.oto_seq_len)
        oto_hf.model_card.model_card(
            trainer.model, model_name=f"{short_name(model_path)}-{card_task_name(data)}-dense", base_model=model_path,
            before=stats, after=stats, evaluations=[evaluation(data, metrics, sampled=data_args.max_eval_samples is not None)],
            family=oto_hf.zero_invariant_groups(trainer.model).family.name,
            licence=oto_hf.model_card.licence_of(model_path),
        ).save(final / "README.md")
        report.update({
            "mode": "dense",
            "model": {"name_or_path": model_args.model_name_or_path, "saved_to": str(final), "before": stats.to_dict(),
                      "after": stats.to_dict(), "kept": stats.ratio_to(stats)},
            "quality": {"dense": metrics, "examples": len(predictions)},
            "latency": None, "training": training_report(trainer, train_result, optimizer=True),
            "oto_settings": None, "distillation": None, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        })
        return finish(out, report, trainer)

    teacher = None if teacher_path is None else load_model(teacher_path, data, model_args.attn_implementation)
    try:
        trainer = oto_hf.OTOTrainer(model=model, **trainer_kwargs, **distillation_kwargs(teacher, model_args))
    except ValueError as error:  # a Trainer feature that cannot be combined with pruning, a teacher of another vocabulary
        raise RunError(str(error)) from error
    train_result = train_resuming(trainer, training_args)

    # ---- evaluate the group-sparse model and the compressed one on the same examples ----
    sparse_metrics, sparse_predictions, sparse_logits = glue.evaluate_classification(
        trainer.model, features["validation"], **evaluate, desc="evaluating group-sparse model")
    compressed = trainer.compress()
    small_metrics, small_predictions, small_logits = glue.evaluate_classification(
        compressed, features["validation"], **evaluate, desc="evaluating compressed model")
    same = int((sparse_predictions == small_predictions).sum())
    trainer.log({f"eval_{k}": v for k, v in small_metrics.items()})

    latency = measure_latency(trainer.model, compressed, run_args, data_args.max_seq_length, tokenizer.vocab_size)

    # ---- save the compressed model (with its card), then the report (last) ----
    before, after, removed = job.size_stats(trainer.model, compressed, training_args.oto_seq_len)
    trainer.model_card_info = {
        "base_model": model_path, "speedup": latency,
        "model_name": f"{short_name(model_path)}-{card_task_name(data)}-oto{removed}",
        "evaluations": [evaluation(data, small_metrics, sampled=data_args.max_eval_samples is not None,
                                   baseline=job.card_metrics(teacher_path or model_path, TASK_TYPE))],
    }
    final = save_model_atomic(trainer, out / "compressed_model")
    write_predictions(out, small_predictions, data)
    onnx = None
    if run_args.export_onnx:
        onnx = export_and_measure(
            trainer.model, compressed, out, run_args, data_args.max_seq_length, tokenizer.vocab_size,
            lambda model: glue.evaluate_classification(model, features["validation"], **evaluate,
                                                       desc="evaluating the int8 ONNX model")[0])
    report.update({
        "mode": "oto",
        "model": {"name_or_path": model_args.model_name_or_path, "saved_to": str(final),
                  "before": before.to_dict(), "after": after.to_dict(), "kept": after.ratio_to(before)},
        "quality": {"group_sparse": sparse_metrics, "compressed": small_metrics, "examples": len(small_predictions),
                    "identical_predictions": same == len(small_predictions), "identical_predictions_count": same,
                    "max_abs_logit_difference": float(abs(sparse_logits - small_logits).max())},
        "latency": latency,
        "onnx": onnx,
        "training": training_report(trainer, train_result),
        "oto_settings": {k: v for k, v in training_args.to_dict().items() if k.startswith("oto_")},
        "distillation": (None if teacher_path is None else
                         {**trainer.distillation_settings(), "teacher": model_args.teacher_model_name_or_path}),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    })
    return finish(out, report, trainer)


def card_task_name(data: glue.ClassificationData) -> str:
    return data.task_name or "classification"


def evaluation(data: glue.ClassificationData, metrics: dict, sampled: bool, baseline: dict | None = None):
    """The card's record of the evaluation: the Hub GLUE dataset and task for a GLUE task (local files included: they
    are GLUE's), else the user's file by name (never its path), also when --task_name only chose its labels."""
    if "task_name" in data.source:
        dataset_type, config, name = data.source.get("dataset_name", glue.HUB_GLUE), data.task_name, data.title
    else:
        name = Path(data.source["validation_file"]).name
        kinds = [s.lstrip(".").lower() for s in Path(name).suffixes if s.lower() != ".gz"]  # "sst2.dev.csv.gz": csv
        dataset_type, config = kinds[-1] if kinds else "csv", None
    return oto_hf.model_card.Evaluation(dataset_type=dataset_type, dataset_name=name, dataset_config=config,
                                        split="validation", metrics=dict(metrics), baseline=baseline or {},
                                        note=f"{len(data.validation):,} sampled examples" if sampled else "")


def write_predictions(out: Path, predictions, data: glue.ClassificationData) -> None:
    # The saved model's prediction for each evaluation example in order (a label name, or a score for a regression),
    # so that two runs can be compared example by example (paired differences) without re-running either model.
    values = [float(p) for p in predictions] if data.is_regression else [data.labels[int(p)] for p in predictions]
    (out / "eval_predictions.json").write_text(json.dumps(values, indent=0, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main_guard(main, "run_glue.py")
