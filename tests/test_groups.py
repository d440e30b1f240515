import pytest
import torch
from transformers import BertForQuestionAnswering, BertForSequenceClassification, BertModel, GPT2Config, GPT2Model

from conftest import tiny_bert_config
from oto_hf import UnsupportedModelError, zero_invariant_groups
from oto_hf.groups import HEAD, NEURON


def reference_norms(model, groups):
    """Group norms the slow, obvious way: slice each group's members out of the modules, one group at a time."""
    base = model.bert if hasattr(model, "bert") else model
    d = groups.head_size
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
    assert len(groups) == 6 * 12 + 6 * 1536
    assert int((groups.kinds == HEAD).sum()) == 72
    assert groups.head_size == 32 and groups.hidden_size == 384
    # Every grouped element is counted once: the group sizes add up to the grouped tensors' sizes.
    assert int(groups.sizes.sum()) == sum(t.param.numel() for t in groups.tensors)
    torch.testing.assert_close(groups.norms(), reference_norms(model, groups), rtol=1e-5, atol=1e-6)


def test_norms_are_vectorised_per_tensor_not_per_group():
    model = BertModel(tiny_bert_config())
    groups = zero_invariant_groups(model)
    # One entry per grouped tensor (7 per layer for heads, 3 for neurons), not one per group.
    assert len(groups.tensors) == 3 * (7 + 3)
    torch.testing.assert_close(groups.norms(), reference_norms(model, groups))


def test_zero_touches_exactly_the_chosen_groups():
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    with torch.no_grad():
        for p in model.parameters():  # stock init leaves biases at 0: make every element non-zero
            p.normal_()
    groups = zero_invariant_groups(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    chosen = torch.tensor([1, 5, 13, len(groups) - 1])  # a head, neurons, the last neuron
    groups.zero_(chosen)
    zero = groups.is_zero()
    assert zero.nonzero().flatten().tolist() == chosen.tolist()
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in model.named_parameters())
    assert changed == int(groups.sizes[chosen].sum())
    # A boolean mask works the same way.
    mask = torch.zeros(len(groups), dtype=torch.bool)
    mask[7] = True
    groups.zero_(mask)
    assert groups.is_zero()[7]


def test_bad_indices_are_refused():
    groups = zero_invariant_groups(BertModel(tiny_bert_config()))
    with pytest.raises(IndexError):
        groups.zero_([len(groups)])
    with pytest.raises(ValueError, match="shape"):
        groups.zero_(torch.zeros(3, dtype=torch.bool))


def test_only_neurons_or_only_heads():
    model = BertModel(tiny_bert_config())
    neurons = zero_invariant_groups(model, prune_heads=False)
    assert set(neurons.kinds.tolist()) == {NEURON} and len(neurons) == 3 * 24
    heads = zero_invariant_groups(model, prune_neurons=False)
    assert set(heads.kinds.tolist()) == {HEAD} and len(heads) == 3 * 4
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
    with pytest.raises(UnsupportedModelError, match="GPT2Model.*BertModel"):
        zero_invariant_groups(model)
    with pytest.raises(UnsupportedModelError, match="Linear"):
        zero_invariant_groups(torch.nn.Linear(3, 3))


def test_cross_attention_is_refused():
    model = BertModel(tiny_bert_config(is_decoder=True, add_cross_attention=True))
    with pytest.raises(UnsupportedModelError, match="cross-attention"):
        zero_invariant_groups(model)
