"""The model card: one typed `CardInfo` rendered by `model_card`, whoever fills it (a job script, OTOTrainer)."""

import pytest
from transformers import BertForSequenceClassification

from conftest import tiny_bert_config
from oto_hf import compress, model_stats
from oto_hf.model_card import CardInfo, Evaluation, card_arguments_evaluations, model_card


@pytest.fixture(scope="module")
def models():
    dense = BertForSequenceClassification(tiny_bert_config(num_labels=2)).eval()
    layer = dense.bert.encoder.layer[0]
    layer.intermediate.dense.weight.data[:12] = 0  # half of layer 0's FFN neurons are zero groups
    layer.intermediate.dense.bias.data[:12] = 0
    layer.output.dense.weight.data[:, :12] = 0
    small = compress(dense)
    return dense, small, model_stats(dense, 16, exclude_zero_groups=False), model_stats(small, 16)


def test_card_from_info_is_the_card_from_keywords(models):
    _, small, before, after = models
    fields = dict(model_name="tiny-oto10", base_model="bert-base-uncased", before=before, after=after,
                  settings={"oto_target": 0.1}, family="bert", licence="apache-2.0", tags=["sentiment"],
                  evaluations=[Evaluation("glue", "SST-2", "validation", {"accuracy": 0.9}, {"accuracy": 0.92}, "sst2")],
                  speedup={"speedup": 1.5, "batch_size": 8, "seq_len": 16, "threads": 2, "repeats": 3,
                           "encoder_flops_ratio": 1.1})
    by_keywords = str(model_card(small, **fields))
    assert str(model_card(small, CardInfo(**fields))) == by_keywords
    # keywords override the info's fields
    assert "# other-name" in str(model_card(small, CardInfo(**fields), model_name="other-name"))
    for text in ("tiny-oto10", "bert-base-uncased", "apache-2.0", "sentiment", "| SST-2 | validation | Accuracy | 0.90 | 0.92 |",
                 "1.50× faster", "## What was removed", '"oto_target": 0.1'):
        assert text in by_keywords, text


def test_dense_card_has_no_pruning_sections(models):
    dense, _, before, _ = models
    text = str(model_card(dense, CardInfo(model_name="tiny-dense", before=before, after=before)))
    assert "dense baseline (AdamW, no pruning)" in text
    assert "## What was removed" not in text and "trust_remote_code" not in text


def test_card_needs_name_and_stats(models):
    _, small, before, _ = models
    with pytest.raises(ValueError, match="before and after"):
        model_card(small, CardInfo(model_name="x", before=before))


def test_merged_takes_only_what_is_unset():
    mine = CardInfo(model_name="mine", tags=[], speedup=None)
    other = CardInfo(model_name="other", tags=["a"], speedup={"speedup": 2.0}, base_model="b")
    merged = mine.merged(other)
    assert (merged.model_name, merged.tags, merged.speedup, merged.base_model) == ("mine", ["a"], {"speedup": 2.0}, "b")
    assert mine.model_name == "mine" and mine.tags == []  # neither side is changed


def test_card_arguments_become_evaluations():
    metrics = {"eval_accuracy": 0.8}
    named = card_arguments_evaluations(metrics, ["glue"], ["GLUE SST-2"], ["sst2"])
    assert [(e.dataset_type, e.dataset_name, e.dataset_config) for e in named] == [("glue", "GLUE SST-2", "sst2")]
    assert [e.dataset_name for e in card_arguments_evaluations(metrics, [], ["mine"], [])] == ["mine"]
    unnamed = card_arguments_evaluations(metrics, [], [], [])
    assert [(e.dataset_type, e.dataset_name) for e in unnamed] == [("", "evaluation data")]
    assert card_arguments_evaluations({}, ["glue"], [], []) == []


def test_a_speedup_measured_on_a_busy_machine_says_so(models):
    _, small, before, after = models
    speedup = {"speedup": 1.08, "batch_size": 8, "seq_len": 128, "threads": 2, "repeats": 5,
               "encoder_flops_ratio": 2.0, "busy": True, "max_foreign_load_cores": 1.9, "foreign_load_cores": [1.9]}
    text = str(model_card(small, CardInfo(model_name="m", before=before, after=after, settings={}, speedup=speedup)))
    assert "1.08× faster" in text and "busy machine: other processes used up to 1.90 cores" in text
