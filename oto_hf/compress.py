"""Cutting the zero groups out: a group-sparse encoder becomes a physically smaller compressed model.

Finding what to prune is `groups.py`'s job (a group is prunable when it is exactly zero); this module only does
the cut. Each grouped tensor keeps the slices of its surviving groups along its group axis, whatever the family's
layout (separate or fused projections, GLU FFNs): the groups say where to cut. The result is the compressed class of
the same task head (`modeling_oto`), with the same parameter names, fewer heads and a narrower FFN in each layer, a
config that records the per-layer sizes, and the same outputs as the group-sparse model up to float32 rounding.
"""

import warnings

import torch
from torch import nn

from .configuration_oto import CONFIG_CLASSES
from .groups import UnsupportedModelError, family_of, zero_invariant_groups
from .modeling_oto import STOCK_TO_COMPRESSED
from .stats import model_stats


def compressed_class_for(model: nn.Module) -> type:
    """The compressed class with the same task head as `model` (a stock model or a compressed one)."""
    family_of(model)  # an unsupported model is told which families are supported
    cls = STOCK_TO_COMPRESSED.get(type(model))
    if cls is None:
        raise UnsupportedModelError(
            f"compress does not know the task head of {type(model).__name__}: it handles the stock transformers "
            "classes of the supported model types (their base models and task heads) and their compressed forms. "
            "For a subclass of your own, compress its base model (`model.base_model`), or open an issue."
        )
    return cls


