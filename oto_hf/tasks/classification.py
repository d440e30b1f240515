"""Text classification (GLUE or the user's files) for the job runner (`run_glue.py`): data, metrics, the task.

Data comes from one of three places, always as the same two splits with columns `text_a`, (`text_b`,) `label`:
* a GLUE task by name (`sst2`, `rte`, `mrpc`, …) from a local GLUE folder (GLUE's own TSV files, e.g.
  `../shared/data/glue/SST-2/train.tsv.gz`; see `find_local_glue_dir`), or else from the Hub's `nyu-mll/glue`;
* the user's CSV / TSV / JSON (JSON lines or an array of objects) files, optionally gzipped, with one or two text
  columns and a label column.
Every row is checked before any training: a missing column, an empty text, an empty label, a label the training
split does not have, or a file that is not a table raises `GlueDataError` naming the file, the row and the fix.

Metrics (accuracy, F1 of the positive class, Matthews correlation, Pearson and Spearman correlation) are computed
here, as fractions (HF's convention), so that nothing is downloaded at evaluation time.
"""

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .common import REPO_ROOT, find_shared_data_dir, keep_model_inputs, model_input_names, sample_examples

if TYPE_CHECKING:
    import datasets


GLUE_DIR_ENV = "OTO_GLUE_DIR"
HUB_GLUE = "nyu-mll/glue"


