"""Parameter and FLOPs accounting for full, group-sparse and compressed BERT models.

FLOPs count the encoder's matrix products at 2 FLOPs per multiply-add: the Q/K/V/output projections, the
attention scores (QKᵀ) and context (softmax·V), and the two FFN projections. Biases, softmax, LayerNorm, GELU and
residual adds are left out (under 1% of the total at sequence length 384). Everything is per example.
"""

from dataclasses import asdict, dataclass

from torch import nn


# ---- cost of one zero-invariant group (h = hidden size, d = head size, t = sequence length) ----


def head_params(h: int, d: int) -> int:
    """Q, K, V rows and biases (3·(h·d + d)) plus the head's columns of the attention output projection (h·d)."""
    return 4 * h * d + 3 * d


def neuron_params(h: int) -> int:
    """Intermediate row and bias (h + 1) plus the neuron's column of the FFN output projection (h)."""
    return 2 * h + 1


def head_flops(h: int, d: int, t: int) -> int:
    """Q/K/V and output projections (4 · 2·t·h·d) plus scores and context (2 · 2·t²·d)."""
    return 8 * t * h * d + 4 * t * t * d


def neuron_flops(h: int, t: int) -> int:
    """Intermediate and output projections: 2 · 2·t·h."""
    return 4 * t * h


def layer_fixed_params(h: int) -> int:
    """Never pruned: the two output-projection biases and the two LayerNorms of a layer."""
    return 2 * h + 4 * h


@dataclass
class ModelStats:
    total_params: int
    encoder_params: int
    encoder_flops: int
    seq_len: int
    heads_per_layer: list[int]
    ffn_width_per_layer: list[int]

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
        }


def model_stats(model: nn.Module, seq_len: int = 384, exclude_zero_groups: bool = True) -> ModelStats:
    """Sizes of a BERT model: total and encoder parameters, encoder FLOPs per example of `seq_len` tokens, and the
    heads and FFN width of each layer.

    With `exclude_zero_groups` (the default) heads and neurons whose whole group is zero count as removed, so a
    group-sparse model reports what `compress` will make of it; without it, the physical sizes are reported.
    """
    from .groups import zero_invariant_groups

    groups = zero_invariant_groups(model)
    keep = ~groups.is_zero().cpu() if exclude_zero_groups else groups.kinds >= 0  # kinds, sizes: on the CPU
    heads = groups.count_per_layer(keep, kind="head")
    widths = groups.count_per_layer(keep, kind="neuron")
    h, d = groups.hidden_size, groups.head_size

    removed_params = int(groups.sizes[~keep].sum())
    encoder_params = sum(
        heads[i] * head_params(h, d) + widths[i] * neuron_params(h) + layer_fixed_params(h)
        for i in range(groups.num_layers)
    )
    encoder_flops = sum(heads[i] * head_flops(h, d, seq_len) + widths[i] * neuron_flops(h, seq_len) for i in range(groups.num_layers))
    # model.parameters() yields tied weights (MLM decoder = word embeddings) once.
    total_params = sum(p.numel() for p in model.parameters()) - removed_params
    return ModelStats(
        total_params=total_params,
        encoder_params=encoder_params,
        encoder_flops=encoder_flops,
        seq_len=seq_len,
        heads_per_layer=heads,
        ffn_width_per_layer=widths,
    )