def kept_indices(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Deprecated (one release): `zero_invariant_groups(model).kept_indices(~groups.is_zero())`. Per layer, the
    indices of the heads and of the FFN neurons whose groups are not all zero."""
    warnings.warn("oto_hf.kept_indices is deprecated: use groups.kept_indices(~groups.is_zero()) with "
                  "groups = oto_hf.zero_invariant_groups(model)", DeprecationWarning, stacklevel=2)
    groups = zero_invariant_groups(model)
    return groups.kept_indices(~groups.is_zero())


@torch.no_grad()
def compress(model: nn.Module, seq_len_for_stats: int | None = None, keep: torch.Tensor | None = None) -> nn.Module:
    """Return a new, smaller model without the zero heads, FFN neurons and hidden channels of `model`; `model` is
    left untouched.

    `model` is a model of a supported family (any task head) or a compressed one, dense or group-sparse (typically
    trained with `HSPG`). The result is the matching compressed class, on the same device and dtype, in the same
    train/eval mode, ready for `save_pretrained`. Its outputs equal `model`'s up to float32 rounding (where hidden
    channels are cut: `model`'s with its stream norms live, as HSPG trains it; see `groups.track_live_width`).
    `seq_len_for_stats` is the sequence length of the FLOPs recorded in its config (default: the family's).
    `keep` (a boolean per group of `zero_invariant_groups(model)`, or of `zero_invariant_groups(model,
    prune_hidden=True)`: told apart by its length) cuts out every other group instead, zero or not: the outputs
    then change; it makes models of given sizes from real weights (the latency tables' grid models).
    """
    target_cls = compressed_class_for(model)
    family = family_of(model)
    # Without `keep`, the zero groups decide, hidden channels among them where the family's can be cut. With it, its
    # length says which partition it is of: the heads/neurons one first (the latency grid models' usual case).
    groups = zero_invariant_groups(model, prune_hidden=keep is None and family.hidden is not None)
    if keep is not None and family.hidden is not None and len(keep) != groups.num_groups:
        with_hidden = zero_invariant_groups(model, prune_hidden=True)
        if len(keep) != with_hidden.num_groups:
            raise ValueError(f"keep has {len(keep)} entries; the model has {groups.num_groups} groups "
                             f"({with_hidden.num_groups} with its hidden channels)")
        groups = with_hidden
    keep = ~groups.is_zero().cpu() if keep is None else keep.cpu()
    if len(keep) != groups.num_groups:
        raise ValueError(f"keep has {len(keep)} entries; the model has {groups.num_groups} groups")
    heads, neurons = groups.kept_indices(keep)
    width = groups.kept_hidden_size(keep)
    config = _compressed_config(model.config, [len(h) for h in heads], [len(n) for n in neurons],
                                width if width != groups.hidden_size or _hidden_cut(model.config) else None)

    # Build on the meta device (no allocation, no random init), then hand it the sliced tensors.
    with torch.device("meta"):
        new = target_cls(config)
    shapes = {name: p.shape for name, p in new.named_parameters(remove_duplicate=False)}
    # A layer left with no head holds no parameter that nothing reads (`modeling_oto.resize_layer`): what the new
    # model does not hold is not carried over.
    wanted = new.state_dict().keys()
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items() if name in wanted}
    cuts = _kept_along_axes(groups, keep)
    # Every name a tensor goes by (a tied decoder is the word embeddings' tensor under a second name).
    for name, param in model.named_parameters(remove_duplicate=False):
        if name in state and id(param) in cuts:
            for axis, kept in cuts[id(param)].items():
                state[name] = state[name].index_select(axis, kept.to(state[name].device))
            if state[name].shape != shapes[name]:
                raise RuntimeError(f"compress: {name} cut to {tuple(state[name].shape)}, the compressed class holds "
                                   f"{tuple(shapes[name])}")

    new.load_state_dict(state, strict=True, assign=True)
    # Buffers that are not saved in a state dict (position ids, rotary tables) are still on the meta device: take
    # them over (the empty projections of a layer without heads are new, and empty).
    source_buffers = dict(model.named_buffers())
    device = next(model.parameters()).device
    for name, buffer in list(new.named_buffers()):
        if buffer.is_meta:
            owner_name, _, attr = name.rpartition(".")
            owner = new.get_submodule(owner_name) if owner_name else new
            value = (source_buffers[name].clone() if name in source_buffers
                     else torch.empty(buffer.shape, dtype=buffer.dtype, device=device))
            owner.register_buffer(attr, value, persistent=False)
    if getattr(config, "tie_word_embeddings", False):
        new.tie_weights()
    new.train(model.training)

    before = model_stats(model, seq_len_for_stats, exclude_zero_groups=False)
    after = model_stats(new, seq_len_for_stats, exclude_zero_groups=False)
    info = dict(config.oto_pruning_info or {})
    info.setdefault("original_num_attention_heads_per_layer", before.heads_per_layer)
    info.setdefault("original_intermediate_size_per_layer", before.ffn_width_per_layer)
    info.setdefault("original_hidden_size", groups.hidden_size)
    info.setdefault("original_encoder_params", before.encoder_params)
    info.setdefault("original_encoder_flops", before.encoder_flops)
    info.update(stats_seq_len=after.seq_len, encoder_params=after.encoder_params, encoder_flops=after.encoder_flops)
    new.config.oto_pruning_info = info
    return new


def _hidden_cut(config) -> bool:
    """Whether `config` (stock or compressed) already has a cut stream."""
    return getattr(config, "compressed_hidden_size", None) is not None


def _kept_along_axes(groups, keep: torch.Tensor) -> dict[int, dict[int, torch.Tensor]]:
    """{id(param): {axis of the parameter: indices kept along it}} for every grouped tensor with a group cut.

    A grouped tensor is a view whose group axis lies within one axis of the parameter (rows of a projection, as
    heads of d rows or thirds of a fused one; its columns; a channel of a vector): the groups' keep mask, spread over
    the view and read back along that axis, is the axis's kept entries. A tensor grouped along two axes (a Q
    weight: heads by rows, channels by columns) is cut along both."""
    cuts: dict[int, dict[int, torch.Tensor]] = {}
    for t in groups.tensors:
        local = keep[t.span]
        if bool(local.all()):
            continue
        natural = tuple(t.param.shape)
        axis = _natural_axis(t.shape, t.group_dim, natural)
        mask = t.broadcast(local).expand(t.shape).reshape(natural)
        along = mask.movedim(axis, 0).reshape(natural[axis], -1).any(dim=1)
        cuts.setdefault(id(t.param), {})[axis] = torch.nonzero(along).flatten()
    return cuts


def _natural_axis(view_shape: tuple[int, ...], group_dim: int, natural: tuple[int, ...]) -> int:
    """The axis of a tensor shaped `natural` that holds axis `group_dim` of its view `view_shape`."""
    before = 1
    for d in view_shape[:group_dim]:
        before *= d
    span = 1
    for axis, size in enumerate(natural):
        span *= size
        if before < span:
            return axis
    raise ValueError(f"no axis of {natural} holds axis {group_dim} of {view_shape}")


def _compressed_config(config, heads_per_layer: list[int], widths_per_layer: list[int], hidden: int | None = None):
    """The compressed config: the model's own (stock or compressed) config with the per-layer sizes (and the
    stream's width where hidden channels are cut)."""
    stock_type = getattr(config, "stock_model_type", None) or config.model_type
    values = config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "auto_map"):
        values.pop(key, None)
    values["num_attention_heads_per_layer"] = heads_per_layer
    values["intermediate_size_per_layer"] = widths_per_layer
    values["compressed_hidden_size"] = hidden
    new_config = CONFIG_CLASSES["oto_" + stock_type](**values)
    new_config._attn_implementation = config._attn_implementation
    return new_config