class GlueDataError(ValueError):
    """A data file or dataset that cannot be trained on; the message names the file, the row and what to do."""


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its Hub config and columns, GLUE's folder and TSV columns, labels (None: regression), metrics
    (the first is the one to select and report by)."""

    name: str
    title: str
    text_columns: tuple[str, ...]
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    folder: str
    tsv_text_columns: tuple[str, ...] | None  # None: GLUE's TSV has no header (CoLA); give the files instead
    tsv_label_column: str = "label"
    validation_split: str = "validation"
    tsv_validation_file: str = "dev.tsv"


GLUE_TASKS = {t.name: t for t in [
    GlueTask("cola", "GLUE CoLA", ("sentence",), ("unacceptable", "acceptable"), ("matthews_correlation", "accuracy"),
             "CoLA", None),
    GlueTask("sst2", "GLUE SST-2", ("sentence",), ("negative", "positive"), ("accuracy",), "SST-2", ("sentence",)),
    GlueTask("mrpc", "GLUE MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("f1", "accuracy"),
             "MRPC", ("#1 String", "#2 String"), "Quality"),
    GlueTask("qqp", "GLUE QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), ("f1", "accuracy"),
             "QQP", ("question1", "question2"), "is_duplicate"),
    GlueTask("stsb", "GLUE STS-B", ("sentence1", "sentence2"), None, ("pearson", "spearmanr"), "STS-B",
             ("sentence1", "sentence2"), "score"),
    GlueTask("mnli", "GLUE MNLI (matched)", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
             ("accuracy",), "MNLI", ("sentence1", "sentence2"), "gold_label", "validation_matched",
             "dev_matched.tsv"),
    GlueTask("qnli", "GLUE QNLI", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",), "QNLI",
             ("question", "sentence")),
    GlueTask("rte", "GLUE RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",), "RTE",
             ("sentence1", "sentence2")),
    GlueTask("wnli", "GLUE WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",), "WNLI",
             ("sentence1", "sentence2")),
]}

# Column pairs (and single columns) recognised in the user's files when --text_columns is not given.
KNOWN_TEXT_COLUMNS = [("sentence1", "sentence2"), ("premise", "hypothesis"), ("question", "sentence"),
                      ("question1", "question2"), ("sentence",), ("text",)]


@dataclass
class ClassificationData:
    """Two checked splits (`datasets.Dataset`s with `text_a`, maybe `text_b`, and `label`: an index into `labels`,
    or a float for regression) and what the job needs to know about them."""

    train: "datasets.Dataset"
    validation: "datasets.Dataset"
    labels: list[str] | None  # None: regression
    metrics: tuple[str, ...]
    title: str  # what the report and the card call the data
    source: dict  # where it came from: {"task_name", "dataset_name"} or the files
    task_name: str | None = None

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def pair(self) -> bool:
        return "text_b" in self.train.column_names


# ---- where the data is


def find_local_glue_dir() -> Path | None:
    """The folder holding GLUE task folders (SST-2/, RTE/, …), or None: $OTO_GLUE_DIR if set (it must exist), else the
    first of <repo root>/../shared/data/glue, ./shared/data/glue and ../shared/data/glue that exists."""
    return find_shared_data_dir("glue", GLUE_DIR_ENV, GlueDataError)


def local_task_files(task: GlueTask, folder: Path | None = None) -> dict[str, Path] | None:
    """{"train": …, "validation": …} of `task` in the local GLUE folder (plain or gzipped TSV), or None if absent."""
    folder = folder if folder is not None else find_local_glue_dir()
    if folder is None or task.tsv_text_columns is None:
        return None
    files = {}
    for split, name in (("train", "train.tsv"), ("validation", task.tsv_validation_file)):
        found = [p for p in (folder / task.folder / name, folder / task.folder / (name + ".gz")) if p.is_file()]
        if not found:
            return None
        files[split] = found[0]
    return files


def load_classification_data(task_name: str | None = None, dataset_name: str | None = None,
                             train_file: str | None = None, validation_file: str | None = None,
                             text_columns: list[str] | None = None, label_column: str | None = None,
                             glue_dir: Path | None = None) -> ClassificationData:
    """Load and check both splits. With `train_file`/`validation_file`: the user's files (a `task_name` then only
    chooses labels and metrics). Else with `task_name`: the local GLUE files if present and no `dataset_name` is
    given, else the Hub (`dataset_name`, default nyu-mll/glue)."""
    task = None
    if task_name is not None:
        task = GLUE_TASKS.get(task_name.lower().replace("-", ""))
        if task is None:
            raise GlueDataError(f"--task_name {task_name!r} is not a GLUE task; known: {', '.join(GLUE_TASKS)}. "
                                "For other data give --train_file and --validation_file")
    if train_file or validation_file:
        if not (train_file and validation_file):
            raise GlueDataError("give both --train_file and --validation_file (or neither, to use --task_name's data)")
        tables = {"train": read_table(train_file), "validation": read_table(validation_file)}
        files = {"train": str(train_file), "validation": str(validation_file)}
        columns = text_columns or (list(task.text_columns) if task else None)
        return _build(tables, files, task, columns, label_column or "label",
                      {"train_file": files["train"], "validation_file": files["validation"]},
                      title=task.title if task else Path(validation_file).name)
    if task is None:
        raise GlueDataError("no data given: pass --task_name (a GLUE task such as sst2 or rte), or --train_file and "
                            "--validation_file")
    local = None if dataset_name else local_task_files(task, glue_dir)
    if local is not None:
        tables = {split: read_table(path, quoting=csv.QUOTE_NONE) for split, path in local.items()}
        return _build(tables, {k: str(v) for k, v in local.items()}, task,
                      list(text_columns or task.tsv_text_columns), label_column or task.tsv_label_column,
                      {"task_name": task.name, **{f"{k}_file": str(v) for k, v in local.items()}}, title=task.title)
    return _load_hub(task, dataset_name or HUB_GLUE, text_columns, label_column)


def _load_hub(task: GlueTask, dataset_name: str, text_columns, label_column) -> ClassificationData:
    import datasets

    try:
        raw = datasets.load_dataset(dataset_name, task.name)
    except Exception as error:  # noqa: BLE001  (offline, unknown dataset, …: all end the run here, said plainly)
        raise GlueDataError(
            f"cannot load {task.name!r} of the Hub dataset {dataset_name!r} ({type(error).__name__}: {error}). "
            f"Offline, put GLUE's {task.folder}/train.tsv and {task.folder}/{task.tsv_validation_file} under "
            f"${GLUE_DIR_ENV} or ../shared/data/glue, or pass --train_file and --validation_file"
        ) from error
    tables = {"train": raw["train"].to_list(), "validation": raw[task.validation_split].to_list()}
    where = {s: f"{dataset_name}/{task.name} ({split})" for s, split in
             (("train", "train"), ("validation", task.validation_split))}
    return _build(tables, where, task, list(text_columns or task.text_columns), label_column or "label",
                  {"task_name": task.name, "dataset_name": dataset_name}, title=task.title)


# ---- reading and checking tables


def read_table(path, quoting: int | None = None) -> list[dict]:
    """The rows of a CSV (.csv), TSV (.tsv/.txt) or JSON (.json/.jsonl: JSON lines or an array of objects) file,
    optionally gzipped, as dicts of strings (JSON values keep their type); a UTF-8 byte-order mark is skipped.
    `quoting` (a `csv.QUOTE_*`) defaults to the format's: quoting is part of CSV (a quoted field may hold a comma),
    while a TSV's text is kept as written (`"the movie" is great` keeps its quotes; GLUE's TSV files use no quoting
    either), so a TSV text cannot hold a tab."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise GlueDataError(f"{path}: no such file")
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    try:
        if kind in (".json", ".jsonl"):
            frame = _read_json(path)
        elif kind in (".csv", ".tsv", ".txt"):
            is_csv = kind == ".csv"
            if quoting is None:
                quoting = csv.QUOTE_MINIMAL if is_csv else csv.QUOTE_NONE
            frame = pd.read_csv(path, sep="," if is_csv else "\t", dtype=str, keep_default_na=False,
                                quoting=quoting, compression="infer", on_bad_lines="error", encoding="utf-8-sig")
            if not isinstance(frame.index, pd.RangeIndex):
                # pandas takes a first row with one field more than the header as "the first column is the index"
                # and shifts every column by one; later rows with too many fields it does refuse.
                raise GlueDataError(f"{path}, row 1: more fields than the header's {frame.shape[1]} columns; " + (
                    "quote a text that holds the separator" if quoting != csv.QUOTE_NONE else
                    "a TSV text cannot hold a tab: remove it, or write the file as CSV (whose quotes may hold one)"))
        else:
            raise GlueDataError(f"{path}: unknown file type {kind or '(none)'!r}; give a .csv, .tsv, .json or .jsonl "
                                "file (optionally .gz)")
    except GlueDataError:
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, UnicodeDecodeError, OSError) as error:
        raise GlueDataError(f"{path} is not a {kind.lstrip('.').upper()} table: {error}") from error
    if frame.shape[1] < 2:
        raise GlueDataError(f"{path} is not a table with a text and a label column: it has the column(s) "
                            f"{list(frame.columns)} (a TSV must be tab-separated, a CSV comma-separated)")
    return frame.to_dict("records")


