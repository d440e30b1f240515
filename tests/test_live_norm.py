import pytest
import torch
from torch import nn

from conftest import assert_exact
from oto_hf.live_norm import LiveWidthLayerNorm, make_live


def _norm(width=16, seed=0):
    torch.manual_seed(seed)
    norm = nn.LayerNorm(width, eps=1e-12)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    return norm


def test_every_channel_live_is_the_stock_norm():
    norm = _norm()
    x = torch.randn(2, 5, 16)
    expected = norm(x)
    make_live(norm)
    assert isinstance(norm, LiveWidthLayerNorm)
    assert torch.equal(norm(x), expected)
    assert set(norm.state_dict()) == {"weight", "bias"}  # nothing new is saved


def test_dead_channels_give_the_norm_over_the_live_ones():
    """With the dead channels' inputs, weights and biases at zero (a zero group), the live norm is the stock norm
    over the kept channels, and the dead channels' outputs are exactly zero."""
    norm = _norm()
    live = torch.ones(16, dtype=torch.bool)
    live[[1, 4, 5, 11]] = False
    with torch.no_grad():
        norm.weight[~live] = 0
        norm.bias[~live] = 0
    x = torch.randn(3, 7, 16) * 4 + 1.5
    x[..., ~live] = 0
    small = nn.LayerNorm(int(live.sum()), eps=1e-12)
    with torch.no_grad():
        small.weight.copy_(norm.weight[live])
        small.bias.copy_(norm.bias[live])
    stock_over_full_width = norm(x)[..., live]

    make_live(norm)
    norm.set_live_channels(live)
    out = norm(x)
    assert_exact(out[..., live], small(x[..., live]))
    assert torch.equal(out[..., ~live], torch.zeros_like(out[..., ~live]))
    # The choice matters: the stock norm over the full width is another function.
    assert (stock_over_full_width - small(x[..., live])).abs().max() > 1e-2


def test_gradients_flow_to_the_live_channels_only_through_the_live_statistics():
    norm = _norm()
    live = torch.ones(16, dtype=torch.bool)
    live[:3] = False
    with torch.no_grad():
        norm.weight[~live] = 0
        norm.bias[~live] = 0
    make_live(norm)
    norm.set_live_channels(live)
    x = torch.randn(2, 4, 16)
    x[..., ~live] = 0
    x.requires_grad_(True)
    norm(x).square().sum().backward()
    assert torch.equal(norm.weight.grad[~live], torch.zeros(3))
    assert norm.weight.grad[live].abs().sum() > 0


def test_a_norm_of_another_kind_is_refused():
    with pytest.raises(TypeError, match="nn.LayerNorm"):
        make_live(nn.RMSNorm(8))
    with pytest.raises(TypeError, match="last dimension"):
        make_live(nn.LayerNorm([4, 8]))
