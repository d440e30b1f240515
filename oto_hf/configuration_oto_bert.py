"""Configuration of a BERT whose layers each keep their own number of heads and FFN width.

This file travels with every compressed checkpoint (``trust_remote_code=True``), so it imports only
``transformers`` and ``huggingface_hub``, never ``oto_hf``.
"""

from huggingface_hub.dataclasses import strict
from transformers import BertConfig


@strict
class OTOBertConfig(BertConfig):
    r"""
    A [`BertConfig`] with per-layer sizes, written by `oto_hf.compress` after structured pruning.

    The hidden (residual) width and the size of one attention head (`hidden_size // num_attention_heads`)
    are those of the original model; only the number of heads and the FFN width vary by layer.

    Args:
        num_attention_heads_per_layer (`list[int]`, *optional*):
            Heads kept in each layer (0 is allowed: the layer's attention then adds only its output bias).
            Defaults to `num_attention_heads` in every layer.
        intermediate_size_per_layer (`list[int]`, *optional*):
            FFN neurons kept in each layer (0 is allowed: the FFN then adds only its output bias).
            Defaults to `intermediate_size` in every layer.
        oto_pruning_info (`dict`, *optional*):
            What was removed and how (free-form record for model cards; never read by the model).
    """

    model_type = "oto_bert"

    num_attention_heads_per_layer: list[int] | None = None
    intermediate_size_per_layer: list[int] | None = None
    oto_pruning_info: dict | None = None

    def __post_init__(self, **kwargs):
        if self.num_attention_heads_per_layer is None:
            self.num_attention_heads_per_layer = [self.num_attention_heads] * self.num_hidden_layers
        if self.intermediate_size_per_layer is None:
            self.intermediate_size_per_layer = [self.intermediate_size] * self.num_hidden_layers
        self.num_attention_heads_per_layer = [int(h) for h in self.num_attention_heads_per_layer]
        self.intermediate_size_per_layer = [int(i) for i in self.intermediate_size_per_layer]
        super().__post_init__(**kwargs)

    @property
    def attention_head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate_per_layer_sizes(self):
        """Part of `@strict` validation: the per-layer lists must describe every layer, within the original sizes."""
        for name, values, upper in (
            ("num_attention_heads_per_layer", self.num_attention_heads_per_layer, self.num_attention_heads),
            ("intermediate_size_per_layer", self.intermediate_size_per_layer, self.intermediate_size),
        ):
            if len(values) != self.num_hidden_layers:
                raise ValueError(
                    f"OTOBertConfig.{name} has {len(values)} entries but num_hidden_layers is "
                    f"{self.num_hidden_layers}: give one entry per layer."
                )
            bad = [v for v in values if not 0 <= v <= upper]
            if bad:
                raise ValueError(f"OTOBertConfig.{name} has entries {bad} outside [0, {upper}].")
        if self.add_cross_attention:
            raise ValueError("OTOBertConfig does not support add_cross_attention=True (cross-attention is not pruned).")


__all__ = ["OTOBertConfig"]