def _read_json(path: Path):
    import pandas as pd

    import gzip

    opener = gzip.open if path.suffix.lower() == ".gz" else open
    # utf-8-sig: a file written with a byte-order mark (Windows tools write one) reads like one without.
    with opener(path, "rt", encoding="utf-8-sig") as handle:
        head = handle.read(1024).lstrip()
    if not head.startswith(("{", "[")):
        raise ValueError("it does not start with '{' (JSON lines) or '[' (an array of objects)")
    frame = pd.read_json(path, lines=head.startswith("{"), dtype=False, compression="infer", encoding="utf-8-sig")
    return frame.astype(object).where(frame.notna(), None)


def _build(tables: dict[str, list[dict]], where: dict[str, str], task: GlueTask | None, text_columns,
           label_column: str, source: dict, title: str) -> ClassificationData:
    import datasets

    first = tables["train"][0] if tables["train"] else {}
    if not tables["train"]:
        raise GlueDataError(f"{where['train']}: no rows")
    if not tables["validation"]:
        raise GlueDataError(f"{where['validation']}: no rows")
    columns = list(text_columns) if text_columns else _infer_text_columns(list(first), label_column, where["train"])
    if not 1 <= len(columns) <= 2:
        raise GlueDataError(f"--text_columns takes one or two columns, got {columns}")
    for split, rows in tables.items():
        present = list(rows[0])
        for column in [*columns, label_column]:
            if column not in present:
                what = "label column" if column == label_column else "text column"
                option = "--label_column" if column == label_column else "--text_columns"
                raise GlueDataError(f"{where[split]}: no {what} {column!r} (its columns: {present}); name the "
                                    f"right one with {option}")
    regression = task.labels is None if task else _looks_like_regression(tables["train"], label_column)
    labels = None if regression else (list(task.labels) if task else _label_names(tables["train"], label_column))
    splits = {}
    for split, rows in tables.items():
        values = {"text_a": [], **({"text_b": []} if len(columns) == 2 else {}), "label": []}
        for i, row in enumerate(rows, start=1):
            for key, column in zip(("text_a", "text_b"), columns):
                text = row[column]
                if text is None or not str(text).strip():
                    raise GlueDataError(f"{where[split]}, row {i}: the text column {column!r} is empty; remove the "
                                        "row or fill it in")
                values[key].append(str(text))
            values["label"].append(_label_of(row[label_column], labels, where[split], i, label_column,
                                              by_index=task is not None))
        splits[split] = datasets.Dataset.from_dict(values)
    if labels is not None and len(set(splits["train"]["label"])) == 1:
        # A classifier needs two classes: with one, the head has one output and compressing the trained model fails
        # at the end (transformers refuses single_label_classification with num_labels 1). After the row checks, which
        # name a row.
        raise GlueDataError(f"{where['train']}: every training row has the label "
                            f"{labels[splits['train']['label'][0]]!r}; a classifier needs at least two labels in its "
                            "training data: add rows of the other label(s)")
    metrics = task.metrics if task else (("pearson", "spearmanr") if regression else
                                         ("accuracy", "f1") if len(labels) == 2 else ("accuracy",))
    return ClassificationData(splits["train"], splits["validation"], labels, metrics, title, source,
                              task.name if task else None)


