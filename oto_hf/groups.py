"""Zero-invariant groups: which parameters of an encoder vanish together, and what each group costs.

A group is a minimal set of parameters such that, once all of them are zero, the structure they belong to adds
nothing to the model's output, so it can be cut out without changing it:

* attention head h of a layer: its rows (h·d … (h+1)·d − 1) of the query, key and value projections (weights and
  biases; in a fused projection laid out as (3, heads, d), its rows of each third), its rows of any other projection
  that belongs to the head (DeBERTa's relative-position projections when they are not shared), and its columns of
  the attention output projection. Zero V rows and bias ⇒ zero context for that head whatever the attention
  pattern; zero output columns ⇒ nothing of it reaches the residual stream.
* FFN neuron j of a layer: row j of the FFN input projection and its bias (rows j and j + width of a GLU's
  [input; gate] projection) and column j of the FFN output projection (a zero pre-activation gives act(0) = 0 for
  GELU/ReLU/SiLU, and a zero gate gives 0 whatever the activation).

* channel c of the residual stream (with `prune_hidden`, where the family's entry has a `hidden` layout): its
  column of every embedding table in the stream, its entry of every norm over the stream, its row (and bias) of
  every projection that writes the stream, its column of every projection that reads it (Q/K/V, FFN input, the
  pooler's and the task head's input), both of a stream-to-stream transform (an MLM head's). Zero embedding
  columns, writer rows and norm entries ⇒ the stream is exactly 0 in channel c everywhere; zero reader columns ⇒
  nothing reads it. One thing is not invariant by itself: a LayerNorm's mean and variance count every channel, so a
  zero channel still changes the others' normalisation. The stream's norms are therefore run with their statistics
  over the live channels (`track_live_width`, `oto_hf.live_norm`), which is exactly the LayerNorm the compressed
  model runs over its kept channels: training and the compressed forward are the same function, and the compressed
  model keeps the stock, fused LayerNorm (see `oto_hf.live_norm` for why not the other way round). Hidden groups
  overlap the head and neuron groups (a Q weight is in a head by its rows and in a channel by its columns); every
  group operation adds up or writes over its members, so overlapping groups need nothing special.

Without `prune_hidden`, embeddings, layer norms, the output projections' biases, pooler and task head are not
grouped: they are trained but never pruned, and the hidden width stays. Where a family keeps these parts is its
entry in `oto_hf.architectures`; this module reads the entry, finds the groups and counts their costs from the real
module shapes.

Every group operation works on whole tensors (a view that puts the groups on one axis), never one group at a
time: bert-base has 37,008 groups.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from .architectures import FAMILIES, FAMILY_OF_MODEL_TYPE, Family, get_submodule, stream_modules


HEAD, NEURON, CUSTOM, HIDDEN = 0, 1, 2, 3
KIND_NAMES = ("head", "neuron", "custom", "hidden")
# The `layers` entry of a hidden channel's group: the residual stream runs through every layer, it is in none.
STREAM = -1
DEFAULT_SEQ_LEN = 384


class UnsupportedModelError(TypeError):
    """The model's architecture has no zero-invariant partition in oto_hf."""


