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
from conftest import assert_exact
import oto_hf
from oto_hf import export
from oto_hf.architectures import FAMILIES, FAMILY_OF_MODEL_TYPE
from oto_hf.export import OnnxMismatchError, check_onnx, export_onnx, onnx_input_names
from oto_hf.groups import HEAD, NEURON

REPO_ROOT = Path(__file__).resolve().parents[1]

# One compressed model per family, sequence classification and question answering between them (image
# classification for ViT), and a dense stock RoBERTa-like with one token type (so no token_type_ids input). The BERT
# one has its hidden width cut too.
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
            model = families.compressed_model(model_type, class_name, attn=attn, hidden=case == "bert-qa", **overrides)
            assert 0 in model.config.num_attention_heads_per_layer and 0 in model.config.intermediate_size_per_layer
            assert (model.config.compressed_hidden_size is not None) == (case == "bert-qa")
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


# Session settings (issue 44): every candidate runs the file as PyTorch computes it; which is fastest is measured,
# recorded beside the file by the command line, and read back by OnnxRuntimeModel.

def _optimized_op_types(path, settings: str, tmp_path) -> set[str]:
    """The operator types of the graph onnxruntime runs under `settings` (its optimised model, saved)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / f"optimized_{settings}.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=list(export.SESSION_SETTINGS[settings]["disabled_optimizers"]))
    return {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}


def test_every_session_setting_gives_pytorchs_outputs(exported):
    """The settings change how onnxruntime runs the graph, not what it computes: each equals PyTorch up to float32
    rounding, relative to the outputs' size, on padded batches."""
    model_type, model, info = exported
    assert list(export.SESSION_SETTINGS)[0] == "all_fusions"
    for settings in export.SESSION_SETTINGS:
        served = export.OnnxRuntimeModel(info["path"], session_settings=settings)
        assert served.session_settings == settings
        for batch, length in ((1, 7), (3, 33)):
            inputs = export.sample_inputs(model, batch=batch, length=length)
            with torch.no_grad():
                expected = model(**inputs)
            got = served(**inputs)
            for name in info["output_names"]:
                # relative to the outputs, at the 1e-4 the export is held to (check_onnx)
                assert_exact(got[name], expected[name], relative=1e-4, what=f"{model_type} {settings} {name}")


def test_no_skip_layernorm_fusion_changes_the_graph(bert_exported, tmp_path):
    """The optimizer's name is one onnxruntime knows (it ignores unknown names silently): with it disabled, no
    SkipLayerNormalization is left in the graph it runs; by default the BERT file has some."""
    _, _, info = bert_exported
    assert "SkipLayerNormalization" in _optimized_op_types(info["path"], "all_fusions", tmp_path)
    ops = _optimized_op_types(info["path"], "no_skip_layernorm_fusion", tmp_path)
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops


def test_fastest_session_settings_times_every_candidate(bert_exported, tmp_path_factory):
    _, _, info = bert_exported
    result = export.fastest_session_settings(info["path"], 2, 16, threads=1, repeats=2)
    assert set(result["seconds"]) == set(export.SESSION_SETTINGS) and all(s > 0 for s in result["seconds"].values())
    assert result["settings"] == min(result["seconds"], key=result["seconds"].get)
    assert (result["batch_size"], result["seq_len"], result["threads"], result["repeats"]) == (2, 16, 1, 2)
    assert result["onnxruntime"] == ort.__version__ and result["inner"] >= 1
    assert len(result["foreign_load_cores"]) == 2 and {"max_foreign_load_cores", "busy"} <= set(result)
    one = export.fastest_session_settings(info["int8_path"], 1, 8, repeats=2, candidates=["no_skip_layernorm_fusion"])
    assert one["settings"] == "no_skip_layernorm_fusion" and list(one["seconds"]) == ["no_skip_layernorm_fusion"]
    _, _, vit = _export("vit-imgcls", tmp_path_factory)  # pixel values of the file's size; the length is unused
    assert export.fastest_session_settings(vit["path"], 2, 1, repeats=2)["settings"] in export.SESSION_SETTINGS
    with pytest.raises(ValueError, match="unknown session settings 'fast'"):
        export.fastest_session_settings(info["path"], 1, 8, candidates=["fast"])
    with pytest.raises(ValueError, match="seq_len must be a positive whole number"):
        export.fastest_session_settings(info["path"], 1, 0)
    with pytest.raises(ValueError, match="unknown session settings"):
        export.OnnxRuntimeModel(info["path"], session_settings="fast")


