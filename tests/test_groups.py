import pytest
import torch
from transformers import BertForQuestionAnswering, BertForSequenceClassification, BertModel, GPT2Config, GPT2Model

import families
import oto_hf
from conftest import assert_exact, tiny_bert_config
from oto_hf import UnsupportedModelError, supported_model_types, zero_invariant_groups
from oto_hf.architectures import get_submodule
from oto_hf.groups import HEAD, HIDDEN, NEURON, STREAM, find_base_model
from oto_hf.live_norm import LiveWidthLayerNorm


def reference_norms(model, groups):
    """Group norms the slow, obvious way: slice each group's members out of the modules, one group at a time."""
    base = model.bert if hasattr(model, "bert") else model
    d = base.encoder.layer[0].attention.self.attention_head_size
    norms = []
    for layer in base.encoder.layer:
        att, out = layer.attention, layer.output
        for h in range(att.self.num_attention_heads):
            rows = slice(h * d, (h + 1) * d)
            parts = [m.weight[rows] for m in (att.self.query, att.self.key, att.self.value)]
            parts += [m.bias[rows] for m in (att.self.query, att.self.key, att.self.value)]
            parts.append(att.output.dense.weight[:, rows])
            norms.append(torch.sqrt(sum(p.detach().square().sum() for p in parts)))
        for j in range(layer.intermediate.dense.out_features):
            parts = [layer.intermediate.dense.weight[j], layer.intermediate.dense.bias[j : j + 1], out.dense.weight[:, j]]
            norms.append(torch.sqrt(sum(p.detach().square().sum() for p in parts)))
    return torch.stack(norms)


def test_partition_of_real_minilm(minilm_path):
    model = BertForQuestionAnswering.from_pretrained(minilm_path)
    groups = zero_invariant_groups(model)
    assert groups.num_groups == 6 * 12 + 6 * 1536
    assert int((groups.kinds == HEAD).sum()) == 72
    assert groups.family.name == "bert" and groups.default_seq_len == 384
    # Every grouped element is counted once: the group sizes add up to the grouped tensors' sizes.
    assert int(groups.sizes.sum()) == sum(t.param.numel() for t in groups.tensors)
    torch.testing.assert_close(groups.norms(), reference_norms(model, groups), rtol=1e-5, atol=1e-6)


def test_norms_are_vectorised_per_tensor_not_per_group():
    model = BertModel(tiny_bert_config())
    groups = zero_invariant_groups(model)
    # One entry per grouped tensor (7 per layer for heads, 3 for neurons), not one per group.
    assert len(groups.tensors) == 3 * (7 + 3)
    torch.testing.assert_close(groups.norms(), reference_norms(model, groups), rtol=1e-5, atol=1e-6)  # per group


def test_zero_touches_exactly_the_chosen_groups():
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    with torch.no_grad():
        for p in model.parameters():  # stock init leaves biases at 0: make every element non-zero
            p.normal_()
    groups = zero_invariant_groups(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    chosen = torch.tensor([1, 5, 13, groups.num_groups - 1])  # a head, neurons, the last neuron
    groups.zero_(chosen)
    zero = groups.is_zero()
    assert zero.nonzero().flatten().tolist() == chosen.tolist()
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in model.named_parameters())
    assert changed == int(groups.sizes[chosen].sum())
    # A boolean mask works the same way.
    mask = torch.zeros(groups.num_groups, dtype=torch.bool)
    mask[7] = True
    groups.zero_(mask)
    assert groups.is_zero()[7]


def test_bad_indices_are_refused():
    groups = zero_invariant_groups(BertModel(tiny_bert_config()))
    with pytest.raises(IndexError):
        groups.zero_([groups.num_groups])
    with pytest.raises(ValueError, match="shape"):
        groups.zero_(torch.zeros(3, dtype=torch.bool))


def test_only_neurons_or_only_heads():
    model = BertModel(tiny_bert_config())
    neurons = zero_invariant_groups(model, prune_heads=False)
    assert set(neurons.kinds.tolist()) == {NEURON} and neurons.num_groups == 3 * 24
    heads = zero_invariant_groups(model, prune_neurons=False)
    assert set(heads.kinds.tolist()) == {HEAD} and heads.num_groups == 3 * 4
    assert neurons.count_per_layer(~neurons.is_zero(), "head") == [4, 4, 4]


def test_counts_and_costs_per_layer():
    model = BertModel(tiny_bert_config())
    groups = zero_invariant_groups(model)
    groups.zero_(((groups.layers == 1) & (groups.kinds == HEAD)).nonzero().flatten())
    kept = ~groups.is_zero()
    assert groups.count_per_layer(kept, "head") == [4, 0, 4]
    assert groups.count_per_layer(kept, "neuron") == [24, 24, 24]
    assert groups.total_cost("flops", 16) == pytest.approx(float(groups.costs("flops", 16).sum()))


