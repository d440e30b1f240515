"""Tests for oto_hf.tasks.classification: the metrics, GLUE's local files, the user's CSV / TSV / JSON files and every refusal of bad
data (each naming the file, the row and what is wrong). Fast: no model, no training."""

import csv
import gzip
import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

try:  # plain `pytest` (unlike `python -m pytest`) does not put the repo root on sys.path
    import oto_hf  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oto_hf.tasks import classification as glue  # noqa: E402
from oto_hf.tasks.classification import GlueDataError, classification_metrics, load_classification_data  # noqa: E402


@pytest.fixture(scope="module")
def glue_dir() -> Path:
    folder = glue.find_local_glue_dir()
    if folder is None or glue.local_task_files(glue.GLUE_TASKS["sst2"], folder) is None:
        pytest.fail("GLUE's SST-2 and RTE files are expected under ../shared/data/glue (beside the checkout)")
    return folder


@pytest.fixture(scope="module")
def sst2(glue_dir):
    return load_classification_data("sst2", glue_dir=glue_dir)


@pytest.fixture(scope="module")
def rte(glue_dir):
    return load_classification_data("rte", glue_dir=glue_dir)


def write(path: Path, text: str | bytes) -> Path:
    """`text` into `path`, gzipped where the name ends in .gz."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def write_rows(path: Path, rows: list[dict]) -> Path:
    """`rows` as a CSV / TSV (with a header), JSON lines or a JSON array, by the name of `path` (optionally .gz)."""
    kind = [s for s in path.suffixes if s != ".gz"][-1]
    if kind == ".jsonl":
        return write(path, "".join(json.dumps(r) + "\n" for r in rows))
    if kind == ".json":
        return write(path, json.dumps(rows))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, list(rows[0]), delimiter="," if kind == ".csv" else "\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write(path, buffer.getvalue())


SENTIMENT = [{"text": "a warm , funny film", "label": "pos"}, {"text": "dull and far too long", "label": "neg"},
             {"text": "I loved every minute", "label": "pos"}, {"text": "a mess", "label": "neg"}]


# ---- metrics: hand-computed values (scikit-learn and scipy are not dependencies of oto-hf) ----


def test_accuracy_and_f1_by_hand():
    m = classification_metrics([1, 1, 0, 1, 0], [1, 0, 0, 1, 1], ("accuracy", "f1"))
    # tp 2, fp 1, fn 1, tn 1: accuracy 3/5, F1 = 2tp / (2tp + fp + fn) = 4/6.
    assert m == {"accuracy": pytest.approx(0.6), "f1": pytest.approx(2 / 3)}
    assert list(m) == ["accuracy", "f1"] and all(type(v) is float for v in m.values())
    assert classification_metrics([0, 0], [0, 0], ("f1",)) == {"f1": 0.0}  # no positive anywhere
    assert classification_metrics([1, 1], [1, 1], ("accuracy", "f1")) == {"accuracy": 1.0, "f1": 1.0}


def test_matthews_binary_and_three_classes_by_hand():
    # Binary, tp 2 tn 1 fp 1 fn 1: (tp·tn − fp·fn) / √((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2 − 1) / √(3·3·2·2) = 1/6.
    assert classification_metrics([1, 1, 0, 1, 0], [1, 0, 0, 1, 1], ("matthews_correlation",)) == {
        "matthews_correlation": pytest.approx(1 / 6)}
    # Three classes, confusion (rows true) [[1,1,0],[0,1,1],[1,0,1]]: t = p = (2,2,2), c = 3, s = 6:
    # (c·s − t·p) / √((s² − p·p)(s² − t·t)) = (18 − 12) / (36 − 12) = 1/4.
    assert classification_metrics([0, 1, 1, 2, 2, 0], [0, 0, 1, 1, 2, 2], ("matthews_correlation",)) == {
        "matthews_correlation": pytest.approx(0.25)}
    # Perfect, inverted, and a constant prediction (no correlation defined: 0, as scikit-learn says).
    assert classification_metrics([0, 1, 2], [0, 1, 2], ("matthews_correlation",))["matthews_correlation"] == 1.0
    assert classification_metrics([1, 0, 1, 0], [0, 1, 0, 1], ("matthews_correlation",))["matthews_correlation"] == -1.0
    assert classification_metrics([1, 1, 1, 1], [0, 1, 0, 1], ("matthews_correlation",))["matthews_correlation"] == 0.0
    # A class only the predictions have counts too: classes (0, 1, 3), t = (1, 1, 0), p = (1, 0, 1), c = 1, s = 2:
    # (2 − 1) / √((4 − 2)(4 − 2)) = 1/2.
    assert classification_metrics([0, 3], [0, 1], ("matthews_correlation",))["matthews_correlation"] == pytest.approx(
        0.5)


def test_pearson_and_spearman_with_ties_by_hand():
    m = classification_metrics([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 9.0], ("pearson", "spearmanr"))
    # x − x̄ = (−1.5, −.5, .5, 1.5), y − ȳ = (−3, −1, 0, 4): Σ = 11, Σx² = 5, Σy² = 26.
    assert m == {"pearson": pytest.approx(11 / np.sqrt(5 * 26)), "spearmanr": pytest.approx(1.0)}
    # Ties take their average rank: x ranks (1, 2.5, 2.5, 4), y ranks (1, 3, 2, 4): 4.5 / √(4.5 · 5).
    ties = classification_metrics([1, 2, 2, 3], [1, 3, 2, 4], ("spearmanr",))["spearmanr"]
    assert ties == pytest.approx(4.5 / np.sqrt(4.5 * 5))
    np.testing.assert_allclose(glue._ranks(np.array([3.0, 1.0, 3.0, 3.0, 0.5])), [4, 2, 4, 4, 1])
    assert classification_metrics([2.0, 2.0, 2.0], [1.0, 2.0, 3.0], ("pearson",)) == {"pearson": 0.0}  # constant


def test_metrics_refuse_unknown_names_and_mismatched_lengths():
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        classification_metrics([0], [0], ("bleu",))
    with pytest.raises(ValueError, match="2 predictions for 3 references"):
        classification_metrics([0, 1], [0, 1, 1], ("accuracy",))


def test_metrics_equal_scikit_learn_and_scipy_on_random_data():
    metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for trial in range(20):
        n, k = int(rng.integers(5, 60)), int(rng.integers(2, 5))
        references, predictions = rng.integers(0, k, n), rng.integers(0, k, n)
        ours = classification_metrics(predictions, references, ("accuracy", "matthews_correlation"))
        assert ours["accuracy"] == pytest.approx(metrics.accuracy_score(references, predictions))
        assert ours["matthews_correlation"] == pytest.approx(metrics.matthews_corrcoef(references, predictions))
        binary_p, binary_r = predictions % 2, references % 2
        if binary_p.any() or binary_r.any():
            assert classification_metrics(binary_p, binary_r, ("f1",))["f1"] == pytest.approx(
                metrics.f1_score(binary_r, binary_p))
        # Scores with ties (rounded to one decimal), as STS-B's are.
        x, y = rng.normal(size=n).round(1), rng.normal(size=n).round(1)
        ours = classification_metrics(x, y, ("pearson", "spearmanr"))
        assert ours["pearson"] == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
        assert ours["spearmanr"] == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_compute_metrics_for_the_trainer_and_predicted():
    labels = SimpleNamespace(is_regression=False, metrics=("accuracy", "f1"))
    logits = np.array([[0.2, 0.9], [2.0, -1.0], [0.0, 3.0]])
    prediction = SimpleNamespace(predictions=(logits, np.zeros(3)), label_ids=np.array([1, 1, 1]))
    assert glue.compute_metrics_for(labels)(prediction) == {"accuracy": pytest.approx(2 / 3), "f1": 0.8}
    scores = np.array([[0.5], [1.5], [2.5]])
    assert glue.predicted(scores, regression=True).tolist() == [0.5, 1.5, 2.5]
    regression = SimpleNamespace(is_regression=True, metrics=("pearson",))
    prediction = SimpleNamespace(predictions=scores, label_ids=np.array([1.0, 2.0, 3.0]))
    assert glue.compute_metrics_for(regression)(prediction) == {"pearson": pytest.approx(1.0)}


# ---- GLUE's own files ----


def test_local_sst2(sst2):
    assert (len(sst2.train), len(sst2.validation)) == (67_349, 872)
    assert sst2.labels == ["negative", "positive"] and sst2.metrics == ("accuracy",) and not sst2.is_regression
    assert sst2.title == "GLUE SST-2" and sst2.task_name == "sst2" and sst2.source["task_name"] == "sst2"
    assert sst2.source["train_file"].endswith("SST-2/train.tsv.gz")
    assert not sst2.pair and sst2.train.column_names == ["text_a", "label"]
    # GLUE's label indices (0 negative, 1 positive), counted as the data's SOURCE.md gives them.
    assert np.bincount(sst2.validation["label"]).tolist() == [428, 444]
    assert np.bincount(sst2.train["label"]).tolist() == [29_780, 37_569]
    assert sst2.validation[0] == {"text_a": "it 's a charming and often affecting journey . ", "label": 1}


def test_local_rte(rte):
    assert (len(rte.train), len(rte.validation)) == (2_490, 277)
    assert rte.labels == ["entailment", "not_entailment"] and rte.metrics == ("accuracy",)
    assert rte.pair and rte.train.column_names == ["text_a", "text_b", "label"]
    # GLUE's indices: entailment 0, not_entailment 1.
    assert np.bincount(rte.train["label"]).tolist() == [1_249, 1_241]
    assert np.bincount(rte.validation["label"]).tolist() == [146, 131]
    first = rte.validation[0]
    assert first["text_a"].startswith("Dana Reeve, the widow of the actor Christopher Reeve")
    assert first["text_b"] == "Christopher Reeve had an accident." and first["label"] == 1  # not_entailment


def test_task_names_are_normalised(glue_dir):
    assert load_classification_data("SST-2", glue_dir=glue_dir).task_name == "sst2"
    assert load_classification_data("RTE", glue_dir=glue_dir).labels == ["entailment", "not_entailment"]


def test_glue_task_table_matches_glue_label_order():
    t = glue.GLUE_TASKS
    assert set(t) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    assert t["mnli"].labels == ("entailment", "neutral", "contradiction") and t["mnli"].validation_split == \
        "validation_matched"
    assert t["wnli"].labels == ("not_entailment", "entailment") and t["qnli"].labels == ("entailment", "not_entailment")
    assert t["stsb"].labels is None and t["stsb"].metrics == ("pearson", "spearmanr")
    assert t["cola"].metrics[0] == "matthews_correlation" and t["mrpc"].metrics[0] == "f1"


def test_a_glue_folder_of_plain_tsv_files_read_as_glue_writes_them(tmp_path):
    """MRPC as GLUE ships it (its own column names, label column 'Quality', quotes that are text, not quoting)."""
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    rows = ['1\t1\t2\tHe said "yes.\tHe agreed.\n', "0\t3\t4\tIt rained.\tThe sun shone.\n"]
    (tmp_path / "MRPC").mkdir()
    write(tmp_path / "MRPC" / "train.tsv", header + "".join(rows))
    write(tmp_path / "MRPC" / "dev.tsv.gz", header + rows[1])
    files = glue.local_task_files(glue.GLUE_TASKS["mrpc"], tmp_path)
    assert files == {"train": tmp_path / "MRPC" / "train.tsv", "validation": tmp_path / "MRPC" / "dev.tsv.gz"}
    data = load_classification_data("mrpc", glue_dir=tmp_path)
    assert data.train.to_list() == [{"text_a": 'He said "yes.', "text_b": "He agreed.", "label": 1},
                                    {"text_a": "It rained.", "text_b": "The sun shone.", "label": 0}]
    assert data.labels == ["not_equivalent", "equivalent"] and data.metrics == ("f1", "accuracy")
    assert glue.local_task_files(glue.GLUE_TASKS["rte"], tmp_path) is None  # no RTE folder there
    assert glue.local_task_files(glue.GLUE_TASKS["cola"], tmp_path) is None  # CoLA's TSV has no header


def test_glue_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(glue.GLUE_DIR_ENV, str(tmp_path))
    assert glue.find_local_glue_dir() == tmp_path.resolve()
    monkeypatch.setenv(glue.GLUE_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(GlueDataError, match="OTO_GLUE_DIR=.*nowhere.* is set but is not a folder"):
        glue.find_local_glue_dir()


def test_a_task_not_found_locally_comes_from_the_hub_or_says_how_to_work_offline(tmp_path):
    # The tests run offline (conftest.py), so the Hub cannot be reached: the error says where the files would go.
    with pytest.raises(GlueDataError, match=r"cannot load 'wnli' of the Hub dataset 'nyu-mll/glue'.*WNLI/train\.tsv "
                                            r"and WNLI/dev\.tsv under \$OTO_GLUE_DIR.*--train_file"):
        load_classification_data("wnli", glue_dir=tmp_path)
    with pytest.raises(GlueDataError, match="'no-such-owner/no-such-glue'"):  # a dataset name skips the local files
        load_classification_data("sst2", dataset_name="no-such-owner/no-such-glue")


# ---- the user's files ----


@pytest.mark.parametrize("name", ["train.csv", "train.tsv", "train.jsonl", "train.json", "train.csv.gz",
                                  "train.jsonl.gz", "train.json.gz", "train.txt"])
def test_user_files_of_every_format(name, tmp_path):
    train = write_rows(tmp_path / name, SENTIMENT)
    dev = write_rows(tmp_path / name.replace("train", "dev"), SENTIMENT[:2])
    data = load_classification_data(train_file=str(train), validation_file=str(dev))
    assert data.labels == ["neg", "pos"] and data.metrics == ("accuracy", "f1") and not data.pair
    assert data.train.to_list() == [{"text_a": r["text"], "label": ["neg", "pos"].index(r["label"])} for r in SENTIMENT]
    assert len(data.validation) == 2 and data.task_name is None
    assert data.source == {"train_file": str(train), "validation_file": str(dev)} and data.title == dev.name


def test_user_files_with_two_text_columns_found_by_name(tmp_path):
    rows = [{"idx": i, "premise": f"p{i}", "hypothesis": f"h{i}", "label": ["yes", "no", "maybe"][i % 3]}
            for i in range(6)]
    data = load_classification_data(train_file=write_rows(tmp_path / "t.csv", rows),
                                    validation_file=write_rows(tmp_path / "d.csv", rows[:3]))
    assert data.pair and data.train[1] == {"text_a": "p1", "text_b": "h1", "label": 1}  # sorted: maybe, no, yes
    assert data.labels == ["maybe", "no", "yes"] and data.metrics == ("accuracy",)  # three classes: no F1
    rows = [{"sentence1": "a", "sentence2": "b", "extra": "c", "label": 0}, {"sentence1": "d", "sentence2": "e",
                                                                             "extra": "f", "label": 1}]
    data = load_classification_data(train_file=write_rows(tmp_path / "t.jsonl", rows),
                                    validation_file=write_rows(tmp_path / "d.jsonl", rows))
    assert data.train[0] == {"text_a": "a", "text_b": "b", "label": 0}


def test_user_files_with_text_and_label_columns_given(tmp_path):
    rows = [{"id": 7, "review": "great", "summary": "s1", "author": "x", "stars": 5},
            {"id": 8, "review": "bad", "summary": "s2", "author": "y", "stars": 1},
            {"id": 9, "review": "fine", "summary": "s3", "author": "z", "stars": 10}]
    train, dev = write_rows(tmp_path / "t.tsv", rows), write_rows(tmp_path / "d.tsv", rows[:1])
    # Three candidate text columns beside the id and the label: which hold the text cannot be told.
    with pytest.raises(GlueDataError, match=r"t\.tsv: cannot tell which columns hold the text \(columns: \['id', "
                                            r"'review', 'summary', 'author', 'stars'\]\); name one or two with "
                                            "--text_columns"):
        load_classification_data(train_file=train, validation_file=dev, label_column="stars")
    data = load_classification_data(train_file=train, validation_file=dev, text_columns=["review"],
                                    label_column="stars")
    assert data.labels == ["1", "5", "10"]  # whole numbers sort as numbers
    assert data.train["label"] == [1, 0, 2] and data.train["text_a"] == ["great", "bad", "fine"]
    data = load_classification_data(train_file=train, validation_file=dev, text_columns=["summary", "review"],
                                    label_column="stars")
    assert data.train[0] == {"text_a": "s1", "text_b": "great", "label": 1}
    # One column beside the label and an id: that one is the text, whatever its name.
    rows = [{"ID": 1, "comment": "nice", "label": "a"}, {"ID": 2, "comment": "meh", "label": "b"}]
    data = load_classification_data(train_file=write_rows(tmp_path / "c.csv", rows),
                                    validation_file=write_rows(tmp_path / "e.csv", rows))
    assert data.train["text_a"] == ["nice", "meh"]


def test_float_labels_make_a_regression(tmp_path):
    rows = [{"sentence1": "a", "sentence2": "b", "score": 3.8}, {"sentence1": "c", "sentence2": "d", "score": 1},
            {"sentence1": "e", "sentence2": "f", "score": "0.25"}]
    data = load_classification_data(train_file=write_rows(tmp_path / "t.json", rows),
                                    validation_file=write_rows(tmp_path / "d.json", rows[1:]), label_column="score")
    assert data.is_regression and data.labels is None and data.metrics == ("pearson", "spearmanr")
    assert data.train["label"] == [3.8, 1.0, 0.25] and data.validation["label"] == [1.0, 0.25]
    # Whole numbers alone are classes, even as JSON numbers.
    rows = [{"text": "x", "label": 1}, {"text": "y", "label": 0}]
    data = load_classification_data(train_file=write_rows(tmp_path / "i.json", rows),
                                    validation_file=write_rows(tmp_path / "j.json", rows))
    assert data.labels == ["0", "1"] and data.train["label"] == [1, 0]


def test_user_files_of_a_glue_task_take_its_labels_and_metrics(tmp_path):
    rows = [{"sentence1": "a", "sentence2": "b", "label": "not_entailment"},
            {"sentence1": "c", "sentence2": "d", "label": "entailment"}, {"sentence1": "e", "sentence2": "f",
                                                                           "label": 0}]  # an index works too
    data = load_classification_data("rte", train_file=write_rows(tmp_path / "t.csv", rows),
                                    validation_file=write_rows(tmp_path / "d.csv", rows[:1]))
    assert data.labels == ["entailment", "not_entailment"] and data.train["label"] == [1, 0, 0]
    assert data.metrics == ("accuracy",) and data.title == "GLUE RTE" and data.task_name == "rte"
    assert data.source == {"train_file": str(tmp_path / "t.csv"), "validation_file": str(tmp_path / "d.csv")}
    # SST-2's column is 'sentence' and its labels 0/1 are indices; STS-B is a regression even on whole numbers.
    rows = [{"sentence": "good", "label": 1}, {"sentence": "bad", "label": 0}]
    data = load_classification_data("sst2", train_file=write_rows(tmp_path / "s.tsv", rows),
                                    validation_file=write_rows(tmp_path / "sd.tsv", rows))
    assert data.labels == ["negative", "positive"] and data.train["label"] == [1, 0]
    rows = [{"sentence1": "a", "sentence2": "b", "label": 4}, {"sentence1": "c", "sentence2": "d", "label": 1}]
    data = load_classification_data("stsb", train_file=write_rows(tmp_path / "r.csv", rows),
                                    validation_file=write_rows(tmp_path / "rd.csv", rows))
    assert data.is_regression and data.train["label"] == [4.0, 1.0] and data.metrics == ("pearson", "spearmanr")


# ---- bad data: every refusal names the file, the row and what is wrong ----


def pair(tmp_path, train_rows, dev_rows=None, name="train.csv", dev_name="dev.csv"):
    """A training and a validation file of `train_rows` and `dev_rows` (default: the training rows)."""
    return (str(write_rows(tmp_path / name, train_rows)),
            str(write_rows(tmp_path / dev_name, train_rows if dev_rows is None else dev_rows)))


def refused(match, **kwargs):
    with pytest.raises(GlueDataError, match=match) as error:
        load_classification_data(**kwargs)
    return str(error.value)


def test_no_label_column(tmp_path):
    train, dev = pair(tmp_path, [{"text": "a", "sentiment": "pos"}, {"text": "b", "sentiment": "neg"}])
    refused(r"train\.csv: no label column 'label' \(its columns: \['text', 'sentiment'\]\); name the right one with "
            "--label_column", train_file=train, validation_file=dev)
    refused(r"train\.csv: no label column 'stars'", train_file=train, validation_file=dev, label_column="stars")
    # Present in training, missing from validation: the validation file is named.
    train, dev = pair(tmp_path, SENTIMENT, [{"text": "a", "sentiment": "pos"}])
    refused(r"dev\.csv: no label column 'label'", train_file=train, validation_file=dev)


def test_missing_text_column(tmp_path):
    train, dev = pair(tmp_path, SENTIMENT)
    refused(r"train\.csv: no text column 'review' \(its columns: \['text', 'label'\]\); name the right one with "
            "--text_columns", train_file=train, validation_file=dev, text_columns=["review"])
    rows = [{"sentence1": "a", "sentence2": "b", "label": "x"}]
    train, dev = pair(tmp_path, rows, [{"sentence1": "a", "label": "x"}])
    refused(r"dev\.csv: no text column 'sentence2'", train_file=train, validation_file=dev)
    refused("--text_columns takes one or two columns, got", train_file=train, validation_file=dev,
            text_columns=["sentence1", "sentence2", "label"])
    # A GLUE task's columns are expected in the user's files unless --text_columns names others.
    train, dev = pair(tmp_path, SENTIMENT)
    refused(r"train\.csv: no text column 'sentence'", task_name="sst2", train_file=train, validation_file=dev)


@pytest.mark.parametrize("empty", ["", "   ", None])
def test_empty_text_names_the_row(empty, tmp_path):
    rows = [dict(r) for r in SENTIMENT]
    rows[2]["text"] = empty
    train, dev = pair(tmp_path, rows, SENTIMENT, name="train.jsonl", dev_name="dev.jsonl")
    refused(r"train\.jsonl, row 3: the text column 'text' is empty; remove the row or fill it in",
            train_file=train, validation_file=dev)


def test_empty_text_in_the_second_column_of_a_pair(tmp_path):
    rows = [{"sentence1": "a", "sentence2": "b", "label": "x"}, {"sentence1": "c", "sentence2": "", "label": "y"}]
    train, dev = pair(tmp_path, rows[:1], rows)
    refused(r"dev\.csv, row 2: the text column 'sentence2' is empty", train_file=train, validation_file=dev)


def test_empty_label_names_the_row(tmp_path):
    rows = [dict(r) for r in SENTIMENT]
    rows[1]["label"] = ""
    train, dev = pair(tmp_path, SENTIMENT, rows, name="train.tsv", dev_name="dev.tsv")
    refused(r"dev\.tsv, row 2: the label column 'label' is empty; every row needs a label",
            train_file=train, validation_file=dev)
    # A CSV row cut short has no label either.
    write(tmp_path / "short.csv", "text,label\nhello,pos\nno label here\nbye,neg\n")
    refused(r"short\.csv, row 2: the label column 'label' is empty", train_file=str(tmp_path / "short.csv"),
            validation_file=dev)


def test_validation_label_not_seen_in_training(tmp_path):
    train, dev = pair(tmp_path, SENTIMENT, [*SENTIMENT[:2], {"text": "so-so", "label": "mixed"}])
    refused(r"dev\.csv, row 3: label 'mixed' was not seen in training \(labels: \['neg', 'pos'\]\)",
            train_file=train, validation_file=dev)
    # A number is not taken as an index into the user's own (sorted) label names.
    train, dev = pair(tmp_path, SENTIMENT, [{"text": "x", "label": "1"}])
    refused(r"dev\.csv, row 1: label '1' was not seen in training", train_file=train, validation_file=dev)
    # Numeric classes: 2 is not one of 0 and 1.
    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 1}]
    train, dev = pair(tmp_path, rows, [*rows, {"text": "c", "label": 2}])
    refused(r"dev\.csv, row 3: label '2' was not seen in training", train_file=train, validation_file=dev)
    # A GLUE task's labels: a name it does not have, or an index out of range.
    train, dev = pair(tmp_path, [{"sentence": "a", "label": "positive"}], [{"sentence": "b", "label": "neutral"}])
    refused(r"dev\.csv, row 1: label 'neutral' was not seen in training \(labels: \['negative', 'positive'\]\)",
            task_name="sst2", train_file=train, validation_file=dev)
    train, dev = pair(tmp_path, [{"sentence": "a", "label": 1}], [{"sentence": "b", "label": 2}])
    refused(r"dev\.csv, row 1: label '2' was not seen", task_name="sst2", train_file=train, validation_file=dev)


def test_regression_label_that_is_not_a_number(tmp_path):
    rows = [{"sentence1": "a", "sentence2": "b", "label": 2.5}, {"sentence1": "c", "sentence2": "d", "label": 1}]
    train, dev = pair(tmp_path, rows, [*rows, {"sentence1": "e", "sentence2": "f", "label": "high"}])
    refused(r"dev\.csv, row 3: label 'high' is not a number \(this task is a regression\)",
            train_file=train, validation_file=dev)


@pytest.mark.parametrize("name, content, problem", [
    ("train.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", r"train\.csv is not a CSV table: 'utf-8' codec"),
    ("train.csv.gz", b"\x89PNG\r\n\x1a\n\x00\xff\xfe", r"train\.csv\.gz is not a CSV table"),
    ("train.json", b"\x89PNG\r\n\x1a\n\x00\xff\xfe", r"train\.json is not a JSON table"),
    ("train.json", "42\n", r"train\.json is not a JSON table: it does not start with '\{' \(JSON lines\) or '\[' "),
    ("train.jsonl", '{"text": "a", "label": \n', r"train\.jsonl is not a JSONL table"),
    ("train.json", "[1, 2, 3]", r"train\.json is not a table with a text and a label column: it has the column\(s\) "
                                r"\[0\]"),
    ("train.tsv", "text,label\na,pos\nb,neg\n", r"train\.tsv is not a table with a text and a label column: it has "
                                                r"the column\(s\) \['text,label'\] \(a TSV must be tab-separated"),
    ("train.csv", "text,label\na,pos\nb,neg,extra\n", r"train\.csv is not a CSV table: .*Expected 2 fields in line 3"),
    # An unquoted separator in the first row (which pandas alone would read as an index column, shifting the rest).
    ("train.csv", "text,label\na warm , funny film,pos\ndull,neg\n", r"train\.csv, row 1: more fields than the "
                                                                     "header's 2 columns; quote a text that holds"),
    ("train.tsv", "text\tlabel\nx\tpos\t\ny\tneg\t\n", r"train\.tsv, row 1: more fields than the header's 2"),
    ("train.csv", "", r"train\.csv is not a CSV table: No columns to parse"),
    ("train.csv", "text,label\n", r"train\.csv: no rows"),
])
def test_files_that_are_not_tables(name, content, problem, tmp_path):
    bad = write(tmp_path / name, content)
    dev = write_rows(tmp_path / "dev.csv", SENTIMENT)
    refused(problem, train_file=str(bad), validation_file=str(dev))


def test_unknown_extension_missing_file_and_half_a_pair(tmp_path):
    dev = str(write_rows(tmp_path / "dev.csv", SENTIMENT))
    parquet = write(tmp_path / "train.parquet", b"PAR1")
    refused(r"train\.parquet: unknown file type '\.parquet'; give a \.csv, \.tsv, \.json or \.jsonl file "
            r"\(optionally \.gz\)", train_file=str(parquet), validation_file=dev)
    refused(r"train: unknown file type '\(none\)'", train_file=str(write(tmp_path / "train", "text,label\n")),
            validation_file=dev)
    refused(r"nowhere\.csv: no such file", train_file=str(tmp_path / "nowhere.csv"), validation_file=dev)
    refused(r"nowhere\.csv: no such file", train_file=dev, validation_file=str(tmp_path / "nowhere.csv"))
    refused(r"give both --train_file and --validation_file", train_file=dev)
    refused(r"give both --train_file and --validation_file", validation_file=dev)


def test_unknown_task_and_no_data():
    message = refused(r"--task_name 'sst5' is not a GLUE task; known: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, "
                      "wnli. For other data give --train_file and --validation_file", task_name="sst5")
    assert "sst5" in message
    refused(r"no data given: pass --task_name")


def test_an_empty_validation_file(tmp_path):
    train = str(write_rows(tmp_path / "train.csv", SENTIMENT))
    refused(r"dev\.csv: no rows", train_file=train, validation_file=str(write(tmp_path / "dev.csv", "text,label\n")))


def test_read_table_keeps_text_verbatim(tmp_path):
    # CSV quoting for CSV files; commas and quotes inside a quoted field are text. Nothing becomes NaN.
    with open(tmp_path / "q.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["text", "label"], ['He said "no", twice', "neg"], ["NA", "null"]])
    assert glue.read_table(tmp_path / "q.csv") == [{"text": 'He said "no", twice', "label": "neg"},
                                                   {"text": "NA", "label": "null"}]


def test_the_old_module_is_a_deprecated_alias_of_the_task_module():
    import importlib

    sys.modules.pop("oto_hf.glue", None)
    with pytest.warns(DeprecationWarning, match="oto_hf.glue is deprecated.*oto_hf.tasks.classification"):
        old = importlib.import_module("oto_hf.glue")
    assert old.load_classification_data is load_classification_data and old.GLUE_TASKS is glue.GLUE_TASKS


# ---- issue 43 item 3: one class; item 8: byte-order marks, TSV quotes


def test_single_class_training_data_is_refused_before_training(tmp_path):
    # With one label the head has one output, trains to the end, and compressing the model fails: refuse up front.
    train = write_rows(tmp_path / "train.csv", [{"text": t, "label": "pos"} for t in ("good", "great", "fine")])
    dev = write_rows(tmp_path / "dev.csv", [{"text": "bad", "label": "pos"}])
    message = refused(r"train\.csv: every training row has the label 'pos'; a classifier needs at least two labels",
                      train_file=str(train), validation_file=str(dev))
    assert str(train) in message
    # A GLUE task whose training rows are all one label, too (its label set has two, the data one).
    train = write_rows(tmp_path / "sst_train.tsv", [{"sentence": s, "label": "1"} for s in ("good", "fine")])
    dev = write_rows(tmp_path / "sst_dev.tsv", [{"sentence": "bad", "label": "0"}])
    refused(r"sst_train\.tsv: every training row has the label 'positive'", task_name="sst2", train_file=str(train),
            validation_file=str(dev))


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.json", "rows.jsonl.gz", "rows.csv", "rows.tsv"])
def test_a_byte_order_mark_is_read_like_none(tmp_path, name):
    plain = write_rows(tmp_path / name, SENTIMENT)
    raw = gzip.decompress(plain.read_bytes()) if name.endswith(".gz") else plain.read_bytes()
    marked = write(tmp_path / ("bom_" + name), "\ufeff".encode("utf-8") + raw)
    assert glue.read_table(marked) == glue.read_table(plain) == SENTIMENT


def test_a_tsv_text_keeps_its_quotes(tmp_path):
    # A TSV's text is kept as written; quoting is CSV's (test_read_table_keeps_text_verbatim).
    written = '"the movie" is great\tpos\nit said "no"\tneg\n"all quoted"\tpos\n'
    rows = glue.read_table(write(tmp_path / "quotes.tsv", "text\tlabel\n" + written))
    assert [r["text"] for r in rows] == ['"the movie" is great', 'it said "no"', '"all quoted"']
    # A TSV text cannot hold a tab: the error says so (not "quote it", which a TSV does not do).
    with pytest.raises(GlueDataError, match="a TSV text cannot hold a tab"):
        glue.read_table(write(tmp_path / "tab.tsv", "text\tlabel\na\tb\tpos\nc\tneg\n"))
