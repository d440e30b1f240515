"""Cutting the zero groups out: a group-sparse BERT becomes a physically smaller OTOBert model.

Finding what to prune is `groups.py`'s job (a group is prunable when it is exactly zero); this module only does
the cut. The result has the same parameter names, fewer heads and a narrower FFN in each layer, a config that
records the per-layer sizes, and the same outputs as the group-sparse model up to float32 rounding.
"""

import torch
from torch import nn
from .configuration_oto_bert import OTOBertConfig
from .groups import HEAD, NEURON, UnsupportedModelError, find_base_model, zero_invariant_groups
from .modeling_oto_bert import AUTO_CLASSES
from .stats import model_stats


def compressed_class_for(model: nn.Module) -> type:
    """The OTOBert class with the same task head as `model` (a Bert* or OTOBert* model)."""
    for cls in AUTO_CLASSES.values():
        if issubclass(cls, type(model)):
            return cls
    raise UnsupportedModelError(
        f"compress does not know the task head of {type(model).__name__}: it handles BertModel and the Bert* task "
        f"models of transformers ({', '.join(sorted(c.__name__.replace('OTOBert', 'Bert') for c in AUTO_CLASSES.values()))}) "
        "and their OTOBert* forms. For a custom subclass, compress its `.bert` body, or open an issue."
    )


def kept_indices(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, the indices of the heads and of the FFN neurons whose groups are not all zero."""
    groups = zero_invariant_groups(model)
    nonzero = ~groups.is_zero().cpu()
    heads, neurons = [], []
    for layer in range(groups.num_layers):
        in_layer = nonzero & (groups.layers == layer)
        heads.append(groups.index[in_layer & (groups.kinds == HEAD)])
        neurons.append(groups.index[in_layer & (groups.kinds == NEURON)])
    return heads, neurons


@torch.no_grad()
def compress(model: nn.Module, seq_len_for_stats: int = 384) -> nn.Module:
    """Return a new, smaller model without the zero heads and FFN neurons of `model`; `model` is left untouched.

    `model` is a BertModel, a Bert* task model or an OTOBert* model, dense or group-sparse (typically trained with
    `HSPG`). The result is the matching `OTOBert*` class, on the same device and dtype, in the same train/eval mode,
    ready for `save_pretrained`. Its outputs equal `model`'s up to float32 rounding.
    """
    target_cls = compressed_class_for(model)
    base = find_base_model(model)
    heads, neurons = kept_indices(model)
    config = _compressed_config(model.config, [len(h) for h in heads], [len(n) for n in neurons])

    # Build on the meta device (no allocation, no random init), then hand it the sliced tensors.
    with torch.device("meta"):
        new = target_cls(config)

    prefix = "" if base is model else model.base_model_prefix + "."
    head_size = config.attention_head_size
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    for i, (kept_heads, kept_neurons) in enumerate(zip(heads, neurons)):
        layer = f"{prefix}encoder.layer.{i}."
        device = state[layer + "intermediate.dense.weight"].device
        rows = (kept_heads[:, None] * head_size + torch.arange(head_size)).flatten().to(device)
        kept_neurons = kept_neurons.to(device)
        for proj in ("query", "key", "value"):
            for part in ("weight", "bias"):
                key = f"{layer}attention.self.{proj}.{part}"
                state[key] = state[key].index_select(0, rows)
        key = layer + "attention.output.dense.weight"
        state[key] = state[key].index_select(1, rows)
        for part in ("weight", "bias"):
            key = f"{layer}intermediate.dense.{part}"
            state[key] = state[key].index_select(0, kept_neurons)
        key = layer + "output.dense.weight"
        state[key] = state[key].index_select(1, kept_neurons)

    new.load_state_dict(state, strict=True, assign=True)
    # Buffers that are not saved in a state dict (position ids) are still on the meta device: take them over.
    source_buffers = dict(model.named_buffers())
    for name, buffer in list(new.named_buffers()):
        if buffer.is_meta:
            owner_name, _, attr = name.rpartition(".")
            owner = new.get_submodule(owner_name) if owner_name else new
            owner.register_buffer(attr, source_buffers[name].clone(), persistent=False)
    if getattr(config, "tie_word_embeddings", False):
        new.tie_weights()
    new.train(model.training)

    before = model_stats(model, seq_len_for_stats, exclude_zero_groups=False)
    after = model_stats(new, seq_len_for_stats, exclude_zero_groups=False)
    info = dict(config.oto_pruning_info or {})
    info.setdefault("original_num_attention_heads_per_layer", before.heads_per_layer)
    info.setdefault("original_intermediate_size_per_layer", before.ffn_width_per_layer)
    info.setdefault("original_encoder_params", before.encoder_params)
    info.setdefault("original_encoder_flops", before.encoder_flops)
    info.update(stats_seq_len=seq_len_for_stats, encoder_params=after.encoder_params, encoder_flops=after.encoder_flops)
    new.config.oto_pruning_info = info
    return new


def _compressed_config(config, heads_per_layer: list[int], widths_per_layer: list[int]) -> OTOBertConfig:
    values = config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "auto_map"):
        values.pop(key, None)
    values["num_attention_heads_per_layer"] = heads_per_layer
    values["intermediate_size_per_layer"] = widths_per_layer
    new_config = OTOBertConfig(**values)
    new_config._attn_implementation = config._attn_implementation
    return new_config