def test_unsupported_model_is_named():
    model = GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="GPT2Model.*'gpt2'.*bert: bert/roberta.*architectures.py"):
        zero_invariant_groups(model)
    with pytest.raises(UnsupportedModelError, match="Linear"):
        zero_invariant_groups(torch.nn.Linear(3, 3))


def test_cross_attention_is_refused():
    model = BertModel(tiny_bert_config(is_decoder=True, add_cross_attention=True))
    with pytest.raises(UnsupportedModelError, match="cross-attention"):
        zero_invariant_groups(model)


# ---- every supported family ----


def test_every_supported_model_type_has_test_parameters():
    assert set(supported_model_types()) == set(families.MODEL_TYPES)


def slow_group_norms(model, groups):
    """Group norms the slow, obvious way, from the family entry alone: slice each head's rows (in each third of a
    fused projection), its extra projections' rows and its output columns, and each neuron's row(s) and column,
    one group at a time."""
    family = groups.family
    norms = []
    for layer in get_submodule(find_base_model(model), family.layers):
        d = getattr(get_submodule(layer, family.attention), family.head_size_attribute)
        out = get_submodule(layer, family.attention_output).weight
        n = out.shape[1] // d
        for h in range(n):
            parts = [out[:, h * d:(h + 1) * d]]
            for path in family.head_rows():
                linear = get_submodule(layer, path)
                if linear is None:
                    continue
                thirds = 3 if family.fused_qkv and path in family.qkv else 1
                for third in range(thirds):
                    rows = slice((third * n + h) * d, (third * n + h + 1) * d)
                    parts += [linear.weight[rows]] + ([linear.bias[rows]] if linear.bias is not None else [])
            norms.append(torch.sqrt(sum(p.detach().square().sum() for p in parts)))
        ffn_in, ffn_out = get_submodule(layer, family.ffn_input), get_submodule(layer, family.ffn_output)
        width = ffn_out.in_features
        for j in range(width):
            rows = [j, j + width] if family.glu else [j]
            parts = [ffn_out.weight[:, j], ffn_in.weight[rows]]
            parts += [ffn_in.bias[rows]] if ffn_in.bias is not None else []
            norms.append(torch.sqrt(sum(p.detach().square().sum() for p in parts)))
    return torch.stack(norms)


@pytest.mark.parametrize("model_type", families.MODEL_TYPES)
def test_groups_are_exact_in_every_family(model_type):
    """The groups hold every matrix of every layer and nothing outside the layers; what a layer keeps ungrouped is
    1-D (norms, the output projections' biases); each group's norm is the norm of the slices the family entry
    names."""
    model = families.build(model_type, families.task_heads(model_type)["AutoModel"])
    groups = zero_invariant_groups(model)
    grouped = {t.name for t in groups.tensors}
    base = find_base_model(model)
    layers_prefix = ("" if base is model else model.base_model_prefix + ".") + groups.family.layers + "."
    in_layers = {n: p for n, p in model.named_parameters() if n.startswith(layers_prefix)}
    assert grouped <= set(in_layers)
    assert {n for n, p in in_layers.items() if p.dim() == 2} <= grouped
    assert all(p.dim() == 1 for n, p in in_layers.items() if n not in grouped)
    assert int(groups.sizes.sum()) == sum(t.param.numel() for t in groups.tensors)
    assert groups.num_groups == 3 * (4 + 24)
    torch.testing.assert_close(groups.norms(), slow_group_norms(model, groups), rtol=1e-5, atol=1e-6)


# ---- hidden channels (prune_hidden) ----

# Where each stream channel lives, written out by name for the slow reference (independent of the family table):
# columns of what reads the stream, rows and biases of what writes it, entries of its norms.
_READERS = ("query.weight", "key.weight", "value.weight", "intermediate.dense.weight", "pooler.dense.weight",
            "qa_outputs.weight", "classifier.dense.weight", "sequence_summary.summary.weight",
            "transform.dense.weight", "lm_head.dense.weight", "decoder.weight", "generator_predictions.dense.weight",
            "discriminator_predictions.dense.weight",
            "q_proj.weight", "k_proj.weight", "v_proj.weight", "fc1.weight",  # ViT
            "Wqkv.weight", "Wi.weight", "head.dense.weight")  # ModernBERT
_WRITERS = ("attention.output.dense", "output.dense", "embeddings_project", "transform.dense", "lm_head.dense",
            "o_proj", "fc2", "patch_embeddings.projection", "attn.Wo", "mlp.Wo")
_NORMS = ("attention.output.LayerNorm", "output.LayerNorm", "transform.LayerNorm", "lm_head.layer_norm",
          "layernorm_before", "layernorm_after", "attn_norm", "mlp_norm", "final_norm")
_EMBEDDINGS = ("word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight",
               "tok_embeddings.weight")
_VECTORS = ("cls_token", "distillation_token", "mask_token", "embeddings.position_embeddings")


