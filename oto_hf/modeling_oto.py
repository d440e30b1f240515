"""Compressed models: the stock transformers classes with each layer's heads and FFN width set from the config.

For every stock model class of a supported model type (`architectures.FAMILIES`) and every Auto class it serves,
there is one class `OTO<stock class>` (`OTOBertForQuestionAnswering`, `OTORobertaModel`,
`OTODebertaV2ForSequenceClassification`, …). It is the stock class, built as usual, whose prunable projections are
then resized to the per-layer sizes of its config (`OTOConfigMixin`): embeddings, layer norms, task heads and every
`forward` stay stock, so a compressed model behaves exactly like the model it came from, parameter names included.
Resizing happens in `post_init`, before weights are initialised, and under `from_pretrained` on the meta device, so
it costs nothing. A layer left with no head gets an attention module that returns an empty context (zero-width, or
the output projection's bias where the module projects itself) and empty attention weights (batch, 0, T, keys), and
keeps the KV cache's length in step. An emptied block holds no parameter that nothing reads (distributed training
with `find_unused_parameters=False` needs every parameter to get a gradient): a headless attention's zero-row
projections keep their empty tensors as unsaved buffers, and in pre-LN families the norm before a headless attention
or a neuron-less FFN, whose output nothing would read, is an `nn.Identity`.

Loading is strict for the body: a checkpoint whose embeddings or encoder do not match the per-layer config is an
error, never a silent re-initialisation; only parameters that a task head adds to the body (ViT's mask token for
masked image modeling) may be new, and are initialised as in transformers. The task head behaves as in transformers:
a head of another size is an error (`HeadSizeMismatchError`, both a `ValueError` and the `RuntimeError` transformers
raises), or re-initialised with `ignore_mismatched_sizes=True`. `set_attn_implementation` switches a compressed
class wherever it switches its stock class.

This file travels with every compressed checkpoint (``trust_remote_code=True``), so it imports only ``torch``,
``transformers`` and the two files beside it, never ``oto_hf``.
"""

import re
import warnings

import torch
import transformers
from torch import nn
from transformers.cache_utils import EncoderDecoderCache
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.auto import modeling_auto

from .architectures import FAMILY_OF_MODEL_TYPE, Family, get_submodule, stream_modules
from .configuration_oto import CONFIG_CLASSES


