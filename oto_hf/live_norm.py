"""LayerNorms over the residual stream whose statistics count only its live channels (hidden-width pruning).

A LayerNorm over the full width with some channels at exactly zero is not the LayerNorm over the kept channels: its
mean and variance are taken over all `H` channels, zeros included. Two ways make training and the compressed model
the same function:

* keep the full width in the statistics of the compressed model's norms (a norm that divides by the original `H`);
* train with the norm the compressed model will use: statistics over the live channels only.

oto_hf does the second. The compressed model is then a stock model with stock `nn.LayerNorm`s, which every runtime
runs as one fused kernel (PyTorch's `layer_norm`, onnxruntime's `LayerNormalization` and `SkipLayerNormalization`
fusions); the first would make every norm of the compressed model a custom one, unfused wherever it is served, to
save a cost paid only in training. What the second costs: while channels are live, nothing (the stock forward
runs); once some are zero, a few elementwise operations per norm in training, and each channel zeroed changes the
others' normalisation a little (the count shrinks by one), which training goes on to absorb.

A dead channel's input is exactly zero (every writer of the stream has a zero row there), and its output is exactly
zero (its weight and bias are zero): the live norm masks both, so that a channel counts only while its group does.
"""

import torch
from torch import nn


class LiveWidthLayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` over the last dimension whose mean and variance are taken over the live channels
    (`set_live_channels`); with every channel live it is the stock forward. Made from a model's own norm by
    `make_live` (the parameters, their names and the state dict are unchanged)."""

    live_channels: torch.Tensor | None
    live_count: int

    def set_live_channels(self, live: torch.Tensor) -> None:
        """`live`: a boolean per channel."""
        count = int(live.sum())
        self.live_count = count
        self.live_channels = None if count == live.numel() else live.to(self.weight.device if self.weight is not None
                                                                          else live.device)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        live = getattr(self, "live_channels", None)
        if live is None:
            return super().forward(hidden)
        mask = live.to(torch.float32)
        x = hidden.float() * mask
        count = max(self.live_count, 1)
        mean = x.sum(-1, keepdim=True) / count
        centred = (x - mean) * mask
        variance = centred.square().sum(-1, keepdim=True) / count
        out = centred * torch.rsqrt(variance + self.eps)
        if self.weight is not None:
            out = out * self.weight.float()
        if self.bias is not None:
            out = out + self.bias.float()
        return out.to(hidden.dtype)


def make_live(norm: nn.Module) -> None:
    """Turn `norm` (an `nn.LayerNorm` over the stream) into a `LiveWidthLayerNorm` in place, every channel live."""
    if isinstance(norm, LiveWidthLayerNorm):
        return
    if type(norm) is not nn.LayerNorm or len(norm.normalized_shape) != 1:
        raise TypeError(f"hidden-width pruning needs the stream's norms to be nn.LayerNorm over the last dimension; "
                        f"got {type(norm).__name__} with shape {getattr(norm, 'normalized_shape', '?')}")
    norm.__class__ = LiveWidthLayerNorm
    norm.live_channels, norm.live_count = None, norm.normalized_shape[0]


__all__ = ["LiveWidthLayerNorm", "make_live"]
