#!/usr/bin/env python
"""SQuAD v1.1 end to end: train an encoder with HSPG, prune, compress, evaluate, report.

    python run_squad.py                                   # configs/quickstart.yaml: ~15 min on 2 CPU cores, offline
    python run_squad.py configs/minilm_squad_p1.yaml      # benchmark protocol P1 (CPU, tens of minutes)
    python run_squad.py configs/bert_base_squad.yaml      # the paper's bert-base experiment (GPU)
    python run_squad.py configs/minilm_squad_p1.yaml --oto_target 0.3 --output_dir runs/p1_oto30  # config + overrides
    python run_squad.py --oto_target 0.5 --output_dir runs/q50   # options alone override the quickstart config
    python run_squad.py --help                            # every option

The dense-start + teacher recipe (the best OTO50 of benchmark P1; twice the training compute) is two runs:

    python run_squad.py configs/minilm_squad_p1.yaml --dense --output_dir runs/dense    # plain AdamW, no pruning
    python run_squad.py configs/minilm_squad_p1.yaml --model_name_or_path runs/dense/model \
        --teacher_model_name_or_path runs/dense/model --output_dir runs/oto50_from_dense

Writes into --output_dir: checkpoints while training (an interrupted run resumes from the last one when started
again), `compressed_model/` (the pruned model, loadable with `from_pretrained`), `eval_predictions.json` (its answer to each
dev question), `report.json`, `report.md` and `plots/`. The report is written last: a folder with a report.json holds
a finished run. With --dense, `model/` (the fine-tuned full-size model) instead of `compressed_model/`.
"""

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForQuestionAnswering, AutoTokenizer, Trainer, default_data_collator, set_seed

import oto_hf
from oto_hf import squad
# PACKAGED_MINILM, ModelArguments, RunArguments, config_to_cli and resolve_model_path are also read from here by
# benchmarks/quality.py.
from oto_hf.job import (  # noqa: F401
    PACKAGED_MINILM, ModelArguments, RunArguments, RunError, config_to_cli, distillation_kwargs,
    export_and_measure, finish, main_guard, measure_latency, resolve_model_path, save_model_atomic,
    short_name, train_resuming, training_report
)
from oto_hf import job


logger = logging.getLogger("run_squad")
REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "quickstart.yaml"


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "A Hub dataset in SQuAD format (e.g. 'squad'). Default: the local files."}
    )
    train_file: str | None = field(default=None, metadata={"help": "Local SQuAD-format train file (.json/.json.gz)."})
    validation_file: str | None = field(default=None, metadata={"help": "Local SQuAD-format dev file (.json/.json.gz)."})
    local_train: str = field(
        default="reconstructed",
        metadata={"help": "Which local train file when none is given: 'reconstructed' (83,380 questions) or "
                  "'genuine-first11' (3,807).", "choices": ["reconstructed", "genuine-first11"]},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on this many sampled questions."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on this many sampled questions."})
    sample_seed: int = field(default=0, metadata={"help": "Seed of the question samples."})
    max_seq_length: int = field(default=384, metadata={"help": "Tokens per training window."})
    doc_stride: int = field(default=128, metadata={"help": "Overlap between windows of a long context."})
    max_query_length: int = field(default=64, metadata={"help": "Questions are cut to this many tokens."})
    eval_max_seq_length: int | None = field(default=None, metadata={"help": "Tokens per evaluation window (default: max_seq_length)."})
    n_best_size: int = field(default=20, metadata={"help": "Start/end candidates considered per window."})
    max_answer_length: int = field(default=30, metadata={"help": "Longest answer, in tokens."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})


def parse_arguments(argv: list[str]):
    """(model, data, training, run) arguments; without a config first, configs/quickstart.yaml is the config."""
    return job.parse_arguments(DataArguments, argv, DEFAULT_CONFIG)