def _infer_text_columns(columns: list[str], label_column: str, where: str) -> list[str]:
    for known in KNOWN_TEXT_COLUMNS:
        if set(known) <= set(columns):
            return list(known)
    others = [c for c in columns if c != label_column and c.lower() not in ("idx", "id", "index")]
    if 1 <= len(others) <= 2:
        return others
    raise GlueDataError(f"{where}: cannot tell which columns hold the text (columns: {columns}); name one or two with "
                        "--text_columns")


def _looks_like_regression(rows: list[dict], label_column: str) -> bool:
    """True where every training label is a number and some are not whole numbers (a score, as in STS-B)."""
    try:
        values = [float(r[label_column]) for r in rows if r.get(label_column) not in (None, "")]
    except (TypeError, ValueError):
        return False
    return any(v != int(v) for v in values)


def _label_names(rows: list[dict], label_column: str) -> list[str]:
    """The training split's labels, sorted (numerically where they are all whole numbers)."""
    seen = {str(r[label_column]).strip() for r in rows if r.get(label_column) not in (None, "")}
    if all(s.lstrip("-").isdigit() for s in seen):
        return sorted(seen, key=int)
    return sorted(seen)


def _label_of(value, labels: list[str] | None, where: str, row: int, column: str, by_index: bool = False):
    if value is None or str(value).strip() == "":
        raise GlueDataError(f"{where}, row {row}: the label column {column!r} is empty; every row needs a label")
    text = str(value).strip()
    if labels is None:
        try:
            return float(text)
        except ValueError as error:
            raise GlueDataError(f"{where}, row {row}: label {text!r} is not a number (this task is a regression)") \
                from error
    if text in labels:
        return labels.index(text)
    # A GLUE task's label given as its index (GLUE's SST-2 files, the Hub's datasets). Not for the user's own labels:
    # their order is the sorted names, which a number in the validation file need not mean.
    if by_index and text.lstrip("-").isdigit() and labels and not any(s.lstrip("-").isdigit() for s in labels) \
            and 0 <= int(text) < len(labels):
        return int(text)
    raise GlueDataError(f"{where}, row {row}: label {text!r} was not seen in training (labels: {labels}); fix the "
                        "row, or train on data that has this label")


