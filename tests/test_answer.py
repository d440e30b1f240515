"""`python -m oto_hf.answer`: refuses what it cannot answer with (a model that is not question answering, a blank
question or context, a torn weight file) with one error line and exit status 2, before loading any weights where the
config says enough. Its answers on a real model are tested in test_run_squad.py (the saved compressed model)."""

import shutil

import pytest
from transformers import AutoTokenizer, BertForQuestionAnswering, BertForSequenceClassification

from conftest import tiny_bert_config
from oto_hf import answer

QUESTION = ["--question", "Who won?", "--context", "The Broncos won the game."]


@pytest.fixture(scope="module")
def qa_dir(minilm_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("qa")
    BertForQuestionAnswering(tiny_bert_config(vocab_size=30522, max_position_embeddings=512)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    return folder


def refused(capsys, argv, message):
    capsys.readouterr()  # what saving the fixtures printed
    assert answer.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m oto_hf.answer: error: ") and "\n" not in err, err
    assert message in err, err
    return err


def test_a_model_that_is_not_question_answering_is_refused_before_its_weights_load(tmp_path, capsys, monkeypatch):
    BertForSequenceClassification(tiny_bert_config()).save_pretrained(tmp_path / "classifier")
    loaded = []
    monkeypatch.setattr(answer, "answer_question", lambda *a, **k: loaded.append(1) or {"answer": "made up"})
    refused(capsys, [str(tmp_path / "classifier"), *QUESTION],
            "is not a question-answering model (its config names ['BertForSequenceClassification'])")
    # A config naming no architecture is no evidence of a QA head either; a missing folder is one line too.
    tiny_bert_config().save_pretrained(tmp_path / "bare")
    refused(capsys, [str(tmp_path / "bare"), *QUESTION], "names no architecture")
    refused(capsys, [str(tmp_path / "missing"), *QUESTION], "no such folder")
    assert not loaded


@pytest.mark.parametrize("argv, message", [
    (["--question", "  ", "--context", "The Broncos won."], "--question is blank"),
    (["--question", "Who won?", "--context", " \n"], "the context is blank")])
def test_a_blank_question_or_context_is_refused(qa_dir, capsys, argv, message):
    refused(capsys, [str(qa_dir), *argv], message)


def test_a_truncated_weight_file_is_named(qa_dir, tmp_path, capsys):
    torn = tmp_path / "torn"
    shutil.copytree(qa_dir, torn)
    weights = torn / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    refused(capsys, [str(torn), *QUESTION], f"cannot load weights from {weights}: ")


def test_a_question_answering_model_answers(qa_dir, capsys):
    assert answer.main([str(qa_dir), *QUESTION]) == 0
    assert capsys.readouterr().out.strip() in "The Broncos won the game."
