"""ONNX export (`oto_hf.export`): compressed models of every family export with their own inputs, dynamic batch and
sequence axes and their output fields' names; onnxruntime gives PyTorch's outputs (≤ 1e-4) on padded batches of
several sizes, layers without heads or FFN neurons included; the int8 file is smaller and close; the command line
works and fails clearly. One export per family (torch's exporter takes seconds per model), shared by the tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers

import families
import oto_hf
from oto_hf import export
from oto_hf.architectures import FAMILIES, FAMILY_OF_MODEL_TYPE
from oto_hf.export import OnnxMismatchError, check_onnx, export_onnx, onnx_input_names
from oto_hf.groups import HEAD, NEURON

REPO_ROOT = Path(__file__).resolve().parents[1]

# One compressed model per family, sequence classification and question answering between them (image
# classification for ViT), and a dense stock RoBERTa-like with one token type (so no token_type_ids input).
CASES = {"bert-qa": ("bert", "BertForQuestionAnswering", {}),
         "distilbert-seqcls": ("distilbert", "DistilBertForSequenceClassification", {}),
         "deberta-v2-qa": ("deberta-v2", "DebertaV2ForQuestionAnswering", {}),
         "modernbert-seqcls": ("modernbert", "ModernBertForSequenceClassification", {}),
         "vit-imgcls": ("vit", "ViTForImageClassification", {}),
         "dense-roberta-seqcls": ("roberta", "RobertaForSequenceClassification", {"type_vocab_size": 1})}
EXPECTED_INPUTS = {"bert": ["input_ids", "attention_mask", "token_type_ids"],
                   "distilbert": ["input_ids", "attention_mask"],
                   "deberta-v2": ["input_ids", "attention_mask"],  # type_vocab_size 0, as DeBERTa-v3
                   "modernbert": ["input_ids", "attention_mask"],
                   "vit": ["pixel_values"],
                   "roberta": ["input_ids", "attention_mask"]}


def test_every_family_is_exported():
    assert {FAMILY_OF_MODEL_TYPE[t].name for t, _, _ in CASES.values()} == {f.name for f in FAMILIES}


_EXPORTS: dict[str, tuple] = {}


def _export(case: str, tmp_path_factory) -> tuple:
    """(model type, model, export_onnx's result) of `case`, exported once per test session: a compressed model with
    a layer without heads and one without FFN neurons, or the dense stock model."""
    if case not in _EXPORTS:
        model_type, class_name, overrides = CASES[case]
        attn = families.ATTENTION[model_type][-1]
        if case.startswith("dense"):
            torch.manual_seed(0)
            model = families.build(model_type, class_name, attn, **overrides)
        else:
            model = families.compressed_model(model_type, class_name, attn=attn, **overrides)
            assert 0 in model.config.num_attention_heads_per_layer and 0 in model.config.intermediate_size_per_layer
        info = export_onnx(model, tmp_path_factory.mktemp(case) / "model.onnx", quantize="int8")
        _EXPORTS[case] = (model_type, model, info)
    return _EXPORTS[case]


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    return _export(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def bert_exported(tmp_path_factory):
    """The BERT case alone, for the tests of what does not depend on the family."""
    return _export("bert-qa", tmp_path_factory)


def test_onnx_equals_pytorch_on_padded_batches(exported):
    model_type, model, info = exported
    diffs = check_onnx(model, info["path"], batch_sizes=(1, 3, 4), seq_lens=(7, 33), atol=1e-4)
    assert list(diffs) == info["output_names"]
    assert max(diffs.values()) <= 1e-4


def test_inputs_are_the_forwards_and_axes_are_dynamic(exported):
    model_type, model, info = exported
    graph = onnx.load(info["path"]).graph
    assert [i.name for i in graph.input] == info["input_names"] == EXPECTED_INPUTS[model_type]
    for value in graph.input:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims[:2] == (["batch", 3] if model_type in families.VISION else ["batch", "sequence"])
    with torch.no_grad():
        fields = [k for k, v in model(**export.sample_inputs(model)).items() if torch.is_tensor(v)]
    assert [o.name for o in graph.output] == info["output_names"] == fields
    assert fields == (["start_logits", "end_logits"] if "QuestionAnswering" in type(model).__name__ else ["logits"])
    # No stack traces with this machine's paths in a deployment file.
    assert not any(node.metadata_props for node in graph.node)


def test_attention_is_traced_eager_and_the_model_keeps_its_own(exported):
    """Eager attention is traced whatever the model runs (no SDPA guards for fully masked rows: IsNaN/Where over
    every score); the model is left with its own, and the file still equals it (the test above)."""
    model_type, model, info = exported
    assert info["attn_implementation"] == "eager"
    assert model.config._attn_implementation == families.ATTENTION[model_type][-1]
    assert "IsNaN" not in {node.op_type for node in onnx.load(info["path"]).graph.node}


def test_int8_is_smaller_and_close(exported):
    model_type, model, info = exported
    assert Path(info["int8_path"]).name == "model.int8.onnx" and info["int8_bytes"] < info["bytes"]
    int8 = onnx.load(info["int8_path"]).graph
    assert any(node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for node in int8.node)
    diffs = check_onnx(model, info["int8_path"], atol=None)
    with torch.no_grad():
        scale = max(v.abs().max().item() for v in model(**export.sample_inputs(model, batch=3, length=33)).values()
                    if torch.is_tensor(v))
    # Loose: the tiny models' weights are drawn 10x wider than real ones; the real MiniLM is checked below.
    assert 0 < max(diffs.values()) <= 0.2 * scale, (diffs, scale)


def test_check_raises_above_tolerance(bert_exported):
    _, model, info = bert_exported
    with pytest.raises(OnnxMismatchError, match="differs from PyTorch") as error:
        check_onnx(model, info["int8_path"], batch_sizes=(2,), seq_lens=(9,), atol=1e-9)
    assert set(error.value.max_abs_diff) == set(info["output_names"])


def test_check_refuses_a_file_of_another_model(bert_exported):
    _, _, info = bert_exported
    with pytest.raises(ValueError, match="takes inputs"):
        check_onnx(families.build("vit", "ViTForImageClassification"), info["path"])


def test_input_names_of_every_model_type():
    """Text models take the forward's inputs, token_type_ids only where there is more than one token type."""
    for model_type in families.MODEL_TYPES:
        model = families.build(model_type, families.classifier(model_type))
        names = onnx_input_names(model)
        if model_type in families.VISION:
            assert names == ["pixel_values"]
        elif model_type in ("distilbert", "modernbert", "deberta-v2"):
            assert names == ["input_ids", "attention_mask"]
        else:
            assert names == ["input_ids", "attention_mask", "token_type_ids"], model_type
    roberta = families.build("roberta", "RobertaForSequenceClassification", type_vocab_size=1)
    assert onnx_input_names(roberta) == ["input_ids", "attention_mask"]


def test_torchscript_fallback_and_the_models_own_attention(tmp_path):
    model = families.compressed_model("bert", "BertForSequenceClassification", attn="sdpa")
    info = export_onnx(model, tmp_path / "ts.onnx", exporter="torchscript")
    assert info["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert check_onnx(model, info["path"], batch_sizes=(1, 3), seq_lens=(7, 33))["logits"] <= 1e-4
    own = export_onnx(model, tmp_path / "sdpa.onnx", exporter="torchscript", attn_implementation=None)
    assert own["attn_implementation"] == "sdpa" and "IsNaN" in {n.op_type for n in onnx.load(own["path"]).graph.node}
    assert check_onnx(model, own["path"], batch_sizes=(1, 3), seq_lens=(7, 33))["logits"] <= 1e-4


def test_int8_of_a_file_with_external_data(bert_exported, tmp_path):
    """Weights kept beside the graph (models over 2 GB): quantization and the check read them there."""
    _, model, info = bert_exported
    proto = onnx.load(info["path"])
    onnx.save(proto, str(tmp_path / "big.onnx"), save_as_external_data=True, location="big.onnx.data")
    assert (tmp_path / "big.onnx.data").exists()
    target = export.quantize_int8(tmp_path / "big.onnx")
    assert target == tmp_path / "big.int8.onnx"
    assert max(check_onnx(model, tmp_path / "big.onnx", batch_sizes=(2,), seq_lens=(9,)).values()) <= 1e-4
    assert all(np.isfinite(d) for d in check_onnx(model, target, batch_sizes=(2,), seq_lens=(9,), atol=None).values())


def test_command_line_exits_nonzero_above_tolerance(exported, monkeypatch, capsys, tmp_path):
    """--check fails the command when the file is off by more than --atol (here the int8 file stands in for the
    float32 one); the saved compressed model of every family loads by the class its config names."""
    model_type, model, info = exported
    model.save_pretrained(tmp_path / "model")
    monkeypatch.setattr(export, "export_onnx", lambda *args, **kwargs: dict(info, path=info["int8_path"],
                                                                                int8_path=None))
    assert export.main([str(tmp_path / "model"), info["path"], "--check"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_command_line_errors(tmp_path, capsys):
    assert export.main([str(tmp_path / "missing"), str(tmp_path / "m.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert export.main([str(tmp_path / "empty"), str(tmp_path / "m.onnx")]) == 2
    assert "is not a saved model" in capsys.readouterr().err
    (tmp_path / "config_only").mkdir()
    families.tiny_config("bert").save_pretrained(tmp_path / "config_only")
    assert export.main([str(tmp_path / "config_only"), str(tmp_path / "m.onnx")]) == 2
    assert "no weights" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(tmp_path / "missing", tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="quantize"):
        export_onnx(families.build("bert", "BertModel"), tmp_path / "m.onnx", quantize="int4")


def test_command_line_on_the_real_minilm_compressed(minilm_path, tmp_path):
    """The packaged all-MiniLM-L6-v2, group-sparse (about 30% of its groups, every head of layer 1 and every FFN
    neuron of layer 2 zeroed), compressed and saved, through the command line in a fresh process: export, int8,
    check. Float32 is within 1e-4 of PyTorch; int8 sentence embeddings (mean pooled, as the model is used) are within
    cosine 0.98 of PyTorch's on real sentences."""
    torch.manual_seed(0)
    dense = transformers.AutoModel.from_pretrained(minilm_path).eval()
    groups = oto_hf.zero_invariant_groups(dense)
    groups.zero_((torch.rand(groups.num_groups) < 0.3) | ((groups.layers == 1) & (groups.kinds == HEAD))
                 | ((groups.layers == 2) & (groups.kinds == NEURON)))
    model = oto_hf.compress(dense).eval()
    model.save_pretrained(tmp_path / "small")
    out = tmp_path / "onnx" / "minilm.onnx"
    result = subprocess.run([sys.executable, "-m", "oto_hf.export", str(tmp_path / "small"), str(out),
                             "--quantize", "int8", "--check"], cwd=REPO_ROOT, capture_output=True, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(tolerance 0.0001): ok" in result.stdout
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert info["output_names"] == ["last_hidden_state", "pooler_output"] and info["attn_implementation"] == "eager"
    assert max(info["max_abs_diff"].values()) <= 1e-4
    assert info["int8_path"] == str(tmp_path / "onnx" / "minilm.int8.onnx")
    assert info["int8_bytes"] < info["bytes"] / 3
    print(f"MiniLM compressed: fp32 max |Δ| {info['max_abs_diff']}, int8 max |Δ| {info['int8_max_abs_diff']}")

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
    batch = tokenizer(["Which NFL team represented the AFC at Super Bowl 50?", "Where is the Eiffel Tower?",
                       "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France."],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = model(**batch).last_hidden_state.numpy()
    mask = batch["attention_mask"].numpy()[..., None]

    def embeddings(hidden):
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    session = ort.InferenceSession(info["int8_path"], providers=["CPUExecutionProvider"])
    hidden = session.run(["last_hidden_state"], {k: v.numpy() for k, v in batch.items()})[0]
    cosine = (embeddings(hidden) * embeddings(reference)).sum(1)
    print(f"MiniLM compressed int8: sentence-embedding cosine to PyTorch {cosine.round(4).tolist()}")
    assert cosine.min() >= 0.98


def test_command_line_names_a_truncated_weight_file(tmp_path, capsys):
    # Issue 43 item 6: "cannot load weights from FILE", not safetensors' bare error.
    families.build("bert", "BertModel").save_pretrained(tmp_path / "torn")
    weights = tmp_path / "torn" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert export.main([str(tmp_path / "torn"), str(tmp_path / "m.onnx")]) == 2
    assert f"cannot load weights from {weights}: " in capsys.readouterr().err
