"""The family table: every entry's paths exist in its stock models, and the README's table says what the table does."""

import re

import pytest

import families
from conftest import REPO_ROOT
from oto_hf.architectures import FAMILIES, get_submodule
from oto_hf.groups import find_base_model
from oto_hf.modeling_oto import AUTO_CLASSES

HEAD_NAMES = {
    "AutoModel": "base", "AutoModelForPreTraining": "pre-training", "AutoModelForCausalLM": "causal LM",
    "AutoModelForMaskedLM": "masked LM", "AutoModelForNextSentencePrediction": "next sentence",
    "AutoModelForSequenceClassification": "sequence classification", "AutoModelForMultipleChoice": "multiple choice",
    "AutoModelForTokenClassification": "token classification", "AutoModelForQuestionAnswering": "question answering",
    "AutoModelForImageClassification": "image classification",
    "AutoModelForMaskedImageModeling": "masked image modeling",
}


def families_table() -> str:
    """The README's table of supported families, from the family table and the compressed classes it generates."""
    rows = ["| family | model types | task heads |", "|---|---|---|"]
    for family in FAMILIES:
        heads = []
        for auto in family.auto_classes:
            having = [t for t in family.model_types if auto in AUTO_CLASSES["oto_" + t]]
            if having:
                heads.append(HEAD_NAMES[auto] + ("" if len(having) == len(family.model_types)
                                                 else f" ({', '.join(having)})"))
        rows.append(f"| {family.name} | {', '.join(f'`{t}`' for t in family.model_types)} | {', '.join(heads)} |")
    return "\n".join(rows)


def test_the_readme_lists_what_the_family_table_supports():
    readme = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"<!-- families:begin -->\n(.*?)\n<!-- families:end -->", readme, re.S)
    assert block, "README.md has no <!-- families:begin --> … <!-- families:end --> block"
    assert block.group(1) == families_table(), "README's table is stale; replace it with:\n" + families_table()


@pytest.mark.parametrize("model_type", families.MODEL_TYPES)
def test_every_path_of_an_entry_exists_in_its_stock_model(model_type):
    model = families.build(model_type, families.task_heads(model_type)["AutoModel"])
    family = next(f for f in FAMILIES if model_type in f.model_types)
    layers = get_submodule(find_base_model(model), family.layers)
    assert len(layers) == 3
    for path in (family.attention, *family.qkv, family.attention_output, family.ffn_input, family.ffn_output):
        assert get_submodule(layers[0], path) is not None, path
    attention = get_submodule(layers[0], family.attention)
    assert getattr(attention, family.head_size_attribute) == 8
    assert all(hasattr(attention, name) for name in family.head_count_attributes)
