"""Compressed models as transformers models: save and load (with oto_hf imported, and without it through
trust_remote_code), strict loading of the body, a new task head, old checkpoints, the KV cache."""

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from safetensors.torch import load_file, save_file
from transformers import (AutoModel, AutoModelForMaskedImageModeling, AutoModelForQuestionAnswering,
                          AutoModelForSequenceClassification, BertForQuestionAnswering)

import families
from conftest import assert_exact, tiny_bert_config
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
        assert_exact(model(**inputs).logits, torch.tensor(expected["logits"]), relative=1e-6)
    out = families.run_python(f"""
        import sys, json, torch
        sys.modules['oto_hf'] = None
        from transformers import AutoModelForSequenceClassification
        expected = json.load(open("{folder}/expected.json"))
        model = AutoModelForSequenceClassification.from_pretrained("{folder}", trust_remote_code=True).eval()
        logits = model(**{{k: torch.tensor(expected[k]) for k in ("input_ids", "attention_mask")}}).logits
        expected_logits = torch.tensor(expected["logits"])
        assert (logits - expected_logits).abs().max() <= 1e-6 * max(1.0, expected_logits.abs().max())
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


def test_a_cut_hidden_width_is_validated():
    with pytest.raises(StrictDataclassClassValidationError, match=r"compressed_hidden_size is 40: it must lie in \[1, "):
        OTOBertConfig(hidden_size=32, num_attention_heads=4, compressed_hidden_size=40)


@pytest.mark.parametrize("model_type,class_name,auto", [("bert", "BertForMaskedLM", "AutoModelForMaskedLM")])
def test_a_model_with_its_hidden_width_cut_reloads_in_fresh_processes(model_type, class_name, auto, tmp_path):
    """Saved, then loaded in a fresh process without oto_hf (trust_remote_code: the checkpoint's own code): same
    outputs, the narrower stream from the config, a tied decoder still tied. (With oto_hf imported, fresh processes
    reload every family's cut stream in tests/test_trainer.py, and the conformance suite checks the tie in process.)"""
    small = families.compressed_model(model_type, class_name)
    width = small.config.compressed_hidden_size
    assert width == 24
    small.save_pretrained(tmp_path)
    inputs = families.inputs(model_type, class_name)
    with torch.no_grad():
        expected = small(**inputs)[0]
    torch.save({"inputs": inputs, "expected": expected}, tmp_path / "expected.pt")
    for prelude, remote in (("sys.modules['oto_hf'] = None", True),):
        out = families.run_python(f"""
            import sys, torch
            {prelude}
            import transformers
            data = torch.load("{tmp_path}/expected.pt")
            model = transformers.{auto}.from_pretrained("{tmp_path}", trust_remote_code={remote}).eval()
            model.set_attn_implementation("eager")
            out = model(**data["inputs"])[0]
            scale = max(1.0, float(data["expected"].abs().max()))
            assert (out - data["expected"]).abs().max() <= 1e-5 * scale, (out - data["expected"]).abs().max()
            tied = model.get_output_embeddings()
            print(type(model).__module__, model.config.compressed_hidden_size,
                  tied is None or tied.weight is model.get_input_embeddings().weight)
        """, tmp_path)
        module, loaded_width, tied = out.split()
        assert loaded_width == str(width) and tied == "True"
        assert ("oto_hf" not in module) == remote


def test_the_compressed_classes_are_the_stock_ones():
    small = compress(BertForQuestionAnswering(tiny_bert_config()))
    assert isinstance(small, OTOBertForQuestionAnswering) and isinstance(small, BertForQuestionAnswering)
    assert isinstance(small.bert, OTOBertModel.__bases__[1])


@pytest.mark.parametrize("model_type", families.VISION)
def test_a_compressed_vit_loads_into_masked_image_modeling(model_type, tmp_path):
    """A compressed image classifier gives its body to the masked-image-modeling head, and to a base model with
    `use_mask_token=True`: the mask token those add to the body is new and initialised as stock does (zeros), the
    pruned body loads as saved, and a missing encoder weight is still refused."""
    small = families.compressed_model(model_type, families.classifier(model_type)).eval()
    small.save_pretrained(tmp_path / "small")
    stock = families.build(model_type, families.classifier(model_type))
    stock.save_pretrained(tmp_path / "stock")
    stock_mim = AutoModelForMaskedImageModeling.from_pretrained(tmp_path / "stock")
    pixels, masked = families.inputs(model_type, "ViTForMaskedImageModeling").values()
    for loaded in (AutoModelForMaskedImageModeling.from_pretrained(tmp_path / "small"),
                   AutoModel.from_pretrained(tmp_path / "small", use_mask_token=True)):
        body = loaded.base_model.eval()
        stock_token = stock_mim.base_model.embeddings.mask_token  # zeros, over the stream's width (cut here)
        assert not stock_token.any() and not body.embeddings.mask_token.any()
        assert body.embeddings.mask_token.shape[-1] == small.config.compressed_hidden_size
        with torch.no_grad():
            assert_exact(body(pixels).last_hidden_state, small.base_model(pixels).last_hidden_state)
            assert body(pixels, bool_masked_pos=masked).last_hidden_state.isfinite().all()
    assert AutoModelForMaskedImageModeling.from_pretrained(tmp_path / "small").config.num_attention_heads_per_layer \
        == small.config.num_attention_heads_per_layer
    weights = load_file(tmp_path / "small" / "model.safetensors")
    del weights[f"{model_type}.encoder.layer.2.output.dense.weight"]  # ViT's checkpoints keep the legacy names
    save_file(weights, tmp_path / "small" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing from the weights"):
        AutoModelForMaskedImageModeling.from_pretrained(tmp_path / "small")


def test_checkpoints_with_the_unread_parameters_of_emptied_layers_load_without_them(tmp_path):
    """Checkpoints written before emptied layers dropped their unread parameters (zero-row Q/K/V, pre-LN norms)
    still load, silently and with the same outputs: those parameters are ignored."""
    small = families.compressed_model("vit", "ViTForImageClassification").eval()
    small.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    layer = "vit.encoder.layer"  # ViT's checkpoints keep the legacy names
    old = {f"{layer}.1.attention.attention.query.weight": torch.zeros(0, 32),
           f"{layer}.1.attention.attention.query.bias": torch.zeros(0),
           f"{layer}.1.layernorm_before.weight": torch.ones(32), f"{layer}.2.layernorm_after.bias": torch.zeros(32)}
    assert not old.keys() & weights.keys()
    save_file(weights | old, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded, info = type(small).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"]
    pixels = families.inputs("vit")["pixel_values"]
    with torch.no_grad():
        assert_exact(loaded.eval()(pixels).logits, small(pixels).logits)
