"""Compressed models as transformers models: save and load (with oto_hf imported, and without it through
trust_remote_code), strict loading of the body, a new task head, old checkpoints, the KV cache."""

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from safetensors.torch import load_file, save_file
from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          BertForQuestionAnswering)

import families
from conftest import tiny_bert_config
from oto_hf import OTOBertConfig, OTOBertForQuestionAnswering, OTOBertModel, compress
from oto_hf.modeling_oto import AUTO_CLASSES

FIXTURES = Path(__file__).parent / "fixtures"


compressed = families.compressed_model


def test_checkpoint_records_per_layer_sizes_and_carries_its_code(tmp_path):
    compressed("roberta", "RobertaForSequenceClassification").save_pretrained(tmp_path)
    folder = tmp_path
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "oto_roberta"
    assert config["num_attention_heads_per_layer"][1] == 0 and config["intermediate_size_per_layer"][2] == 0
    assert config["auto_map"]["AutoModelForSequenceClassification"] == "modeling_oto.OTORobertaForSequenceClassification"
    assert config["auto_map"]["AutoConfig"] == "configuration_oto.OTORobertaConfig"
    assert set(config["auto_map"]) == {"AutoConfig", *AUTO_CLASSES["oto_roberta"]}
    assert {"model.safetensors", "modeling_oto.py", "configuration_oto.py", "architectures.py"} <= {
        p.name for p in folder.iterdir()}


def test_checkpoints_of_oto_hf_0_1_keep_loading(tmp_path):
    """A compressed BERT saved by oto_hf 0.1.0 (its own modeling_oto_bert.py beside it) loads through the Auto
    classes after `import oto_hf`, and without oto_hf through the code it carries, with the same logits."""
    folder = FIXTURES / "oto_bert_v0.1.0_seqcls"
    expected = json.loads((folder / "expected.json").read_text())
    inputs = {k: torch.tensor(expected[k]) for k in ("input_ids", "attention_mask")}
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert type(model).__module__ == "oto_hf.modeling_oto"
    assert model.config.num_attention_heads_per_layer == [3, 0, 4]
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, torch.tensor(expected["logits"]), rtol=0, atol=1e-6)
    out = families.run_python(f"""
        import sys, json, torch
        sys.modules['oto_hf'] = None
        from transformers import AutoModelForSequenceClassification
        expected = json.load(open("{folder}/expected.json"))
        model = AutoModelForSequenceClassification.from_pretrained("{folder}", trust_remote_code=True).eval()
        logits = model(**{{k: torch.tensor(expected[k]) for k in ("input_ids", "attention_mask")}}).logits
        assert (logits - torch.tensor(expected["logits"])).abs().max() < 1e-6
        print(type(model).__module__)
    """, tmp_path)
    assert "modeling_oto_bert" in out


def test_in_process_round_trip_through_every_auto_class(tmp_path):
    small = compressed("bert", "BertForPreTraining")
    small.save_pretrained(tmp_path)
    for auto_name, cls in AUTO_CLASSES["oto_bert"].items():
        if auto_name in ("AutoModelForCausalLM",):
            continue  # a decoder needs is_decoder=True: see the cache tests
        loaded = getattr(__import__("transformers"), auto_name).from_pretrained(tmp_path)
        assert type(loaded) is cls, auto_name


@pytest.fixture
def saved_qa(tmp_path):
    small = compressed("bert", "BertForQuestionAnswering")
    small.save_pretrained(tmp_path / "qa")
    return tmp_path / "qa", small


def test_weights_that_do_not_match_the_config_fail_clearly(saved_qa):
    folder, small = saved_qa
    config = json.loads((folder / "config.json").read_text())
    config["num_attention_heads_per_layer"][0] = 4 if config["num_attention_heads_per_layer"][0] != 4 else 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match its OTOBertConfig"):
        AutoModelForQuestionAnswering.from_pretrained(folder)
    # Even when asked to ignore mismatched sizes, pruned weights are never silently re-drawn.
    with pytest.raises(ValueError, match="do not match its OTOBertConfig"):
        AutoModelForQuestionAnswering.from_pretrained(folder, ignore_mismatched_sizes=True)


def test_missing_encoder_weights_fail_clearly(saved_qa):
    folder, _ = saved_qa
    weights = load_file(folder / "model.safetensors")
    del weights["bert.encoder.layer.2.output.dense.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing from the weights.*layer.2.output.dense.weight"):
        OTOBertForQuestionAnswering.from_pretrained(folder)


def test_config_validation():
    with pytest.raises(StrictDataclassClassValidationError, match="one entry per layer"):
        OTOBertConfig(num_hidden_layers=2, num_attention_heads_per_layer=[12])
    with pytest.raises(StrictDataclassClassValidationError, match="outside"):
        OTOBertConfig(num_hidden_layers=1, intermediate_size_per_layer=[5000])


def test_the_compressed_classes_are_the_stock_ones():
    small = compress(BertForQuestionAnswering(tiny_bert_config()))
    assert isinstance(small, OTOBertForQuestionAnswering) and isinstance(small, BertForQuestionAnswering)
    assert isinstance(small.bert, OTOBertModel.__bases__[1])