# ---- metrics


def classification_metrics(predictions, references, metrics) -> dict[str, float]:
    """The named `metrics` of `predictions` (class indices, or scores for a regression) against `references`."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.shape != references.shape:
        raise ValueError(f"{predictions.shape[0]} predictions for {references.shape[0]} references")
    out = {}
    for name in metrics:
        if name == "accuracy":
            out[name] = float((predictions == references).mean())
        elif name == "f1":
            tp = float(((predictions == 1) & (references == 1)).sum())
            wrong = float((predictions != references).sum())
            out[name] = 2 * tp / (2 * tp + wrong) if tp or wrong else 0.0
        elif name == "matthews_correlation":
            out[name] = _matthews(predictions, references)
        elif name == "pearson":
            out[name] = _pearson(predictions.astype(float), references.astype(float))
        elif name == "spearmanr":
            out[name] = _pearson(_ranks(predictions.astype(float)), _ranks(references.astype(float)))
        else:
            raise ValueError(f"unknown metric {name!r}")
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator else 0.0


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their average rank (as scipy.stats.rankdata)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def _matthews(predictions: np.ndarray, references: np.ndarray) -> float:
    """Matthews correlation for any number of classes (Gorodkin's R_K, as scikit-learn computes it)."""
    classes = np.union1d(predictions, references)
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)))
    for p, r in zip(predictions, references):
        confusion[index[r], index[p]] += 1
    t, p = confusion.sum(axis=1), confusion.sum(axis=0)
    c, s = np.trace(confusion), confusion.sum()
    denominator = np.sqrt((s * s - (p * p).sum()) * (s * s - (t * t).sum()))
    return float((c * s - (t * p).sum()) / denominator) if denominator else 0.0


def evaluate_classification(model, features: "datasets.Dataset", data: ClassificationData, collator,
                            batch_size: int = 32, desc: str = "evaluating") -> tuple[dict, np.ndarray, np.ndarray]:
    """(metrics, predictions, logits) of `model` on tokenized `features` (with a "labels" column), in order."""
    import torch
    from tqdm.auto import tqdm

    model.eval()
    device = next(model.parameters()).device
    columns = model_input_names(model, features.column_names)  # what its forward takes (ONNX files: their inputs)
    logits = []
    with torch.no_grad():
        for start in tqdm(range(0, len(features), batch_size), desc=desc):
            rows = features[start:start + batch_size]
            batch = collator([{c: rows[c][i] for c in columns} for i in range(len(rows[columns[0]]))])
            logits.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy())
    logits = np.concatenate(logits)
    predictions = predicted(logits, data.is_regression)
    return classification_metrics(predictions, features["labels"], data.metrics), predictions, logits


def predicted(logits: np.ndarray, regression: bool) -> np.ndarray:
    """Class indices (argmax) or, for a regression, the single score of each example."""
    logits = np.asarray(logits)
    return logits.reshape(-1) if regression else logits.argmax(axis=-1)


def compute_metrics_for(data: ClassificationData):
    """A `compute_metrics` for the Trainer: the data's metrics from an `EvalPrediction`."""
    def compute_metrics(eval_prediction):
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        return classification_metrics(predicted(logits, data.is_regression), eval_prediction.label_ids, data.metrics)

    return compute_metrics