def resolve_data_files(data: DataArguments) -> dict:
    if data.dataset_name:
        return {"dataset_name": data.dataset_name}
    if data.train_file or data.validation_file:
        if not (data.train_file and data.validation_file):
            raise RunError("give both --train_file and --validation_file (or neither, to use the local SQuAD files)")
        return {"train_file": data.train_file, "validation_file": data.validation_file}
    local = squad.find_local_squad_dir()
    if local is None:
        raise RunError(
            "no SQuAD data given and no local SQuAD v1.1 folder found (looked at $OTO_SQUAD_DIR and "
            "../shared/data/squad-v1.1). Pass --dataset_name squad (needs the Hub) or --train_file/--validation_file."
        )
    return {k: str(v) for k, v in squad.local_squad_files(data.local_train, local).items()}


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args, run_args = parse_arguments(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    # ---- everything that can be wrong with the input is checked before any long work ----
    model_path, teacher_path = job.check_inputs(model_args, training_args, run_args, "AutoModelForQuestionAnswering", "run_squad.py")
    data_files = resolve_data_files(data_args)
    try:
        raw = squad.load_squad(**data_files)
    except squad.SquadDataError as error:
        raise RunError(str(error)) from error
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    eval_seq = data_args.eval_max_seq_length or data_args.max_seq_length
    for seq in (data_args.max_seq_length, eval_seq):
        squad.check_window_params(tokenizer, seq, data_args.doc_stride, data_args.max_query_length)

    # ---- data ----
    train_examples = squad.sample_questions(raw["train"], data_args.max_train_samples, data_args.sample_seed)
    eval_examples = squad.sample_questions(raw["validation"], data_args.max_eval_samples, data_args.sample_seed)
    window = dict(doc_stride=data_args.doc_stride, max_query_length=data_args.max_query_length,
                  num_proc=data_args.preprocessing_num_workers)
    train_features = squad.tokenize_squad(train_examples, tokenizer, "train", max_seq_length=data_args.max_seq_length, **window)
    eval_features = squad.tokenize_squad(eval_examples, tokenizer, "validation", max_seq_length=eval_seq, **window)
    logger.info("%d training questions → %d features; %d evaluation questions → %d features",
                len(train_examples), len(train_features), len(eval_examples), len(eval_features))

    # ---- train with HSPG (or, with --dense, plain AdamW) ----
    set_seed(training_args.seed)  # seeds the new QA head
    model = AutoModelForQuestionAnswering.from_pretrained(model_path, attn_implementation=model_args.attn_implementation)
    eval_kwargs = dict(batch_size=training_args.per_device_eval_batch_size, n_best_size=data_args.n_best_size,
                       max_answer_length=data_args.max_answer_length)
    data_report = {**data_files, "train_questions": len(train_examples), "train_features": len(train_features),
                   "eval_questions": len(eval_examples), "eval_features": len(eval_features)}
    if run_args.dense:
        return run_dense(model, tokenizer, train_features, eval_examples, eval_features, eval_kwargs, data_report,
                         model_args, data_args, training_args, model_path)
    teacher = None if teacher_path is None else AutoModelForQuestionAnswering.from_pretrained(
        teacher_path, attn_implementation=model_args.attn_implementation)
    try:
        trainer = oto_hf.OTOTrainer(
            model=model, args=training_args, train_dataset=train_features, processing_class=tokenizer,
            data_collator=default_data_collator, **distillation_kwargs(teacher, model_args),
        )
    except ValueError as error:  # e.g. a teacher with another vocabulary
        raise RunError(str(error)) from error
    train_result = train_resuming(trainer, training_args)

    # ---- evaluate the group-sparse model and the compressed one on the same questions ----
    sparse_metrics, sparse_answers = squad.evaluate_squad(trainer.model, eval_examples, eval_features,
                                                          desc="evaluating group-sparse model", **eval_kwargs)
    compressed = trainer.compress()
    small_metrics, small_answers = squad.evaluate_squad(compressed, eval_examples, eval_features,
                                                        desc="evaluating compressed model", **eval_kwargs)
    same = sum(sparse_answers[k] == small_answers[k] for k in sparse_answers)
    trainer.log({"eval_exact_match": small_metrics["exact_match"], "eval_f1": small_metrics["f1"]})

    latency = measure_latency(trainer.model, compressed, run_args, eval_seq, tokenizer.vocab_size)

    # ---- save the compressed model (with its card), then the report (last) ----
    before, after, removed = job.size_stats(trainer.model, compressed, training_args.oto_seq_len)
    trainer.model_card_info = {
        "base_model": model_path, "speedup": latency,
        "model_name": f"{short_name(model_path)}-squad-oto{removed}",
        "evaluations": [squad_evaluation(data_args, small_metrics, len(eval_examples),
                                         baseline=card_metrics(teacher_path or model_path))],
    }
    out = Path(training_args.output_dir)
    final = save_model_atomic(trainer, out / "compressed_model")
    write_predictions(out, small_answers)
    onnx = None
    if run_args.export_onnx:
        onnx = export_and_measure(
            trainer.model, compressed, out, run_args, eval_seq, tokenizer.vocab_size,
            lambda model: squad.evaluate_squad(model, eval_examples, eval_features,
                                               desc="evaluating the int8 ONNX model", **eval_kwargs)[0])

    report = {
        "mode": "oto",
        "model": {"name_or_path": model_args.model_name_or_path, "saved_to": str(final),
                  "before": before.to_dict(), "after": after.to_dict(), "kept": after.ratio_to(before)},
        "quality": {"group_sparse": sparse_metrics, "compressed": small_metrics, "questions": len(sparse_answers),
                    "identical_predictions": same == len(sparse_answers), "identical_predictions_count": same},
        "latency": latency,
        "onnx": onnx,
        "training": training_report(trainer, train_result),
        "data": data_report,
        "oto_settings": {k: v for k, v in training_args.to_dict().items() if k.startswith("oto_")},
        # The trainer's own record of its settings, with the teacher named as the user gave it.
        "distillation": (None if teacher_path is None else
                         {**trainer.distillation_settings(), "teacher": model_args.teacher_model_name_or_path}),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return finish(out, report, trainer)


def run_dense(model, tokenizer, train_features, eval_examples, eval_features, eval_kwargs, data_report, model_args,
              data_args, training_args, model_path: str) -> dict:
    """--dense: fine-tune the full model with the plain `Trainer` and AdamW, evaluate it, save it with its card
    (whose metrics are the dense baseline of a pruning run that starts from this model), report."""
    trainer = Trainer(model=model, args=training_args, train_dataset=train_features, processing_class=tokenizer,
                      data_collator=default_data_collator)
    train_result = train_resuming(trainer, training_args)
    metrics, answers = squad.evaluate_squad(trainer.model, eval_examples, eval_features, desc="evaluating dense model",
                                            **eval_kwargs)
    trainer.log({"eval_exact_match": metrics["exact_match"], "eval_f1": metrics["f1"]})
    out = Path(training_args.output_dir)
    final = save_model_atomic(trainer, out / "model")
    write_predictions(out, answers)
    stats = oto_hf.model_stats(trainer.model, training_args.oto_seq_len)
    oto_hf.model_card.model_card(
        trainer.model, model_name=f"{short_name(model_path)}-squad-dense", base_model=model_path, before=stats,
        after=stats, evaluations=[squad_evaluation(data_args, metrics, len(answers))],
        family=oto_hf.zero_invariant_groups(trainer.model).family.name, licence=oto_hf.model_card.licence_of(model_path),
    ).save(final / "README.md")
    report = {
        "mode": "dense",
        "model": {"name_or_path": model_args.model_name_or_path, "saved_to": str(final), "before": stats.to_dict(),
                  "after": stats.to_dict(), "kept": stats.ratio_to(stats)},
        "quality": {"dense": metrics, "questions": len(answers)},
        "latency": None,
        "training": training_report(trainer, train_result, optimizer=True),
        "data": data_report,
        "oto_settings": None,
        "distillation": None,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return finish(out, report, trainer)


def squad_evaluation(data_args, metrics: dict, questions: int, baseline: dict | None = None):
    """The card's record of a SQuAD evaluation: the Hub dataset, or SQuAD v1.1 for the local files, or the user's
    file by name (never its path)."""
    if data_args.dataset_name:
        dataset_type, name = data_args.dataset_name, data_args.dataset_name
    elif data_args.validation_file:
        dataset_type, name = "json", Path(data_args.validation_file).name
    else:
        dataset_type, name = "squad", "SQuAD v1.1"
    note = "" if data_args.max_eval_samples is None else f"{questions:,} sampled questions"
    return oto_hf.model_card.Evaluation(dataset_type=dataset_type, dataset_name=name, split="validation",
                                        metrics=dict(metrics), baseline=baseline or {}, note=note)


def card_metrics(model_path: str | None) -> dict:
    """The SQuAD metrics a saved model's own card records: the dense baseline of a run that starts from that model
    or learns from it."""
    return job.card_metrics(model_path, "question-answering")

def write_predictions(out: Path, answers: dict) -> None:
    # The saved model's answers, {question id: text} (the file name HF's run_qa.py uses), so that two runs can be
    # compared question by question (paired differences) without re-running either model.
    (out / "eval_predictions.json").write_text(json.dumps(answers, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main_guard(main, "run_squad.py")