def test_command_line_records_the_fastest_settings_and_the_model_uses_them(tmp_path, capsys):
    model = families.compressed_model("bert", "BertForSequenceClassification", attn="eager")
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "m.onnx"
    assert export.main([str(tmp_path / "model"), str(out), "--tune-session", "1x16", "--quantize", "int8",
                        "--exporter", "torchscript", "--check"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.strip().splitlines()[-1])
    for path, key in ((out, "session_settings"), (tmp_path / "m.int8.onnx", "int8_session_settings")):
        record = json.loads(export.session_settings_path(path).read_text())
        assert record["settings"] in export.SESSION_SETTINGS and record["settings"] == summary[key]
        assert set(record["seconds"]) == set(export.SESSION_SETTINGS)
        assert (record["batch_size"], record["seq_len"], record["onnxruntime"]) == (1, 16, ort.__version__)
        assert record["file"] == path.name and record["cpu_model"] and "busy" in record
        assert f"session settings of {path}: {record['settings']} ran fastest" in printed
        assert export.OnnxRuntimeModel(path).session_settings == record["settings"]
    assert "this holds for this machine, thread count and shape" in printed
    assert export.session_settings_path(out) == tmp_path / "m.session.json"
    # The model follows whatever the record names (here the other candidate), unless told otherwise.
    record = json.loads((tmp_path / "m.session.json").read_text())
    other = next(name for name in export.SESSION_SETTINGS if name != record["settings"])
    (tmp_path / "m.session.json").write_text(json.dumps(dict(record, settings=other)))
    assert export.OnnxRuntimeModel(out).session_settings == other
    assert export.OnnxRuntimeModel(out, session_settings=record["settings"]).session_settings == record["settings"]
    # --tune-session none: nothing measured, and the record of the file it replaces is gone.
    assert export.main([str(tmp_path / "model"), str(out), "--tune-session", "none", "--exporter",
                        "torchscript"]) == 0
    assert "session settings of" not in capsys.readouterr().out
    assert not (tmp_path / "m.session.json").exists()
    assert export.OnnxRuntimeModel(out).session_settings == "all_fusions"


def test_command_line_refuses_a_bad_tuning_shape_before_exporting(tmp_path, capsys, monkeypatch):
    families.build("bert", "BertModel").save_pretrained(tmp_path / "model")
    capsys.readouterr()  # save_pretrained's progress bar
    monkeypatch.setattr(export, "export_onnx", lambda *args, **kwargs: pytest.fail("exported despite a bad shape"))
    for shape in ("1x", "0x128", "abc"):
        assert export.main([str(tmp_path / "model"), str(tmp_path / "m.onnx"), "--tune-session", shape]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: --tune-session takes BATCHxTOKENS, two positive whole numbers such as 1x128, "
                       f"got {shape!r}"]
    # Longer than the model takes (64 positions): refused when asked for, the default is shortened to it.
    assert export.main([str(tmp_path / "model"), str(tmp_path / "m.onnx"), "--tune-session", "1x65"]) == 2
    assert "longer than the 64 tokens the model takes: give at most 1x64" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_a_record_of_another_onnxruntime_version_is_ignored_with_a_warning(bert_exported, tmp_path):
    _, _, info = bert_exported
    path = tmp_path / "model.onnx"
    path.write_bytes(Path(info["path"]).read_bytes())
    measured = {"settings": "no_skip_layernorm_fusion", "seconds": {"all_fusions": 2e-3,
                "no_skip_layernorm_fusion": 1e-3}, "batch_size": 1, "seq_len": 16, "threads": 2, "onnxruntime": "1.0.0"}
    export.write_session_settings(path, measured)
    with pytest.warns(UserWarning, match=r"measured with onnxruntime 1\.0\.0, this is .*: ignored, running with "
                                         "all_fusions"):
        served = export.OnnxRuntimeModel(path)
    assert served.session_settings == "all_fusions"
    export.write_session_settings(path, dict(measured, onnxruntime=ort.__version__))
    assert export.OnnxRuntimeModel(path).session_settings == "no_skip_layernorm_fusion"
    export.quantize_int8(path)  # a new int8 file drops the record of the one it replaces
    export.write_session_settings(export.int8_path_for(path), dict(measured, onnxruntime=ort.__version__))
    export.quantize_int8(path)
    assert not export.session_settings_path(export.int8_path_for(path)).exists()
