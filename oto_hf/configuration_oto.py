"""Configurations of compressed models: a family's stock config plus the heads and FFN width each layer kept.

For every model type in `architectures.FAMILIES` there is one class, `OTO<stock config class>` with model type
`oto_<stock model type>` (`OTOBertConfig`/"oto_bert", `OTORobertaConfig`/"oto_roberta", …). Every stock field
keeps its meaning: the hidden (residual) width and the size of one attention head are those of the original model;
only the number of heads and the FFN width vary by layer.

Why not transformers' own `per_layer_config`: the encoder families here derive the head size from
hidden_size / num_attention_heads, so a per-layer `num_attention_heads` would change the head size, not the count;
their layers read the global config and do not look at `per_layer_config`; and a heterogeneous config makes every
read of a per-layer attribute from the global config raise, which stock embeddings and heads do. Two explicit lists
keep the stock config valid and the checkpoints of oto_hf 0.1 loadable.

This file travels with every compressed checkpoint (``trust_remote_code=True``), so it imports only
``transformers`` and ``huggingface_hub``, never ``oto_hf``.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .architectures import FAMILY_OF_MODEL_TYPE


PER_LAYER_DOC = r"""
    A [`{stock}`] with per-layer sizes, written by `oto_hf.compress` after structured pruning.

    Args:
        num_attention_heads_per_layer (`list[int]`, *optional*):
            Heads kept in each layer (0 is allowed: the layer's attention then adds only its output bias).
            Defaults to `num_attention_heads` in every layer.
        intermediate_size_per_layer (`list[int]`, *optional*):
            FFN neurons kept in each layer (0 is allowed: the FFN then adds only its output bias).
            Defaults to the stock FFN width (`{width}`) in every layer.
        compressed_hidden_size (`int`, *optional*):
            The residual stream's width after hidden-width pruning: the embeddings, every norm over the stream and
            every projection that reads or writes it have this many channels. Defaults to `hidden_size` (not
            pruned); `hidden_size` keeps the original width, from which the head size is derived.
        oto_pruning_info (`dict`, *optional*):
            What was removed and how (a free-form record for model cards; never read by the model).
"""


class OTOConfigMixin:
    """What every compressed config adds to its stock class: the per-layer lists, their defaults and validation."""

    # Set on each generated class: the stock model type and the config attribute holding the FFN width.
    stock_model_type: str
    width_attribute: str

    def __post_init__(self, **kwargs):
        if self.num_attention_heads_per_layer is None:
            self.num_attention_heads_per_layer = [self.num_attention_heads] * self.num_hidden_layers
        if self.intermediate_size_per_layer is None:
            self.intermediate_size_per_layer = [self.full_ffn_width] * self.num_hidden_layers
        self.num_attention_heads_per_layer = [int(h) for h in self.num_attention_heads_per_layer]
        self.intermediate_size_per_layer = [int(i) for i in self.intermediate_size_per_layer]
        super().__post_init__(**kwargs)

    @property
    def full_ffn_width(self) -> int:
        """The FFN width of the model before pruning."""
        return getattr(self, self.width_attribute)

    def validate_per_layer_sizes(self):
        """Part of `@strict` validation: the per-layer lists must describe every layer, within the original sizes."""
        for name, values, upper in (
            ("num_attention_heads_per_layer", self.num_attention_heads_per_layer, self.num_attention_heads),
            ("intermediate_size_per_layer", self.intermediate_size_per_layer, self.full_ffn_width),
        ):
            if len(values) != self.num_hidden_layers:
                raise ValueError(
                    f"{type(self).__name__}.{name} has {len(values)} entries but the model has "
                    f"{self.num_hidden_layers} layers: give one entry per layer."
                )
            bad = [v for v in values if not 0 <= v <= upper]
            if bad:
                raise ValueError(f"{type(self).__name__}.{name} has entries {bad} outside [0, {upper}].")
        width = self.compressed_hidden_size
        if width is not None and not 1 <= width <= self.hidden_size:
            raise ValueError(f"{type(self).__name__}.compressed_hidden_size is {width}: it must lie in "
                             f"[1, hidden_size = {self.hidden_size}].")
        if getattr(self, "add_cross_attention", False):
            raise ValueError(f"{type(self).__name__} does not support add_cross_attention=True (cross-attention is "
                             "not pruned).")


def _compressed_config_class(model_type: str) -> type[PreTrainedConfig]:
    stock = CONFIG_MAPPING[model_type]
    family = FAMILY_OF_MODEL_TYPE[model_type]
    namespace = {
        "__module__": __name__,
        "__doc__": PER_LAYER_DOC.format(stock=stock.__name__, width=family.width_attribute),
        "__annotations__": {"num_attention_heads_per_layer": list[int] | None,
                            "intermediate_size_per_layer": list[int] | None,
                            "compressed_hidden_size": int | None,
                            "oto_pruning_info": dict | None},
        "num_attention_heads_per_layer": None,
        "intermediate_size_per_layer": None,
        "compressed_hidden_size": None,
        "oto_pruning_info": None,
        "model_type": "oto_" + model_type,
        "stock_model_type": model_type,
        "width_attribute": family.width_attribute,
    }
    return strict(type("OTO" + stock.__name__, (OTOConfigMixin, stock), namespace))


# Model type of the compressed model ("oto_roberta") -> its config class; each is also a name of this module.
CONFIG_CLASSES: dict[str, type[PreTrainedConfig]] = {}
for _model_type in FAMILY_OF_MODEL_TYPE:
    _cls = _compressed_config_class(_model_type)
    CONFIG_CLASSES[_cls.model_type] = _cls
    globals()[_cls.__name__] = _cls

__all__ = ["CONFIG_CLASSES", "OTOConfigMixin", *(c.__name__ for c in CONFIG_CLASSES.values())]
