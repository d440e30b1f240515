"""Zero-invariant groups: which parameters of a BERT model vanish together.

A group is a minimal set of parameters such that, once all of them are zero, the structure they belong to adds
nothing to the model's output, so it can be cut out without changing it:

* attention head h of a layer: rows h·d…(h+1)·d−1 of the query, key and value weights and biases, and the same
  columns of the attention output projection (zero V rows and bias ⇒ zero context for that head whatever the
  attention pattern; zero output columns ⇒ nothing of it reaches the residual stream);
* FFN neuron j of a layer: row j of the intermediate weight, its bias, and column j of the output projection
  (pre-activation 0 and GELU(0) = 0).

Embeddings, LayerNorms, the two output-projection biases, pooler and task head are not grouped: they are trained
but never pruned, and the hidden width stays.

Every group operation works on whole tensors (a view that puts the groups on one axis), never one group at a
time: bert-base has 37,008 groups.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import BertModel, PreTrainedModel

from .stats import head_flops, head_params, layer_fixed_params, neuron_flops, neuron_params


HEAD, NEURON, CUSTOM = 0, 1, 2
KIND_NAMES = ("head", "neuron", "custom")


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
        return tensor.view(self.shape).sum(dim=dims)

    def broadcast(self, values: torch.Tensor) -> torch.Tensor:
        """Per-group `values` (count,) shaped to broadcast over `view(tensor)`."""
        shape = [1] * len(self.shape)
        shape[self.group_dim] = self.count
        return values.view(shape)


@dataclass
class _LayerModules:
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attention_output: nn.Linear
    intermediate: nn.Linear
    output: nn.Linear
    num_heads: int
    head_size: int


class ZeroInvariantGroups:
    """The partition of a model's prunable parameters into zero-invariant groups.

    Groups are numbered layer by layer, heads first, then FFN neurons. Per group: `kinds` (HEAD or NEURON),
    `layers`, `index` (head or neuron number within its layer) and `sizes` (number of parameters).
    """

    def __init__(self, model: nn.Module, prune_heads: bool = True, prune_neurons: bool = True):
        base = find_base_model(model)
        layers = next(fn for cls, fn in _BASE_MODELS.items() if isinstance(base, cls))(base)
        self.num_layers = len(layers)
        self.hidden_size = base.config.hidden_size
        self.head_size = layers[0].head_size if layers else 0
        self.heads_per_layer = [layer.num_heads for layer in layers]
        self.neurons_per_layer = [layer.intermediate.out_features for layer in layers]
        self.prune_heads, self.prune_neurons = prune_heads, prune_neurons

        h, d = self.hidden_size, self.head_size
        kinds, layer_ids, index, sizes = [], [], [], []
        self.tensors: list[GroupedTensor] = []
        names = {p: n for n, p in model.named_parameters()}

        def add(kind: int, layer_id: int, count: int, members: list[tuple[nn.Parameter, tuple, int]]):
            if count == 0:
                return
            offset = len(kinds)
            for param, shape, group_dim in members:
                self.tensors.append(GroupedTensor(names.get(param, "?"), param, offset, count, shape, group_dim))
            kinds.extend([kind] * count)
            layer_ids.extend([layer_id] * count)
            index.extend(range(count))
            sizes.extend([head_params(h, d) if kind == HEAD else neuron_params(h)] * count)

        for i, layer in enumerate(layers):
            n = layer.num_heads
            if prune_heads:
                members = []
                for proj in (layer.query, layer.key, layer.value):
                    members.append((proj.weight, (n, d * h), 0))
                    members.append((proj.bias, (n, d), 0))
                members.append((layer.attention_output.weight, (h, n, d), 1))
                add(HEAD, i, n, members)
            if prune_neurons:
                width = layer.intermediate.out_features
                members = [
                    (layer.intermediate.weight, (width, h), 0),
                    (layer.intermediate.bias, (width, 1), 0),
                    (layer.output.weight, (h, width), 1),
                ]
                add(NEURON, i, width, members)

        self.kinds = torch.tensor(kinds, dtype=torch.long)
        self.layers = torch.tensor(layer_ids, dtype=torch.long)
        self.index = torch.tensor(index, dtype=torch.long)
        self.sizes = torch.tensor(sizes, dtype=torch.long)
        self.is_transformer = True

    @classmethod
    def from_tensors(cls, members: list[tuple[nn.Parameter, tuple[int, ...], int]]) -> "ZeroInvariantGroups":
        """A custom partition, for models other than BERT (and for testing the optimizer on convex problems):
        each `(param, shape, group_dim)` makes `shape[group_dim]` groups out of `param.view(shape)`. Costs can
        only be counted in parameters; FLOPs and heads/neurons per layer are BERT notions."""
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
        self.num_layers, self.hidden_size, self.head_size = 1, 0, 0
        self.heads_per_layer, self.neurons_per_layer = [0], [0]
        self.prune_heads = self.prune_neurons = False
        self.is_transformer = False
        return self

    # ---- description ----

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def num_groups(self) -> int:
        return len(self.kinds)

    @property
    def params(self) -> list[nn.Parameter]:
        """The grouped parameter tensors (each appears once)."""
        return [t.param for t in self.tensors]

    def flops(self, seq_len: int = 384) -> torch.Tensor:
        """Encoder FLOPs per example that each group costs at `seq_len` tokens (float64)."""
        h, d = self.hidden_size, self.head_size
        per_kind = torch.tensor([head_flops(h, d, seq_len), neuron_flops(h, seq_len)], dtype=torch.float64)
        return per_kind[self.kinds]

    def costs(self, unit: str, seq_len: int = 384) -> torch.Tensor:
        """What removing each group saves, in `unit` ("flops" or "params"), float64."""
        if unit == "flops" and not self.is_transformer:
            raise ValueError("FLOPs are only counted for BERT groups; count a custom partition in 'params'.")
        if unit == "flops":
            return self.flops(seq_len)
        if unit == "params":
            return self.sizes.to(torch.float64)
        raise ValueError(f"unit must be 'flops' or 'params', got {unit!r}")

    def total_cost(self, unit: str, seq_len: int = 384) -> float:
        """The whole encoder's FLOPs per example or parameters, grouped or not (the denominator of a target)."""
        if not self.is_transformer:
            return float(self.costs(unit).sum())
        h, d = self.hidden_size, self.head_size
        heads, neurons = sum(self.heads_per_layer), sum(self.neurons_per_layer)
        if unit == "flops":
            return float(heads * head_flops(h, d, seq_len) + neurons * neuron_flops(h, seq_len))
        if unit == "params":
            return float(heads * head_params(h, d) + neurons * neuron_params(h) + self.num_layers * layer_fixed_params(h))
        raise ValueError(f"unit must be 'flops' or 'params', got {unit!r}")

    def count_per_layer(self, mask: torch.Tensor, kind: str) -> list[int]:
        """How many groups of `kind` ("head" or "neuron") in each layer have `mask` set. Kinds that are not
        grouped (pruning switched off for them) report their physical size."""
        k = KIND_NAMES.index(kind)
        if (k == HEAD and not self.prune_heads) or (k == NEURON and not self.prune_neurons):
            return list(self.heads_per_layer if k == HEAD else self.neurons_per_layer)
        selected = self.layers[mask.cpu() & (self.kinds == k)]
        return torch.bincount(selected, minlength=self.num_layers).tolist()

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

    def describe(self, mask: torch.Tensor | None = None) -> str:
        """One line per layer: heads and neurons kept (those not in the zero `mask`, default: the zero groups)."""
        zero = self.is_zero() if mask is None else mask
        heads = self.count_per_layer(~zero, "head")
        widths = self.count_per_layer(~zero, "neuron")
        return "\n".join(
            f"layer {i}: heads {heads[i]}/{self.heads_per_layer[i]}, FFN {widths[i]}/{self.neurons_per_layer[i]}"
            for i in range(self.num_layers)
        )


