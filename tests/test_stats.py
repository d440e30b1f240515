import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForQuestionAnswering, BertModel

import families
from conftest import tiny_bert_config
from oto_hf import compress, model_stats, zero_invariant_groups
from oto_hf.architectures import get_submodule
from oto_hf.groups import HIDDEN, find_base_model


def measured_encoder_flops(model, seq_len):
    """FLOPs of the encoder's forward as torch counts them (matmuls, 2 per multiply-add), with eager attention."""
    model.config._attn_implementation = "eager"
    hidden = torch.randn(1, seq_len, model.config.hidden_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.bert.encoder(hidden)
    return counter.get_total_flops()


def test_bert_base_sizes_match_the_model():
    model = BertModel(BertConfig())
    stats = model_stats(model)
    encoder_params = sum(p.numel() for p in model.encoder.parameters())
    assert stats.encoder_params == encoder_params == 85_054_464
    assert stats.total_params == sum(p.numel() for p in model.parameters())
    assert stats.heads_per_layer == [12] * 12 and stats.ffn_width_per_layer == [3072] * 12


def test_flops_formula_matches_torch_flop_counter():
    torch.manual_seed(0)
    model = BertForQuestionAnswering(tiny_bert_config())
    for seq_len in (16, 40):
        assert model_stats(model, seq_len).encoder_flops == measured_encoder_flops(model, seq_len)
    # On a compressed model too, where layers differ (one without any head).
    groups = zero_invariant_groups(model)
    groups.zero_((groups.layers == 0) & (groups.index % 2 == 0) | ((groups.layers == 2) & (groups.kinds == 0)))
    small = compress(model)
    assert small.config.num_attention_heads_per_layer == [2, 4, 0]
    assert model_stats(small, 24).encoder_flops == measured_encoder_flops(small, 24)


def test_group_sparse_stats_predict_the_compressed_model():
    torch.manual_seed(1)
    model = BertForQuestionAnswering(tiny_bert_config())
    groups = zero_invariant_groups(model)
    groups.zero_(torch.rand(groups.num_groups) < 0.4)
    sparse = model_stats(model, 64)
    physical = model_stats(model, 64, exclude_zero_groups=False)
    small = model_stats(compress(model), 64)
    assert sparse == small
    assert physical.encoder_flops > sparse.encoder_flops
    ratios = small.ratio_to(physical)
    assert 0 < ratios["encoder_flops"] < 1 and 0 < ratios["heads"] <= 1


@pytest.mark.parametrize("model_type", families.MODEL_TYPES)
def test_flops_match_torch_flop_counter_in_every_family(model_type):
    """Encoder FLOPs per example (batch 1) as oto_hf counts them from the modules, against torch's count of the
    layers' forward, dense and compressed (one layer without any head, one without any neuron)."""
    torch.manual_seed(0)
    model = families.build(model_type, families.task_heads(model_type)["AutoModel"])
    groups = zero_invariant_groups(model)
    groups.zero_((torch.rand(groups.num_groups) < 0.3) | ((groups.layers == 1) & (groups.kinds == 0))
                 | ((groups.layers == 2) & (groups.kinds == 1)))
    tokens = families.tokens(model_type)
    for m in (model, compress(model)):
        assert model_stats(m, tokens, exclude_zero_groups=False).encoder_flops == _counted_layer_flops(m, model_type)


def _counted_layer_flops(model, model_type):
    family = zero_invariant_groups(model).family
    base = find_base_model(model)
    prefix = type(model).__name__ + ("." if base is model else f".{model.base_model_prefix}.") + family.layers + "."
    model.requires_grad_(False)  # torch's module tracker needs no autograd graph (DeBERTa's relative embeddings)
    with FlopCounterMode(display=False) as counter:
        model(**families.inputs(model_type, batch=1))
    layer_names = {prefix + str(i) for i in range(len(get_submodule(base, family.layers)))}
    return sum(sum(c.values()) for name, c in counter.get_flop_counts().items() if name in layer_names)


@pytest.mark.parametrize("model_type", families.MODEL_TYPES)
def test_group_sparse_stats_predict_the_compressed_model_in_every_family(model_type):
    """With one layer emptied of heads and one of FFN neurons (whose pre-LN norms the compressed model drops, as
    nothing reads them), the group-sparse model's stats are the compressed model's, and those are its real sizes."""
    torch.manual_seed(0)
    sparse = families.build(model_type, families.task_heads(model_type)["AutoModel"])
    groups = zero_invariant_groups(sparse)
    groups.zero_((torch.rand(groups.num_groups) < 0.3) | ((groups.layers == 1) & (groups.kinds == 0))
                 | ((groups.layers == 2) & (groups.kinds == 1)))
    small = compress(sparse)
    assert model_stats(sparse) == model_stats(small)
    layers = get_submodule(find_base_model(small), zero_invariant_groups(small).family.layers)
    assert model_stats(small).encoder_params == sum(p.numel() for p in layers.parameters())
    assert model_stats(small).total_params == sum(p.numel() for p in small.parameters())


@pytest.mark.parametrize("model_type", ["bert", "electra", "distilbert", "deberta-v2", "modernbert", "vit"])
def test_flops_and_sizes_with_the_hidden_width_cut(model_type):
    """Heads, neurons and a quarter of the stream's channels cut: the encoder FLOPs oto_hf counts from the
    group-sparse model (exact, not a sum of overlapping groups) are torch's count of the compressed model's layers,
    and its total parameters (the embeddings' and the task head's columns gone too) are the compressed model's."""
    torch.manual_seed(0)
    heads = families.task_heads(model_type)
    sparse = families.build(model_type, heads.get("AutoModelForQuestionAnswering") or families.classifier(model_type))
    groups = zero_invariant_groups(sparse, prune_hidden=True)
    hidden = torch.nonzero(groups.kinds == HIDDEN).flatten()
    zero = (torch.rand(groups.num_groups) < 0.3) & (groups.kinds != HIDDEN)
    zero[hidden[:8]] = True
    zero |= (groups.layers == 1) & (groups.kinds == 0)
    groups.zero_(zero)
    groups.track_live_width()
    small = compress(sparse)
    tokens = families.tokens(model_type)
    assert model_stats(sparse, tokens) == model_stats(small, tokens)
    assert model_stats(small, tokens).hidden_size == 24
    assert model_stats(small, tokens).encoder_flops == _counted_layer_flops(small, model_type)
    assert model_stats(sparse, tokens).total_params == sum(p.numel() for p in small.parameters())
    assert groups.kept_cost(~zero, "params") == sum(p.numel() for p in small.parameters())  # the whole model's
    assert groups.kept_cost(~zero, "flops", tokens) == model_stats(small, tokens).encoder_flops