@dataclass(eq=False)
class GroupedTensor:
    """One parameter tensor's share of consecutive groups `offset … offset+count−1`.

    Viewed as `shape`, axis `group_dim` of the parameter indexes those groups: rows of a projection whose output
    is grouped, columns of one whose input is grouped.
    """

    name: str
    param: nn.Parameter
    offset: int
    count: int
    shape: tuple[int, ...]
    group_dim: int

    @property
    def span(self) -> slice:
        return slice(self.offset, self.offset + self.count)

    def view(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` (shaped like the parameter) with the groups on axis `group_dim`."""
        return tensor.view(self.shape)

    def per_group_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of `tensor` over each group's elements: shape (count,)."""
        dims = [i for i in range(len(self.shape)) if i != self.group_dim]
        return tensor.view(self.shape).sum(dim=dims) if dims else tensor.view(self.shape)  # sum(dim=[]) sums all

    def broadcast(self, values: torch.Tensor) -> torch.Tensor:
        """Per-group `values` (count,) shaped to broadcast over `view(tensor)`."""
        shape = [1] * len(self.shape)
        shape[self.group_dim] = self.count
        return values.view(shape)


@dataclass
class _LayerCosts:
    """What one layer's head and neuron cost, read from its modules; `..._at(width)`: once the stream is `width`
    channels wide (every weight of a head or neuron has one axis along the stream, its biases none, and what the
    layer never prunes is all over the stream: norms and output biases)."""

    num_heads: int
    num_neurons: int
    head_params: int
    neuron_params: int
    fixed_params: int  # never pruned: layer norms, output biases, anything else in the layer
    attention_norm_params: int  # of these, the pre-attention norm's: `compress` drops it with the last head
    ffn_norm_params: int  # and the pre-FFN norm's: dropped with the last FFN neuron
    head_token_weights: int  # weight elements of one head that multiply each token (FLOPs = 2 · t · this)
    neuron_token_weights: int
    head_weights: int  # weight elements of one head (the token ones and DeBERTa's position projections')
    attention: nn.Module
    head_size: int
    family: Family
    stream_width: int

    def head_flops(self, tokens: int, width: int | None = None) -> int:
        share = (width or self.stream_width) / self.stream_width
        return 2 * tokens * self.head_token_weights * share + self.family.attention_flops(
            self.attention, tokens, self.head_size, width)

    def neuron_flops(self, tokens: int, width: int | None = None) -> int:
        return 2 * tokens * self.neuron_token_weights * (width or self.stream_width) / self.stream_width

    def head_params_at(self, width: int) -> float:
        return self.head_params - (1 - width / self.stream_width) * self.head_weights

    def neuron_params_at(self, width: int) -> float:
        return self.neuron_params - (1 - width / self.stream_width) * self.neuron_token_weights

    def fixed_params_at(self, width: int, heads: int, neurons: int) -> float:
        """The layer's unpruned parameters, less a pre-LN norm whose block is emptied."""
        fixed = self.fixed_params - (self.attention_norm_params if heads == 0 else 0) - (
            self.ffn_norm_params if neurons == 0 else 0)
        return fixed * width / self.stream_width


class ZeroInvariantGroups:
    """The partition of a model's prunable parameters into zero-invariant groups.

    Groups are numbered layer by layer, heads first, then FFN neurons, then (with `prune_hidden`) the channels of
    the residual stream. Per group: `kinds` (HEAD, NEURON or HIDDEN), `layers` (STREAM for a channel), `index`
    (head, neuron or channel number) and `sizes` (number of parameters). `costs` and `total_cost` say what the
    groups and the whole encoder cost, in parameters or in FLOPs per example.
    """

    def __init__(self, model: nn.Module, prune_heads: bool = True, prune_neurons: bool = True,
                 prune_hidden: bool = False):
        self.family = family_of(model)
        base = find_base_model(model)
        if getattr(base.config, "add_cross_attention", False):
            raise UnsupportedModelError(
                f"{type(base).__name__} has cross-attention (config.add_cross_attention=True); oto_hf prunes only "
                "self-attention heads and FFN neurons of encoders. Use a model without cross-attention."
            )
        if prune_hidden and self.family.hidden is None:
            supported = ", ".join(f.name for f in FAMILIES if f.hidden is not None)
            raise UnsupportedModelError(
                f"prune_hidden: oto_hf cannot prune the hidden width of the {self.family.name} family (it can for: "
                f"{supported}). Prune heads and FFN neurons only (prune_hidden=False, --oto_prune_hidden false)."
            )
        self.prune_heads, self.prune_neurons, self.prune_hidden = prune_heads, prune_neurons, prune_hidden
        self.is_transformer = True
        self.default_seq_len = (self.family.default_tokens(base.config) if self.family.default_tokens
                                else DEFAULT_SEQ_LEN)
        names = {p: n for n, p in model.named_parameters()}
        layers = get_submodule(base, self.family.layers)
        self.num_layers = len(layers)
        self.tensors: list[GroupedTensor] = []
        self._layer_costs: list[_LayerCosts] = []
        kinds, layer_ids, index, sizes = [], [], [], []

        def add(kind: int, layer_id: int, count: int, members: list[tuple[nn.Parameter, tuple, int]], size: int):
            if count == 0:
                return
            offset = len(kinds)
            for param, shape, group_dim in members:
                self.tensors.append(GroupedTensor(names.get(param, "?"), param, offset, count, shape, group_dim))
            kinds.extend([kind] * count)
            layer_ids.extend([layer_id] * count)
            index.extend(range(count))
            sizes.extend([size] * count)

        for i, layer in enumerate(layers):
            head_members, n, d = self._head_members(layer)
            neuron_members, width = self._neuron_members(layer)
            costs = self._costs(layer, head_members, n, d, neuron_members, width)
            self._layer_costs.append(costs)
            if prune_heads:
                add(HEAD, i, n, [(p, shape, dim) for p, shape, dim, _ in head_members], costs.head_params)
            if prune_neurons:
                add(NEURON, i, width, [(p, shape, dim) for p, shape, dim, _ in neuron_members], costs.neuron_params)

        self.hidden_size = get_submodule(layers[0], self.family.attention_output).out_features
        self.stream_norms: list[nn.Module] = []
        # Parameters outside the layers that the stream's channels own ({id: (elements, channel axes)}, filled by
        # `_stream_members`), and with prune_hidden those outside the layers that no channel owns.
        self._outside_stream: dict[int, tuple[int, int]] = {}
        self._outside_fixed = 0  # with prune_hidden: the parameters outside the layers that no channel owns
        if prune_hidden:
            members, self.stream_norms = self._stream_members(model, base, layers)
            in_layers = {id(p) for p in layers.parameters()}
            self._outside_fixed = sum(p.numel() for p in model.parameters()
                                      if id(p) not in in_layers and id(p) not in self._outside_stream)
            add(HIDDEN, STREAM, self.hidden_size, members,
                sum(p.numel() for p, _, _ in members) // max(self.hidden_size, 1))
        self.heads_per_layer = [c.num_heads for c in self._layer_costs]
        self.neurons_per_layer = [c.num_neurons for c in self._layer_costs]
        self.kinds = torch.tensor(kinds, dtype=torch.long)
        self.layers = torch.tensor(layer_ids, dtype=torch.long)
        self.index = torch.tensor(index, dtype=torch.long)
        self.sizes = torch.tensor(sizes, dtype=torch.long)

    def _head_members(self, layer: nn.Module):
        """[(param, grouped shape, group axis, multiplies tokens)] of the layer's heads, the head count and size."""
        family = self.family
        attention = get_submodule(layer, family.attention)
        d = getattr(attention, family.head_size_attribute)
        members = []
        n = None
        for path in family.head_rows():
            linear = get_submodule(layer, path)
            if linear is None:
                continue
            thirds = 3 if family.fused_qkv and path in family.qkv else 1
            count = linear.out_features // (thirds * d)
            n = count if n is None else n
            if count != n or count * thirds * d != linear.out_features:
                raise UnsupportedModelError(f"{path} has {linear.out_features} rows, not a whole number of "
                                            f"{n} heads of size {d}: the layout does not match the family entry.")
            per_token = path in family.qkv
            lead = (thirds, n) if thirds > 1 else (n,)
            members.append((linear.weight, (*lead, d * linear.in_features), len(lead) - 1, per_token))
            if linear.bias is not None:
                members.append((linear.bias, (*lead, d), len(lead) - 1, False))
        if n is None:
            n = 0  # a compressed layer left with no head holds no projection parameters (only empty buffers)
        out = get_submodule(layer, family.attention_output)
        members.append((out.weight, (out.out_features, n, d), 1, True))
        return members, n, d

    def _neuron_members(self, layer: nn.Module):
        """[(param, grouped shape, group axis, multiplies tokens)] of the layer's FFN neurons, and the width."""
        family = self.family
        ffn_in, ffn_out = get_submodule(layer, family.ffn_input), get_submodule(layer, family.ffn_output)
        width = ffn_out.in_features
        lead = (2, width) if family.glu else (width,)
        members = [(ffn_in.weight, (*lead, ffn_in.in_features), len(lead) - 1, True)]
        if ffn_in.bias is not None:
            members.append((ffn_in.bias, (*lead, 1), len(lead) - 1, False))
        members.append((ffn_out.weight, (ffn_out.out_features, width), 1, True))
        return members, width

    def _stream_members(self, model: nn.Module, base: nn.Module, layers) -> tuple[list, list[nn.Module]]:
        """[(param, grouped shape, channel axis)] of every tensor the stream's channels own (each tensor and axis
        once: a decoder tied to the word embeddings is their tensor), and the norms over the stream."""
        width, members, seen, norms = self.hidden_size, [], set(), []
        layer_ids = {id(layer) for layer in layers}

        def own(param, axis: int, path: str, in_layer: bool):
            if not isinstance(param, nn.Parameter) or param.numel() == 0:
                return  # a headless layer's empty projections are buffers: nothing to own
            if param.shape[axis] != width:
                raise UnsupportedModelError(
                    f"{path} has {param.shape[axis]} entries where the residual stream has {width} channels: the "
                    f"model does not match the {self.family.name} family's hidden layout.")
            if (id(param), axis) in seen:
                return
            seen.add((id(param), axis))
            members.append((param, tuple(param.shape), axis))
            if not in_layer:
                numel, axes = self._outside_stream.get(id(param), (param.numel(), 0))
                self._outside_stream[id(param)] = (numel, axes + 1)

        for path in self.family.hidden.unsupported:
            if get_submodule(base, path) is not None:
                raise UnsupportedModelError(
                    f"prune_hidden: this {self.family.name} model has {path}, which mixes the stream's channels in a "
                    "way oto_hf does not cut. Prune heads and FFN neurons only (prune_hidden=False, "
                    "--oto_prune_hidden false).")
        for role, root, path in stream_modules(self.family, model, base):
            module, in_layer = get_submodule(root, path), id(root) in layer_ids
            if role == "vector":
                own(module, module.dim() - 1, path, in_layer)
            if role in ("embedding", "reader", "transform"):
                own(module.weight, 1, path, in_layer)
            if role in ("writer", "transform", "norm"):
                own(module.weight, 0, path, in_layer)
                own(module.bias, 0, path, in_layer)
            if role == "norm":
                norms.append(module)
        return members, norms

    def _costs(self, layer, head_members, n, d, neuron_members, width) -> _LayerCosts:
        def per_group(members, count, tokens_only=False):
            return sum(p.numel() for p, _, _, per_token in members if per_token or not tokens_only) // max(count, 1)

        grouped = sum(p.numel() for p, *_ in head_members + neuron_members)
        head_weights = sum(p.numel() for p, *_ in head_members if p.dim() > 1) // max(n, 1)
        return _LayerCosts(
            num_heads=n, num_neurons=width,
            head_params=per_group(head_members, n), neuron_params=per_group(neuron_members, width),
            fixed_params=sum(p.numel() for p in layer.parameters()) - grouped,
            attention_norm_params=self._norm_params(layer, self.family.attention_norm),
            ffn_norm_params=self._norm_params(layer, self.family.ffn_norm),
            head_token_weights=per_group(head_members, n, tokens_only=True),
            neuron_token_weights=per_group(neuron_members, width, tokens_only=True),
            head_weights=head_weights, attention=get_submodule(layer, self.family.attention), head_size=d,
            family=self.family, stream_width=get_submodule(layer, self.family.attention_output).out_features,
        )

    @staticmethod
    def _norm_params(layer: nn.Module, path: str | None) -> int:
        """Parameters of the layer's norm at `path` (a pre-LN norm before the attention or the FFN), if any."""
        norm = get_submodule(layer, path) if path else None
        return sum(p.numel() for p in norm.parameters()) if norm is not None else 0

    @classmethod
    def from_tensors(cls, members: list[tuple[nn.Parameter, tuple[int, ...], int]]) -> "ZeroInvariantGroups":
        """A custom partition, for models oto_hf does not know (and for testing the optimizer on convex problems):
        each `(param, shape, group_dim)` makes `shape[group_dim]` groups out of `param.view(shape)`. Costs can
        only be counted in parameters; FLOPs and heads/neurons per layer are encoder notions."""
        self = cls.__new__(cls)
        self.tensors, sizes = [], []
        for i, (param, shape, group_dim) in enumerate(members):
            count = shape[group_dim]
            self.tensors.append(GroupedTensor(f"custom.{i}", param, len(sizes), count, tuple(shape), group_dim))
            sizes.extend([param.numel() // count] * count)
        num = len(sizes)
        self.kinds = torch.full((num,), CUSTOM, dtype=torch.long)
        self.layers = torch.zeros(num, dtype=torch.long)
        self.index = torch.arange(num)
        self.sizes = torch.tensor(sizes, dtype=torch.long)
        self.family, self.num_layers, self._layer_costs = None, 1, []
        self.heads_per_layer, self.neurons_per_layer = [0], [0]
        self.prune_heads = self.prune_neurons = self.prune_hidden = False
        self.hidden_size, self.stream_norms, self._outside_stream, self._outside_fixed = 0, [], {}, 0
        self.is_transformer = False
        self.default_seq_len = DEFAULT_SEQ_LEN
        return self

    # ---- description ----

    @property
    def num_groups(self) -> int:
        return len(self.kinds)

    def flops(self, seq_len: int | None = None) -> torch.Tensor:
        """Encoder FLOPs per example that each group costs at `seq_len` tokens (default: the family's, 384 for
        text), float64: 2 per multiply-add of the group's projections of the tokens, plus a head's attention scores
        and context (and DeBERTa's relative-position terms); a hidden channel's, its columns and rows of the layers'
        projections with every head and neuron kept (what the groups cost together is `layer_totals`'s)."""
        seq_len = seq_len or self.default_seq_len
        per_layer = torch.tensor([[c.head_flops(seq_len), c.neuron_flops(seq_len)] for c in self._layer_costs],
                                 dtype=torch.float64).reshape(-1, 2)
        out = torch.zeros(self.num_groups, dtype=torch.float64)
        layered = self.kinds != HIDDEN
        out[layered] = per_layer[self.layers[layered], self.kinds[layered]]
        out[~layered] = sum(2 * seq_len * (c.num_heads * c.head_token_weights + c.num_neurons * c.neuron_token_weights)
                            for c in self._layer_costs) / max(self.hidden_size, 1)
        return out

    def costs(self, unit: str, seq_len: int | None = None) -> torch.Tensor:
        """What removing each group saves, in `unit` ("flops" or "params"), float64."""
        if unit == "flops" and not self.is_transformer:
            raise ValueError("FLOPs are only counted for encoder groups; count a custom partition in 'params'.")
        if unit == "flops":
            return self.flops(seq_len)
        if unit == "params":
            # A hidden channel's encoder parameters: its columns and rows of the layers' projections (every head
            # and neuron kept) and its entries of their norms and biases; its embedding and task-head columns are
            # in its `sizes` and in the model's total, not in the encoder's.
            sizes = self.sizes.to(torch.float64)
            sizes[self.kinds == HIDDEN] = sum(c.num_heads * c.head_weights + c.num_neurons * c.neuron_token_weights
                                              + c.fixed_params for c in self._layer_costs) / max(self.hidden_size, 1)
            return sizes
        raise ValueError(f"unit must be 'flops' or 'params', got {unit!r}")

    def total_cost(self, unit: str, seq_len: int | None = None) -> float:
        """The whole encoder's FLOPs per example or parameters, grouped or not (the denominator of a target); with
        hidden channels grouped, the parameters are the whole model's (embeddings, pooler and task head included: the
        stream's channels own their columns)."""
        if not self.is_transformer:
            return float(self.costs(unit).sum())
        return self.kept_cost(torch.ones(self.num_groups, dtype=torch.bool), unit, seq_len)

    def kept_cost(self, keep: torch.Tensor, unit: str, seq_len: int | None = None) -> float:
        """What the model keeps of `total_cost` with only the groups `keep` selects: exact (`layer_totals`), not a
        sum of the groups' own costs, which overlap once hidden channels are groups."""
        if not self.is_transformer:
            return float(self.costs(unit)[keep.cpu()].sum())
        if unit not in ("flops", "params"):
            raise ValueError(f"unit must be 'flops' or 'params', got {unit!r}")
        _, _, params, flops = self.layer_totals(keep, seq_len)
        if unit == "flops":
            return float(flops)
        outside = sum(numel for numel, _ in self._outside_stream.values()) + self._outside_fixed
        return float(params + outside - self.outside_params_removed(keep))

    def costs_at_width(self, unit: str, width: int, seq_len: int | None = None) -> torch.Tensor:
        """Each head's and FFN neuron's cost once the stream is `width` channels wide (what removing it then saves,
        exact for that width); the channels' own entries are 0. With the width fixed, costs add up again."""
        seq_len = seq_len or self.default_seq_len
        if unit == "flops":
            rows = [[c.head_flops(seq_len, width), c.neuron_flops(seq_len, width)] for c in self._layer_costs]
        elif unit == "params":
            rows = [[c.head_params_at(width), c.neuron_params_at(width)] for c in self._layer_costs]
        else:
            raise ValueError(f"unit must be 'flops' or 'params', got {unit!r}")
        per_layer = torch.tensor(rows, dtype=torch.float64).reshape(-1, 2)
        out = torch.zeros(self.num_groups, dtype=torch.float64)
        blocks = self.kinds != HIDDEN
        out[blocks] = per_layer[self.layers[blocks], self.kinds[blocks]]
        return out

    def layer_totals(self, keep: torch.Tensor, seq_len: int | None = None) -> tuple[list[int], list[int], int, int]:
        """Heads and FFN neurons per layer among the groups `keep` selects (kinds that are not grouped count whole),
        and the encoder parameters and FLOPs per example at `seq_len` of that model (a layer left with no head or no
        FFN neuron loses its pre-LN norm before that block too, as its compressed form does). With hidden channels
        cut, every head's and neuron's projections narrow with the stream, and so do the layer's norms and output
        biases (all over the stream in the families whose hidden width is pruned): exact, not a sum of the groups'
        own costs, which overlap."""
        seq_len = seq_len or self.default_seq_len
        heads, widths = self.count_per_layer(keep, "head"), self.count_per_layer(keep, "neuron")
        width = self.kept_hidden_size(keep)
        params = sum(h * c.head_params_at(width) + w * c.neuron_params_at(width) + c.fixed_params_at(width, h, w)
                     for h, w, c in zip(heads, widths, self._layer_costs))
        flops = sum(h * c.head_flops(seq_len, width) + w * c.neuron_flops(seq_len, width)
                    for h, w, c in zip(heads, widths, self._layer_costs))
        return heads, widths, round(params), round(flops)

    def kept_hidden_size(self, keep: torch.Tensor) -> int:
        """The residual stream's width among the groups `keep` selects (the whole width if it is not grouped)."""
        if not self.prune_hidden:
            return self.hidden_size
        return int((keep.cpu() & (self.kinds == HIDDEN)).sum())

    def outside_params_removed(self, keep: torch.Tensor) -> int:
        """Parameters outside the layers (embedding columns, the embedding norm, the pooler's and the task head's
        columns) that cutting the hidden channels `keep` leaves out removes."""
        if not self.prune_hidden:
            return 0
        kept = self.kept_hidden_size(keep) / self.hidden_size
        return round(sum(numel * (1 - kept ** axes) for numel, axes in self._outside_stream.values()))

    # ---- the live width of the stream's norms ----

    def track_live_width(self) -> None:
        """Run the stream's norms with their statistics over the live channels (those whose group is not all zero),
        which makes a zero channel's group zero-invariant: HSPG calls this once and `update_live_width` after each
        step. Idempotent; the model's outputs change only where a channel is already zero."""
        from .live_norm import make_live

        for norm in self.stream_norms:
            make_live(norm)
        self.update_live_width()

    @torch.no_grad()
    def update_live_width(self, zero: torch.Tensor | None = None) -> None:
        """Tell the stream's live norms which channels are live (`zero`: this partition's zero-group mask, computed
        when not given). Only a change reaches the norms (HSPG calls this every step, with its host copy)."""
        if not self.prune_hidden:
            return
        zero = self.is_zero() if zero is None else zero
        live = ~zero.cpu()[self.kinds == HIDDEN]
        if getattr(self, "_live", None) is not None and torch.equal(live, self._live):
            return
        self._live = live
        for norm in self.stream_norms:
            if hasattr(norm, "set_live_channels"):
                norm.set_live_channels(live)

    def count_per_layer(self, mask: torch.Tensor, kind: str) -> list[int]:
        """How many groups of `kind` ("head" or "neuron") in each layer have `mask` set. Kinds that are not
        grouped (pruning switched off for them) report their physical size."""
        k = KIND_NAMES.index(kind)
        if (k == HEAD and not self.prune_heads) or (k == NEURON and not self.prune_neurons):
            return list(self.heads_per_layer if k == HEAD else self.neurons_per_layer)
        selected = self.layers[mask.cpu() & (self.kinds == k)]
        return torch.bincount(selected, minlength=self.num_layers).tolist()

    def kept_indices(self, keep: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer, the indices of the heads and of the FFN neurons that `keep` selects (all of a kind that is not
        grouped)."""
        keep = keep.cpu()
        heads, neurons = [], []
        for layer in range(self.num_layers):
            in_layer = keep & (self.layers == layer)
            heads.append(self.index[in_layer & (self.kinds == HEAD)] if self.prune_heads
                         else torch.arange(self.heads_per_layer[layer]))
            neurons.append(self.index[in_layer & (self.kinds == NEURON)] if self.prune_neurons
                           else torch.arange(self.neurons_per_layer[layer]))
        return heads, neurons

    # ---- vectorised group operations ----

    @property
    def device(self) -> torch.device:
        """Where the parameters are now: the groups are usually found before the Trainer moves the model to its
        device, so the device is read at each use, not remembered from construction."""
        return self.tensors[0].param.device if self.tensors else torch.device("cpu")

    @torch.no_grad()
    def sq_norms(self) -> torch.Tensor:
        """‖x_g‖² of every group, one tensor of shape (num_groups,), float32, on the parameters' device."""
        out = torch.zeros(self.num_groups, dtype=torch.float32, device=self.device)
        for t in self.tensors:
            out[t.span] += t.per_group_sum(t.param.detach().float().square())
        return out

    def norms(self) -> torch.Tensor:
        """‖x_g‖₂ of every group, shape (num_groups,)."""
        return self.sq_norms().sqrt()

    def is_zero(self) -> torch.Tensor:
        """Boolean mask of the groups whose parameters are all exactly zero."""
        return self.sq_norms() == 0

    @torch.no_grad()
    def zero_(self, indices: torch.Tensor | Iterable[int]) -> None:
        """Set the groups `indices` (integer indices or a boolean mask over groups) to exactly zero, in place."""
        mask = self._as_mask(indices)
        for t in self.tensors:
            local = mask[t.span]
            if local.any():
                t.view(t.param.data).masked_fill_(t.broadcast(local), 0.0)

    def _as_mask(self, indices) -> torch.Tensor:
        indices = torch.as_tensor(indices if not isinstance(indices, range) else list(indices), device=self.device)
        if indices.dtype == torch.bool:
            if indices.shape != (self.num_groups,):
                raise ValueError(f"a boolean group mask must have shape ({self.num_groups},), got {tuple(indices.shape)}")
            return indices
        indices = indices.long().flatten()
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_groups):
            raise IndexError(f"group indices must lie in [0, {self.num_groups}), got {indices.min()}…{indices.max()}")
        mask = torch.zeros(self.num_groups, dtype=torch.bool, device=self.device)
        mask[indices] = True
        return mask


# ---- supported architectures ----


def supported_model_types() -> list[str]:
    """The transformers model types oto_hf prunes (their compressed forms, "oto_<type>", too)."""
    return [t for f in FAMILIES for t in f.model_types]


def family_of(model: nn.Module) -> Family:
    """The entry of `architectures.FAMILIES` that describes `model` (a stock model or a compressed one)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "stock_model_type", None) or getattr(config, "model_type", None)
    family = FAMILY_OF_MODEL_TYPE.get(model_type)
    if family is None or not isinstance(model, PreTrainedModel):
        raise UnsupportedModelError(
            f"oto_hf cannot find zero-invariant groups in {type(model).__name__}"
            + (f" (model type {model_type!r})" if model_type else "") + ". Supported are the model types "
            + ", ".join(f"{f.name}: {'/'.join(f.model_types)}" for f in FAMILIES) + ", with every task head "
            "transformers gives them, and their compressed forms. Unwrap DDP/accelerate wrappers before building "
            "groups. A model with one of these layouts under another model type is one entry in "
            "oto_hf/architectures.py (see its docstring)."
        )
    return family


def find_base_model(model: nn.Module) -> nn.Module:
    """The transformer body of `model` (the model itself for a base model, `model.bert` for a BERT task model)."""
    family = family_of(model)
    for candidate in (model, getattr(model, model.base_model_prefix, None)):
        if candidate is not None and get_submodule(candidate, family.layers) is not None:
            return candidate
    raise UnsupportedModelError(
        f"{type(model).__name__} has no '{family.layers}' layers where the {family.name} family keeps them "
        f"(looked in the model and in its '{model.base_model_prefix}' body)."
    )


def zero_invariant_groups(model: nn.Module, prune_heads: bool = True, prune_neurons: bool = True,
                          prune_hidden: bool = False) -> ZeroInvariantGroups:
    """Partition `model`'s attention heads and FFN neurons (and with `prune_hidden` the channels of its residual
    stream) into zero-invariant groups."""
    return ZeroInvariantGroups(model, prune_heads=prune_heads, prune_neurons=prune_neurons, prune_hidden=prune_hidden)