# ---- supported architectures ----


def _bert_layers(base: BertModel) -> list[_LayerModules]:
    if getattr(base.config, "add_cross_attention", False):
        raise UnsupportedModelError(
            f"{type(base).__name__} has cross-attention (config.add_cross_attention=True); oto_hf prunes only "
            "self-attention heads and FFN neurons of encoder-style BERT. Use a model without cross-attention."
        )
    layers = []
    for layer in base.encoder.layer:
        attention = layer.attention.self
        layers.append(
            _LayerModules(
                query=attention.query,
                key=attention.key,
                value=attention.value,
                attention_output=layer.attention.output.dense,
                intermediate=layer.intermediate.dense,
                output=layer.output.dense,
                num_heads=attention.num_attention_heads,
                head_size=attention.attention_head_size,
            )
        )
    return layers


# Base-model class → function listing its layers' prunable modules. Subclasses (the compressed OTOBertModel)
# are found through isinstance.
_BASE_MODELS: dict[type, Callable[[nn.Module], list[_LayerModules]]] = {BertModel: _bert_layers}


def supported_architectures() -> list[str]:
    return [cls.__name__ for cls in _BASE_MODELS]


def find_base_model(model: nn.Module) -> nn.Module:
    """The transformer body of `model` (the model itself for a base model, `model.bert` for a BERT task model)."""
    candidates = [model]
    if isinstance(model, PreTrainedModel):
        candidates.append(getattr(model, model.base_model_prefix, None))
    for candidate in candidates:
        if any(isinstance(candidate, cls) for cls in _BASE_MODELS):
            return candidate
    raise UnsupportedModelError(
        f"oto_hf cannot find zero-invariant groups in {type(model).__name__}: supported are models built on "
        f"{', '.join(supported_architectures())} (BertModel and every Bert* task model of transformers, such as "
        "BertForQuestionAnswering or BertForSequenceClassification, and their compressed OTOBert* forms). "
        "Unwrap DDP/accelerate wrappers before building groups."
    )


def zero_invariant_groups(model: nn.Module, prune_heads: bool = True, prune_neurons: bool = True) -> ZeroInvariantGroups:
    """Partition `model`'s attention heads and FFN neurons into zero-invariant groups."""
    return ZeroInvariantGroups(model, prune_heads=prune_heads, prune_neurons=prune_neurons)