def slow_channel_norms(model, width):
    """Each stream channel's group norm, one channel at a time, from the parameter names (a tied decoder is the
    word embeddings' tensor: counted once)."""
    projected = any(n.endswith("embeddings_project.weight") for n, _ in model.named_parameters())
    token_classifier = type(model).__name__.endswith(("ForTokenClassification", "ForImageClassification"))
    slices = []  # (tensor, axis)
    for name, p in model.named_parameters():  # tied tensors appear once
        stem = name.rsplit(".", 1)[0]
        if name.endswith(_READERS) or (token_classifier and name == "classifier.weight"):
            slices.append((p, 1))
        if name.endswith(tuple(w + ".weight" for w in _WRITERS)) and not name.endswith("intermediate.dense.weight"):
            slices.append((p, 0))
        if stem.endswith(_WRITERS) and name.endswith(".bias") and "intermediate" not in name:
            slices.append((p, 0))
        final_norm = stem.split(".")[-1] == "layernorm"  # ViT's last norm
        if stem.endswith(_NORMS) or final_norm or (stem.endswith(("embeddings.LayerNorm", "embeddings.norm"))
                                                   and not projected):
            slices.append((p, 0))
        if name.endswith(_EMBEDDINGS) and not projected:
            slices.append((p, 1))
        if name.endswith(_VECTORS):  # ViT's: the stream is the last axis
            slices.append((p, p.dim() - 1))
        if stem in ("head.dense", "head.norm") and type(model).__name__.endswith("ForMaskedLM"):
            slices.append((p, 0))  # ModernBERT's MLM head writes the stream its tied decoder reads
    return torch.stack([torch.sqrt(sum(p.detach().select(axis, c).square().sum() for p, axis in slices))
                        for c in range(width)])


HIDDEN_HEADS = [("bert", "BertForQuestionAnswering"), ("bert", "BertForMaskedLM"), ("bert", "BertForPreTraining"),
                ("roberta", "RobertaForSequenceClassification"), ("roberta", "RobertaForTokenClassification"),
                ("electra", "ElectraForPreTraining"), ("electra", "ElectraForMultipleChoice"),
                ("ernie", "ErnieForMaskedLM"), ("bert", "BertModel"),
                ("vit", "ViTForImageClassification"), ("deit", "DeiTModel"),
                ("modernbert", "ModernBertForMaskedLM")]


@pytest.mark.parametrize("model_type,class_name", HIDDEN_HEADS, ids=["-".join(h) for h in HIDDEN_HEADS])
def test_hidden_channel_groups_match_a_slow_per_channel_reference(model_type, class_name):
    model = families.build(model_type, class_name)
    groups = zero_invariant_groups(model, prune_hidden=True)
    hidden = groups.kinds == HIDDEN
    assert int(hidden.sum()) == groups.hidden_size == 32
    assert groups.num_groups == 3 * (4 + 24) + 32
    assert (groups.layers[hidden] == STREAM).all() and torch.equal(groups.index[hidden], torch.arange(32))
    torch.testing.assert_close(groups.norms()[hidden], slow_channel_norms(model, 32), rtol=1e-5, atol=1e-6)
    # The heads' and neurons' groups are the same as without the hidden channels.
    torch.testing.assert_close(groups.norms()[~hidden], zero_invariant_groups(model).norms())


def test_a_zero_channel_changes_nothing_only_with_the_live_norms():
    """Zero channels leave the outputs of the model they are cut from unchanged only when the stream's norms count
    the live channels (`track_live_width`): with stock norms over the full width, the compressed model differs."""
    torch.manual_seed(0)
    model = families.build("bert", "BertForSequenceClassification")
    groups = zero_invariant_groups(model, prune_hidden=True)
    channels = torch.nonzero(groups.kinds == HIDDEN).flatten()
    groups.zero_(channels[torch.randperm(32)[:8]])
    inputs = families.inputs("bert", "BertForSequenceClassification")
    small = oto_hf.compress(model)
    with torch.no_grad():
        stock = model(**inputs).logits
        groups.track_live_width()
        live = model(**inputs).logits
        expected = small(**inputs).logits
    assert small.config.compressed_hidden_size == 24
    assert_exact(live, expected)
    assert (stock - expected).abs().max() > 1e-3
    # Every norm over the stream is live, and knows its 24 live channels.
    assert len(groups.stream_norms) == 1 + 3 * 2
    assert all(isinstance(n, LiveWidthLayerNorm) and n.live_count == 24 for n in groups.stream_norms)


def test_hidden_pruning_of_a_part_it_does_not_describe_is_refused_with_what_to_do():
    model = families.build("deberta-v2", "DebertaV2Model", conv_kernel_size=3)  # a convolution beside layer 0
    with pytest.raises(UnsupportedModelError, match="has encoder.conv, which mixes.*prune_hidden=False"):
        zero_invariant_groups(model, prune_hidden=True)