# ---- the task: run_glue.py's data options, and classification as the job runner sees it


@dataclass
class ClassificationDataArguments:
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


class ClassificationTask:
    """Text classification (or regression) of one sentence or a pair for the job runner (`run_glue.py`): the data's
    metrics in numpy, one label per example."""

    name = "classification"
    script = "run_glue.py"
    auto_class = "AutoModelForSequenceClassification"
    pipeline_tag = "text-classification"
    data_arguments = ClassificationDataArguments
    default_config = REPO_ROOT / "configs" / "sst2_quickstart.yaml"
    unit = "examples"

    def adjust_arguments(self, data_args, training_args, argv: list[str]) -> None:
        # The quickstart's task (SST-2) is its data, not the task of the user's files: files given with options alone
        # and no --task_name are read as the user's own (their columns, labels and metrics), not as SST-2.
        given = {a.split("=")[0] for a in argv}
        if (not argv or argv[0].startswith("-")) and given & {"--train_file", "--validation_file"} \
                and "--task_name" not in given:
            data_args.task_name = None
        if training_args.oto_seq_len is None:  # FLOPs are counted at the length the task is trained and served at
            training_args.oto_seq_len = data_args.max_seq_length

    @staticmethod
    def load_data(data_args) -> ClassificationData:
        """Both splits, checked row by row and sampled (--max_train_samples, --max_eval_samples)."""
        from .base import RunError

        try:
            data = load_classification_data(
                task_name=data_args.task_name, dataset_name=data_args.dataset_name, train_file=data_args.train_file,
                validation_file=data_args.validation_file, text_columns=data_args.text_columns,
                label_column=data_args.label_column)
        except GlueDataError as error:
            raise RunError(str(error)) from error
        data.train = sample_examples(data.train, data_args.max_train_samples, data_args.sample_seed)
        data.validation = sample_examples(data.validation, data_args.max_eval_samples, data_args.sample_seed)
        return data

    @staticmethod
    def seq_len(data_args) -> int:
        return data_args.max_seq_length

    @staticmethod
    def features(data: ClassificationData, data_args, tokenizer) -> dict:
        """{"train": …, "validation": …, "collator": …}: input ids (truncated, not padded), attention mask, token type
        ids and labels; the collator pads a batch."""
        from .base import RunError

        if data_args.max_seq_length > tokenizer.model_max_length:
            raise RunError(f"--max_seq_length {data_args.max_seq_length} exceeds what {tokenizer.name_or_path} takes "
                           f"({tokenizer.model_max_length} tokens); lower it")
        from transformers import DataCollatorWithPadding

        features = tokenize(data, tokenizer, data_args.max_seq_length, data_args.preprocessing_num_workers)
        return {**features, "collator": DataCollatorWithPadding(tokenizer)}  # batches padded to their longest input

    @staticmethod
    def load_model(path, data: ClassificationData | None = None, attn_implementation: str | None = None, **kwargs):
        """A classification model of `path`; with `data`, with a head for the data's labels: a new head, unless
        `path` already has one with these labels (e.g. the dense model of a --dense run)."""
        from transformers import AutoModelForSequenceClassification

        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        if data is not None:
            labels = data.labels or ["score"]
            kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                          label2id={n: i for i, n in enumerate(labels)}, ignore_mismatched_sizes=True,
                          problem_type="regression" if data.is_regression else "single_label_classification")
        return AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)

    @staticmethod
    def trainer_inputs(data: ClassificationData, features: dict, model, tokenizer) -> dict:
        features.update(keep_model_inputs({split: features[split] for split in ("train", "validation")}, model))
        return dict(train_dataset=features["train"], eval_dataset=features["validation"],
                    data_collator=features["collator"], compute_metrics=compute_metrics_for(data))

    @staticmethod
    def evaluate(model, data: ClassificationData, features: dict, data_args, batch_size: int, desc: str):
        from .base import Evaluated

        metrics, predictions, logits = evaluate_classification(model, features["validation"], data, features["collator"],
                                                               batch_size=batch_size, desc=desc)
        return Evaluated(metrics, predictions, logits)

    @staticmethod
    def agreement(a, b) -> dict:
        same = int((a.predictions == b.predictions).sum())
        return {"examples": len(b.predictions), "identical_predictions": same == len(b.predictions),
                "identical_predictions_count": same,
                "max_abs_logit_difference": float(abs(a.outputs - b.outputs).max())}

    @staticmethod
    def logged_metrics(metrics: dict) -> dict:
        return {f"eval_{k}": v for k, v in metrics.items()}

    @staticmethod
    def write_predictions(out: Path, evaluated, data: ClassificationData) -> None:
        # The saved model's prediction for each evaluation example in order (a label name, or a score for a
        # regression), so that two runs can be compared example by example (paired differences) without re-running
        # either model.
        (out / "eval_predictions.json").write_text(json.dumps(prediction_values(evaluated.predictions, data),
                                                              indent=0, ensure_ascii=False) + "\n")

    @staticmethod
    def report_fields(data: ClassificationData, features, data_args) -> dict:
        return {"script": "run_glue.py",
                "task": {"title": data.title, "metrics": list(data.metrics), "fractions": True, "unit": "predictions"},
                "data": {**data.source, "train_examples": len(data.train), "eval_examples": len(data.validation),
                         "labels": data.labels, "max_seq_length": data_args.max_seq_length,
                         "summary": f"{data.title}: {len(data.train):,} training examples, {len(data.validation):,} "
                                    "evaluation examples."}}

    @staticmethod
    def card_evaluation(data: ClassificationData, data_args, metrics: dict, baseline: dict | None = None):
        """The card's record of the evaluation: the Hub GLUE dataset and task for a GLUE task (local files included:
        they are GLUE's), else the user's file by name (never its path), also when --task_name only chose its
        labels."""
        from ..model_card import Evaluation

        if "task_name" in data.source:
            dataset_type, config, name = data.source.get("dataset_name", HUB_GLUE), data.task_name, data.title
        else:
            name = Path(data.source["validation_file"]).name
            kinds = [s.lstrip(".").lower() for s in Path(name).suffixes if s.lower() != ".gz"]  # "x.dev.csv.gz": csv
            dataset_type, config = kinds[-1] if kinds else "csv", None
        sampled = data_args.max_eval_samples is not None
        return Evaluation(dataset_type=dataset_type, dataset_name=name, dataset_config=config, split="validation",
                          metrics=dict(metrics), baseline=baseline or {},
                          note=f"{len(data.validation):,} sampled examples" if sampled else "")

    @staticmethod
    def card_task_name(data: ClassificationData) -> str:
        return data.task_name or "classification"

    @staticmethod
    def example_scores(predictions: dict, golds: dict) -> list[float]:
        """Per-example accuracy (1 or 0) in the order of the examples, so that two runs' lists pair up."""
        return [float(predictions[i] == golds[i]) for i in sorted(golds, key=int)]


def tokenize(data: ClassificationData, tokenizer, max_seq_length: int, num_proc: int | None = None) -> dict:
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


def prediction_values(predictions, data: ClassificationData) -> list:
    """Each prediction as saved: a label name, or a score for a regression."""
    return [float(p) for p in predictions] if data.is_regression else [data.labels[int(p)] for p in predictions]


__all__ = ["ClassificationData", "ClassificationDataArguments", "ClassificationTask", "prediction_values", "tokenize", "GLUE_TASKS", "GlueDataError", "GlueTask", "classification_metrics",
           "compute_metrics_for", "evaluate_classification", "find_local_glue_dir", "load_classification_data", "local_task_files", "predicted",
           "read_table"]
