"""What a task is to the job runner (`oto_hf.runner`): the interface a task implements, the result of an evaluation,
and the error for bad input.

A task turns its data arguments into features (`load_data`, `features`), gives the model with its head
(`load_model`), the Trainer's inputs (`trainer_inputs`), scores a model (`evaluate`: predictions → metrics, computed
locally), writes the saved model's per-example predictions (`write_predictions`), and says what the report and the
model card record of it (`report_fields`, `card_evaluation`, `card_task_name`). Everything else a job does (the
checks, training, compressing, saving, latency, ONNX, the report) is the runner's and the same for every task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class RunError(Exception):
    """Bad input found before any long work: the message says what is wrong and what to do."""


@dataclass
class Evaluated:
    """A model scored on a task's evaluation data: the metrics (as the task reports them), each example's prediction
    (what `write_predictions` saves and two models are compared by) and the raw outputs where a task compares them
    (a classifier's logits), else None."""

    metrics: dict
    predictions: Any
    outputs: Any = None


class Task(Protocol):
    """One task of the job runner. `name` is its key in `oto_hf.tasks.TASKS`; `script` the job script that runs it
    (its name is in the report and error messages); `auto_class` the transformers Auto class of its models;
    `pipeline_tag` the Hub task of its cards (and of the dense baseline read from a start model's card);
    `data_arguments` the dataclass of its command-line data options; `default_config` the YAML config used when the
    command line starts with options; `unit` what one evaluation example is called in the report ("questions",
    "examples")."""

    name: str
    script: str
    auto_class: str
    pipeline_tag: str
    data_arguments: type
    default_config: Path
    unit: str

    def adjust_arguments(self, data_args, training_args, argv: list[str]) -> None:
        """Settings that follow from others (e.g. FLOPs counted at the task's sequence length)."""

    def load_data(self, data_args) -> Any:
        """The task's examples, checked (raises RunError naming the file and the fix)."""

    def features(self, data, data_args, tokenizer) -> Any:
        """Tokenized training and evaluation features of `data` (checks the tokenizer can honour the settings)."""

    def load_model(self, path: str, data, attn_implementation: str = "sdpa"):
        """The task's model of `path` with its head."""

    def trainer_inputs(self, data, features, model, tokenizer) -> dict:
        """The Trainer's `train_dataset`, `data_collator` (and `eval_dataset`, `compute_metrics` where the task
        evaluates during training)."""

    def evaluate(self, model, data, features, data_args, batch_size: int, desc: str) -> Evaluated:
        """`model` scored on the evaluation features."""

    def agreement(self, a: Evaluated, b: Evaluated) -> dict:
        """The report's quality fields comparing two evaluations of the same examples (group-sparse, compressed)."""

    def logged_metrics(self, metrics: dict) -> dict:
        """The metrics the trainer's log records, with their `eval_` prefix."""

    def seq_len(self, data_args) -> int:
        """The evaluation sequence length: the latency measurement's."""

    def write_predictions(self, out: Path, evaluated: Evaluated, data) -> None:
        """The saved model's prediction for each evaluation example, as `<out>/eval_predictions.json`."""

    def report_fields(self, data, features, data_args) -> dict:
        """The report's task entries: "data" (and, where not SQuAD's defaults, "script" and "task")."""

    def card_evaluation(self, data, data_args, metrics: dict, baseline: dict | None = None):
        """The model card's `model_card.Evaluation` of `metrics`."""

    def card_task_name(self, data) -> str:
        """The task part of a saved model's name (`<model>-<task>-oto50`)."""


__all__ = ["Evaluated", "RunError", "Task"]
