"""Parameter and FLOPs accounting for full, group-sparse and compressed encoders.

The costs themselves are counted by the zero-invariant groups from the real module shapes (`oto_hf.groups`):
FLOPs are the encoder layers' matrix products at 2 FLOPs per multiply-add (the projections, a head's attention
scores and context, and DeBERTa's relative-position terms), per example; biases, softmax, layer norms,
activations and residual adds are left out (under 1% of the total at sequence length 384). This module sums them
into a model's totals.
"""

from dataclasses import asdict, dataclass

from torch import nn


@dataclass
class ModelStats:
    total_params: int
    encoder_params: int
    encoder_flops: int
    seq_len: int
    heads_per_layer: list[int]
    ffn_width_per_layer: list[int]
    hidden_size: int | None = None  # the residual stream's width

    def to_dict(self) -> dict:
        return asdict(self)

    def ratio_to(self, reference: "ModelStats") -> dict:
        """Fractions kept relative to `reference` (e.g. the dense model)."""
        return {
            "total_params": self.total_params / reference.total_params,
            "encoder_params": self.encoder_params / reference.encoder_params,
            "encoder_flops": self.encoder_flops / reference.encoder_flops,
            "heads": sum(self.heads_per_layer) / max(1, sum(reference.heads_per_layer)),
            "ffn_neurons": sum(self.ffn_width_per_layer) / max(1, sum(reference.ffn_width_per_layer)),
            "hidden": (self.hidden_size or 0) / max(1, reference.hidden_size or 0),
        }


def model_stats(model: nn.Module, seq_len: int | None = None, exclude_zero_groups: bool = True) -> ModelStats:
    """Sizes of an encoder: total and encoder parameters, encoder FLOPs per example of `seq_len` tokens (default:
    384 for text, the patch count for vision models), the heads and FFN width of each layer and the hidden width.

    With `exclude_zero_groups` (the default) heads and neurons whose whole group is zero count as removed, so a
    group-sparse model reports what `compress` will make of it; without it, the physical sizes are reported.
    """
    from .groups import family_of, zero_invariant_groups

    # Hidden channels count where the family's can be cut, so that a group-sparse model's figures are its
    # compressed form's whatever it was trained with.
    groups = zero_invariant_groups(model, prune_hidden=family_of(model).hidden is not None)
    everything = groups.kinds >= 0  # kinds, sizes: on the CPU
    keep = ~groups.is_zero().cpu() if exclude_zero_groups else everything
    seq_len = seq_len or groups.default_seq_len
    heads, widths, encoder_params, encoder_flops = groups.layer_totals(keep, seq_len)
    # What compressing removes: the zero groups (their share of the embeddings and task head too), and the pre-LN
    # norm before a block they empty. model.parameters() yields tied weights (MLM decoder = word embeddings) once.
    removed = groups.kept_cost(everything, "params") - groups.kept_cost(keep, "params")
    total_params = sum(p.numel() for p in model.parameters()) - round(removed)
    return ModelStats(
        total_params=total_params,
        encoder_params=encoder_params,
        encoder_flops=encoder_flops,
        seq_len=seq_len,
        heads_per_layer=heads,
        ffn_width_per_layer=widths,
        hidden_size=groups.kept_hidden_size(keep),
    )
