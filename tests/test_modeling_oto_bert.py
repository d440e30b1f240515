"""Save and load of compressed models: with oto_hf imported, and without it (trust_remote_code)."""

import json
import subprocess
import sys
import textwrap

import pytest
from huggingface_hub.errors import StrictDataclassClassValidationError
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForQuestionAnswering, BertForQuestionAnswering

from conftest import tiny_bert_config
from oto_hf import OTOBertConfig, OTOBertForQuestionAnswering, OTOBertModel, compress, zero_invariant_groups


@pytest.fixture
def saved_compressed(tmp_path):
    """A compressed QA model (one layer without heads) saved to disk, with reference inputs and outputs."""
    torch.manual_seed(0)
    model = BertForQuestionAnswering(tiny_bert_config()).eval()
    groups = zero_invariant_groups(model)
    groups.zero_(((groups.layers == 1) & (groups.kinds == 0)) | (torch.rand(len(groups)) < 0.3))
    small = compress(model)
    folder = tmp_path / "compressed"
    small.save_pretrained(folder)
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        out = small(ids)
    torch.save({"ids": ids, "start": out.start_logits, "end": out.end_logits}, tmp_path / "reference.pt")
    return folder, tmp_path / "reference.pt", small


def run_python(code: str, cwd):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(cwd)})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_checkpoint_records_per_layer_sizes(saved_compressed):
    folder, _, small = saved_compressed
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "oto_bert"
    assert config["num_attention_heads_per_layer"] == small.config.num_attention_heads_per_layer
    assert config["num_attention_heads_per_layer"][1] == 0
    assert config["intermediate_size_per_layer"] == small.config.intermediate_size_per_layer
    assert config["auto_map"]["AutoModelForQuestionAnswering"] == "modeling_oto_bert.OTOBertForQuestionAnswering"
    assert {"model.safetensors", "modeling_oto_bert.py", "configuration_oto_bert.py"} <= {p.name for p in folder.iterdir()}


LOAD_AND_COMPARE = """
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoModel
    ref = torch.load("{ref}")
    model = AutoModelForQuestionAnswering.from_pretrained("{folder}"{extra}).eval()
    with torch.no_grad():
        out = model(ref["ids"])
    assert torch.equal(out.start_logits, ref["start"]) and torch.equal(out.end_logits, ref["end"])
    base = AutoModel.from_pretrained("{folder}"{extra})
    print(type(model).__module__, type(model).__name__, type(base).__name__)
"""


def test_reload_with_oto_hf_in_a_fresh_process(saved_compressed, tmp_path):
    folder, ref, _ = saved_compressed
    out = run_python("import oto_hf\n" + textwrap.dedent(LOAD_AND_COMPARE.format(ref=ref, folder=folder, extra="")), tmp_path)
    assert "oto_hf.modeling_oto_bert OTOBertForQuestionAnswering OTOBertModel" in out


def test_reload_without_oto_hf_through_trust_remote_code(saved_compressed, tmp_path):
    folder, ref, _ = saved_compressed
    # Make oto_hf unimportable in the child: the modeling code must come from the checkpoint itself.
    code = "import sys\nsys.modules['oto_hf'] = None\n" + textwrap.dedent(
        LOAD_AND_COMPARE.format(ref=ref, folder=folder, extra=", trust_remote_code=True")
    ) + "\ntry:\n    import oto_hf\n    print('oto_hf was importable')\nexcept ImportError:\n    print('no oto_hf')\n"
    out = run_python(code, tmp_path)
    assert "transformers_modules" in out and "OTOBertForQuestionAnswering OTOBertModel" in out
    assert "no oto_hf" in out


def test_in_process_round_trip_every_auto_class(saved_compressed):
    folder, ref, small = saved_compressed
    reference = torch.load(ref)
    loaded = AutoModelForQuestionAnswering.from_pretrained(folder).eval()
    assert isinstance(loaded, OTOBertForQuestionAnswering)
    assert torch.equal(loaded(reference["ids"]).start_logits, reference["start"])
    assert isinstance(AutoModel.from_pretrained(folder), OTOBertModel)


def test_weights_that_do_not_match_the_config_fail_clearly(saved_compressed):
    folder, _, small = saved_compressed
    config = json.loads((folder / "config.json").read_text())
    config["num_attention_heads_per_layer"][0] = 4 if config["num_attention_heads_per_layer"][0] != 4 else 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match its OTOBertConfig"):
        AutoModelForQuestionAnswering.from_pretrained(folder)
    # Even when asked to ignore mismatched sizes, pruned weights are never silently re-drawn.
    with pytest.raises(ValueError, match="do not match its OTOBertConfig"):
        AutoModelForQuestionAnswering.from_pretrained(folder, ignore_mismatched_sizes=True)


def test_missing_encoder_weights_fail_clearly(saved_compressed):
    folder, _, _ = saved_compressed
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