def resized_linear(linear: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    """`linear` itself if it has this shape, else a new `nn.Linear` of that shape on the same device and dtype
    (no rows or no columns allowed: a layer left with no head or no neuron)."""
    if (linear.in_features, linear.out_features) == (in_features, out_features):
        return linear
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return nn.Linear(in_features, out_features, bias=linear.bias is not None, device=linear.weight.device,
                         dtype=linear.weight.dtype)


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(get_submodule(root, parent) if parent else root, name, module)


def resize_layer(layer: nn.Module, family: Family, num_heads: int, width: int) -> None:
    """Give `layer` `num_heads` heads (of its own head size) and an FFN of `width` neurons, in place."""
    attention = get_submodule(layer, family.attention)
    head_size = getattr(attention, family.head_size_attribute)
    for path in family.head_rows():
        linear = get_submodule(layer, path)
        if linear is not None:
            rows = num_heads * head_size * (3 if family.fused_qkv else 1)
            _replace(layer, path, resized_linear(linear, linear.in_features, rows))
    out = get_submodule(layer, family.attention_output)
    _replace(layer, family.attention_output, resized_linear(out, num_heads * head_size, out.out_features))
    ffn_in, ffn_out = get_submodule(layer, family.ffn_input), get_submodule(layer, family.ffn_output)
    _replace(layer, family.ffn_input, resized_linear(ffn_in, ffn_in.in_features, width * (2 if family.glu else 1)))
    _replace(layer, family.ffn_output, resized_linear(ffn_out, width, ffn_out.out_features))
    for name in family.head_count_attributes:
        setattr(attention, name, num_heads * head_size if name == "all_head_size" else num_heads)
    if num_heads == 0 and not isinstance(attention, EmptyAttention):
        # The stock forwards reshape with the head count (or -1), which fails on zero heads. The module keeps its
        # class as a base, so that transformers still records its (empty) attention weights.
        attention.__class__ = empty_attention_class(type(attention))
        attention.oto_family = family
    if num_heads == 0:
        # Nothing reads what a headless attention would read: no parameter may stay behind that never gets a
        # gradient (DDP with find_unused_parameters=False, the Trainer's choice under gradient checkpointing, fails).
        for path in family.head_rows():
            linear = get_submodule(layer, path)
            if linear is not None:
                _parameters_to_buffers(linear)
    for norm, emptied in ((family.attention_norm, num_heads == 0), (family.ffn_norm, width == 0)):
        if emptied and norm is not None and get_submodule(layer, norm) is not None:
            _replace(layer, norm, nn.Identity())


def _parameters_to_buffers(module: nn.Module) -> None:
    """Turn `module`'s own (empty) parameters into buffers that are not saved: the stock code that builds or
    initialises the module still finds its `weight` and `bias`, and nothing trains or stores them."""
    for name, param in list(module._parameters.items()):
        if param is not None:
            del module._parameters[name]
            module.register_buffer(name, param.detach(), persistent=False)


def unread_parameter_names(model: nn.Module, family: Family) -> list[str]:
    """Names (relative to the base model) of the parameters a compressed model does not hold because nothing reads
    them: the empty projections and the pre-attention norm of each layer left with no head, the pre-FFN norm of each
    layer left with no FFN neuron. Checkpoints of earlier oto_hf versions still carry them."""
    names = []
    for i, layer in enumerate(get_submodule(model.base_model, family.layers)):
        paths = []
        if isinstance(get_submodule(layer, family.attention), EmptyAttention):
            paths += [*family.head_rows(), *([family.attention_norm] if family.attention_norm else [])]
        if family.ffn_norm and get_submodule(layer, family.ffn_output).in_features == 0:
            paths.append(family.ffn_norm)
        names += [f"{family.layers}.{i}.{path}.{p}" for path in paths for p in ("weight", "bias")]
    return names


class EmptyAttention(nn.Module):
    """Marker base of the attention modules of layers left with no head (see `empty_attention_class`)."""


def _empty_attention_forward(self, hidden_states: torch.Tensor, *args, **kwargs):
    """No head left: the context is empty, so the attention adds only its output projection's bias (applied here
    when this module projects its own output, by the caller otherwise); the attention weights are (B, 0, T, T)."""
    batch, length = hidden_states.shape[0], hidden_states.shape[-2]
    context = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
    family = self.oto_family
    if family.output_inside_attention:
        context = get_submodule(self, family.attention_output[len(family.attention) + 1:])(context)
    keys = length
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is not None:
        # Keep the cache's length in step with the other layers (it is read from any layer's keys); the weights
        # then span every cached key, as the other layers' do.
        cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        empty = hidden_states.new_zeros(batch, 0, length, getattr(self, family.head_size_attribute))
        keys = cache.update(empty, empty, self.layer_idx)[0].shape[-2]
    # Attention weights where the stock module would return them: eager attention (sdpa and flash return none).
    eager = getattr(getattr(self, "config", None), "_attn_implementation", "eager") == "eager"
    return context, hidden_states.new_zeros(batch, 0, length, keys) if eager else None


_EMPTY_ATTENTION_CLASSES: dict[type, type] = {}


def empty_attention_class(stock: type) -> type:
    """The stock attention class `stock` with the no-head forward (one subclass per stock class)."""
    if stock not in _EMPTY_ATTENTION_CLASSES:
        _EMPTY_ATTENTION_CLASSES[stock] = type(f"Empty{stock.__name__}", (EmptyAttention, stock),
                                               {"forward": _empty_attention_forward, "__module__": __name__})
    return _EMPTY_ATTENTION_CLASSES[stock]


def resize_stream(model: nn.Module, family: Family, width: int) -> None:
    """Give the residual stream of `model` `width` channels: every embedding table, norm, reader and writer of it
    (`architectures.stream_modules`), in place. A tied decoder is re-tied to the new word embeddings by the
    model's own `tie_weights`."""
    for role, root, path in stream_modules(family, model, model.base_model):
        module = get_submodule(root, path)
        if role == "vector":
            if module.shape[-1] != width:
                _replace(root, path, nn.Parameter(torch.empty(*module.shape[:-1], width, device=module.device,
                                                              dtype=module.dtype), requires_grad=module.requires_grad))
        elif role == "embedding":
            if module.embedding_dim != width:
                _replace(root, path, nn.Embedding(module.num_embeddings, width, padding_idx=module.padding_idx,
                                                  device=module.weight.device, dtype=module.weight.dtype))
        elif role == "norm":
            if module.normalized_shape != (width,):
                _replace(root, path, nn.LayerNorm(width, eps=module.eps, elementwise_affine=module.weight is not None,
                                                  bias=module.bias is not None, device=module.weight.device,
                                                  dtype=module.weight.dtype))
        elif isinstance(module, nn.Conv2d):  # ViT's patch projection (writes), a 1×1 decoder (reads)
            in_channels = width if role == "reader" else module.in_channels
            out_channels = width if role == "writer" else module.out_channels
            if (in_channels, out_channels) != (module.in_channels, module.out_channels):
                _replace(root, path, nn.Conv2d(in_channels, out_channels, module.kernel_size, module.stride,
                                               module.padding, module.dilation, module.groups,
                                               bias=module.bias is not None, padding_mode=module.padding_mode,
                                               device=module.weight.device, dtype=module.weight.dtype))
        else:
            reads, writes = role in ("reader", "transform"), role in ("writer", "transform")
            _replace(root, path, resized_linear(module, width if reads else module.in_features,
                                                width if writes else module.out_features))


def resize_model(model: nn.Module, family: Family, config) -> None:
    """Resize the residual stream (where hidden channels were cut) and every layer of `model` to the sizes of
    `config`."""
    width = getattr(config, "compressed_hidden_size", None)
    if width is not None and family.hidden is not None:
        resize_stream(model, family, width)
    layers = get_submodule(model.base_model, family.layers)
    for layer, num_heads, width in zip(layers, config.num_attention_heads_per_layer,
                                       config.intermediate_size_per_layer, strict=True):
        resize_layer(layer, family, num_heads, width)


class OTOModelMixin:
    """What every compressed model adds to its stock class: per-layer sizes, strict loading of the body and a
    checkpoint that loads with `trust_remote_code=True` through any Auto class of its family."""

    family: Family
    stock_class: type

    def post_init(self):
        resize_model(self, self.family, self.config)
        # Checkpoints of earlier versions still hold the parameters of headless layers that nothing read: dropping
        # them on load loses nothing (they are empty, or a norm whose output went unread).
        self._keys_to_ignore_on_load_unexpected = set(self._keys_to_ignore_on_load_unexpected or ()) | {
            "(^|\\.)" + re.escape(name) + "$" for name in unread_parameter_names(self, self.family)}
        super().post_init()

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        # transformers guesses from the source file of a model's class whether its attention follows the
        # AttentionInterface, and this file (with its own attention module for headless layers) fails the guess.
        # The forwards are the stock class's, so its answer holds.
        return cls.stock_class._can_set_attn_implementation()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return _strict_from_pretrained(super().from_pretrained, cls, *args, **kwargs)

    def save_pretrained(self, *args, **kwargs):
        # Every Auto class in `auto_map`, so that `trust_remote_code=True` loads any head from this checkpoint.
        config_class = CONFIG_CLASSES[self.config.model_type]
        self.config.auto_map = {"AutoConfig": f"configuration_oto.{config_class.__name__}"} | {
            auto: f"modeling_oto.{model_class.__name__}"
            for auto, model_class in AUTO_CLASSES[self.config.model_type].items()
        }
        return super().save_pretrained(*args, **kwargs)


def _strict_from_pretrained(load, cls, *args, **kwargs):
    """`from_pretrained`, but a checkpoint whose embeddings or encoder are missing or do not match the per-layer
    config is an error, never a silent re-initialisation (`ignore_mismatched_sizes` would otherwise re-draw pruned
    weights at random). The task head is the user's: missing head weights are initialised (a new head to
    fine-tune), and a head of another size is re-initialised with `ignore_mismatched_sizes=True` and an error
    without it, as in transformers."""
    want_info = kwargs.pop("output_loading_info", False)
    allow_new_head = kwargs.pop("ignore_mismatched_sizes", False)
    # Let transformers report size mismatches instead of raising its generic error, so that ours names them.
    model, info = load(*args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    base = model.base_model
    prefix = "" if base is model else model.base_model_prefix + "."
    body = tuple(prefix + name + "." for name, _ in base.named_children() if name != "pooler")
    own = _plain_body_parameter_names(base)
    missing = sorted(k for k in info.get("missing_keys", ()) if k.startswith(body) and k[len(prefix):] in own)
    mismatched = [k for k in info.get("mismatched_keys", ())]
    body_mismatched = sorted(str(k) for k in mismatched if str(_key(k)).startswith(body))
    head_mismatched = sorted(str(k) for k in mismatched if not str(_key(k)).startswith(body))
    source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
    if missing or body_mismatched:
        details = []
        if body_mismatched:
            details.append(f"{len(body_mismatched)} tensor(s) with a shape other than the config says: "
                           f"{body_mismatched[:5]}")
        if missing:
            details.append(f"{len(missing)} encoder/embedding tensor(s) missing from the weights: {missing[:5]}")
        raise ValueError(
            f"The weights at {source!r} do not match its {type(model.config).__name__} "
            f"(heads per layer {model.config.num_attention_heads_per_layer}, FFN widths per layer "
            f"{model.config.intermediate_size_per_layer}): " + "; ".join(details) + ". The config and the weights "
            "must come from the same compressed model: save them together with `save_pretrained`."
        )
    if head_mismatched and not allow_new_head:
        raise HeadSizeMismatchError(
            f"The task head at {source!r} has other sizes than {type(model).__name__} asks for: {head_mismatched[:5]}. "
            "Pass ignore_mismatched_sizes=True to initialise a new head (e.g. num_labels for another task); the "
            "compressed body is loaded as it is either way."
        )
    return (model, info) if want_info else model


class HeadSizeMismatchError(ValueError, RuntimeError):
    """A checkpoint's task head has other sizes than the model asks for. Both a `ValueError` and the
    `RuntimeError` transformers raises for the same case, so code written for either catches it."""


def _plain_body_parameter_names(base: nn.Module) -> set[str]:
    """The parameter names of `base` as its class builds it without a task head's options: a parameter `base` has
    beyond these (ViT's mask token, which the masked-image-modeling head asks for) belongs to the head and may be new
    in a checkpoint. Built on the meta device: nothing is allocated."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = type(base)(base.config)
    return {name for name, _ in plain.named_parameters()}


def _key(entry):
    """The parameter name of a `mismatched_keys` entry (a name, or a (name, shape, shape) tuple)."""
    return entry[0] if isinstance(entry, tuple) else entry


# Auto class name -> the names of transformers' mapping from model type to stock class name.
_AUTO_MAPPINGS = {
    "AutoModel": "MODEL_MAPPING_NAMES",
    "AutoModelForPreTraining": "MODEL_FOR_PRETRAINING_MAPPING_NAMES",
    "AutoModelForCausalLM": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "AutoModelForMaskedLM": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "AutoModelForNextSentencePrediction": "MODEL_FOR_NEXT_SENTENCE_PREDICTION_MAPPING_NAMES",
    "AutoModelForSequenceClassification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForMultipleChoice": "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES",
    "AutoModelForTokenClassification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForQuestionAnswering": "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
    "AutoModelForImageClassification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForMaskedImageModeling": "MODEL_FOR_MASKED_IMAGE_MODELING_MAPPING_NAMES",
}


def _stock_class_names(model_type: str, auto_name: str) -> tuple[str, ...]:
    names = getattr(modeling_auto, _AUTO_MAPPINGS[auto_name]).get(model_type, ())
    return (names,) if isinstance(names, str) else tuple(names)


def _compressed_model_class(stock: type, family: Family, config_class: type) -> type:
    return type("OTO" + stock.__name__, (OTOModelMixin, stock), {
        "__module__": __name__,
        "__doc__": f"`{stock.__name__}` with the per-layer heads and FFN widths of `{config_class.__name__}`.",
        "config_class": config_class,
        "family": family,
        "stock_class": stock,
    })


# Compressed model type ("oto_roberta") -> {Auto class name: compressed model class}; every class is also a name of
# this module. STOCK_TO_COMPRESSED maps each stock class to its compressed class (and a compressed one to itself).
AUTO_CLASSES: dict[str, dict[str, type]] = {}
STOCK_TO_COMPRESSED: dict[type, type] = {}
for _model_type, _family in FAMILY_OF_MODEL_TYPE.items():
    _config_class = CONFIG_CLASSES["oto_" + _model_type]
    AUTO_CLASSES[_config_class.model_type] = {}
    for _auto in _family.auto_classes:
        for _name in _stock_class_names(_model_type, _auto):
            _stock = getattr(transformers, _name)
            if _stock not in STOCK_TO_COMPRESSED:
                _cls = _compressed_model_class(_stock, _family, _config_class)
                STOCK_TO_COMPRESSED[_stock] = STOCK_TO_COMPRESSED[_cls] = _cls
                globals()[_cls.__name__] = _cls
            # An Auto class takes one class per config: the first transformers lists.
            AUTO_CLASSES[_config_class.model_type].setdefault(_auto, STOCK_TO_COMPRESSED[_stock])

# Some stock classes rename legacy checkpoint keys when they load (ViT's "encoder.layer.*.attention.attention.query" is
# "layers.*.attention.q_proj" in transformers 5); transformers finds those renamings by class name, so the compressed
# class gets its stock class's.
for _stock, _cls in list(STOCK_TO_COMPRESSED.items()):
    if _stock is not _cls and (_mapping := get_checkpoint_conversion_mapping(_stock.__name__)) is not None:
        register_checkpoint_conversion_mapping(_cls.__name__, _mapping, overwrite=True)

# `save_pretrained` copies this file, and the two it imports, next to the weights.
for _config_class in CONFIG_CLASSES.values():
    _config_class.register_for_auto_class()
for _classes in AUTO_CLASSES.values():
    for _auto, _cls in _classes.items():
        _cls.register_for_auto_class(_auto)

__all__ = ["AUTO_CLASSES", "EmptyAttention", "HeadSizeMismatchError", "OTOModelMixin", "STOCK_TO_COMPRESSED",
           "resize_layer", "unread_parameter_names",
           *sorted({c.__name__ for c in STOCK_TO_COMPRESSED.values()})]
