"""BERT with per-layer head counts and FFN widths: the architecture of a compressed model.

Everything but the encoder layers is stock `transformers` BERT: embeddings, pooler, task heads and every
`forward` are inherited, so a compressed model behaves exactly like the BERT it came from. Parameter names are
unchanged too; only the shapes of the per-layer projections differ.

This file travels with every compressed checkpoint (``trust_remote_code=True``), so it imports only ``torch``
and ``transformers``, never ``oto_hf``.
"""

import warnings
from collections.abc import Callable

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import (
    BertEncoder,
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertLayer,
    BertLMHeadModel,
    BertModel,
    BertSelfAttention,
    eager_attention_forward,
)

from .configuration_oto_bert import OTOBertConfig


def _linear(in_features: int, out_features: int) -> nn.Linear:
    """`nn.Linear` that may have no rows or columns (a layer left with no head or no neuron), without torch's
    warning that initialising an empty tensor does nothing."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return nn.Linear(in_features, out_features)


class OTOBertSelfAttention(BertSelfAttention):
    """Self-attention with `num_heads` heads of the original head size (`num_heads` may be 0)."""

    def __init__(self, config: OTOBertConfig, num_heads: int, is_causal: bool = False, layer_idx: int | None = None):
        nn.Module.__init__(self)
        self.config = config
        self.num_attention_heads = num_heads
        self.attention_head_size = config.attention_head_size
        self.all_head_size = num_heads * self.attention_head_size
        self.scaling = self.attention_head_size**-0.5

        self.query = _linear(config.hidden_size, self.all_head_size)
        self.key = _linear(config.hidden_size, self.all_head_size)
        self.value = _linear(config.hidden_size, self.all_head_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

        self.is_decoder = config.is_decoder
        self.is_causal = is_causal
        self.layer_idx = layer_idx

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        if self.num_attention_heads == 0:
            # No head left: the attention adds nothing but the output projection's bias (added by the caller).
            return hidden_states.new_zeros(*input_shape, 0), None

        # The stock module infers the head count with view(..., -1, head_size); spelling it out keeps the
        # shapes right for any head count.
        hidden_shape = (*input_shape, self.num_attention_heads, self.attention_head_size)
        query_layer = self.query(hidden_states).view(hidden_shape).transpose(1, 2)
        key_layer = self.key(hidden_states).view(hidden_shape).transpose(1, 2)
        value_layer = self.value(hidden_states).view(hidden_shape).transpose(1, 2)

        if past_key_values is not None:
            cache = getattr(past_key_values, "self_attention_cache", past_key_values)
            key_layer, value_layer = cache.update(key_layer, value_layer, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_layer,
            key_layer,
            value_layer,
            attention_mask,
            dropout=0.0 if not self.training else self.dropout.p,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, self.all_head_size).contiguous()
        return attn_output, attn_weights


class OTOBertLayer(BertLayer):
    """A BERT layer whose attention keeps `num_attention_heads_per_layer[i]` heads and whose FFN keeps
    `intermediate_size_per_layer[i]` neurons. Forward is the stock one."""

    def __init__(self, config: OTOBertConfig, layer_idx: int):
        # Build the stock layer, then resize the four pruned projections. Building at full size first keeps every
        # other detail (LayerNorms, dropouts, activation, chunking) exactly stock; under `from_pretrained` all of
        # this happens on the meta device, so it costs nothing.
        super().__init__(config, layer_idx=layer_idx)
        num_heads = config.num_attention_heads_per_layer[layer_idx]
        width = config.intermediate_size_per_layer[layer_idx]
        self.attention.self = OTOBertSelfAttention(config, num_heads, is_causal=config.is_decoder, layer_idx=layer_idx)
        self.attention.output.dense = _linear(num_heads * config.attention_head_size, config.hidden_size)
        self.intermediate.dense = _linear(config.hidden_size, width)
        self.output.dense = _linear(width, config.hidden_size)


class OTOBertEncoder(BertEncoder):
    def __init__(self, config: OTOBertConfig):
        nn.Module.__init__(self)
        self.config = config
        self.layer = nn.ModuleList([OTOBertLayer(config, layer_idx=i) for i in range(config.num_hidden_layers)])


class _OTOBertMixin:
    """What every OTOBert model adds to its stock counterpart: strict loading and a self-describing checkpoint."""

    config_class = OTOBertConfig

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return _strict_from_pretrained(super().from_pretrained, cls, *args, **kwargs)

    def save_pretrained(self, *args, **kwargs):
        # Every Auto class in `auto_map`, so that `trust_remote_code=True` loads any head from this checkpoint.
        self.config.auto_map = {"AutoConfig": f"configuration_oto_bert.{OTOBertConfig.__name__}"} | {
            name: f"modeling_oto_bert.{model_class.__name__}" for name, model_class in AUTO_CLASSES.items()
        }
        return super().save_pretrained(*args, **kwargs)


class OTOBertModel(_OTOBertMixin, BertModel):
    def __init__(self, config: OTOBertConfig, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        self.encoder = OTOBertEncoder(config)
        self.post_init()


class _OTOBertTaskModel(_OTOBertMixin):
    """Mixin for the task models: the stock `__init__` builds a stock `BertModel` as `self.bert`; it is replaced
    by the per-layer one (with or without pooler, as the task model wants). Heads and `forward` are stock."""

    def __init__(self, config: OTOBertConfig):
        super().__init__(config)
        self.bert = OTOBertModel(config, add_pooling_layer=self.bert.pooler is not None)
        self.post_init()


def _strict_from_pretrained(load, cls, *args, **kwargs):
    """`from_pretrained`, but a checkpoint whose encoder weights are missing or do not match the per-layer
    config is an error, never a silent re-initialisation (`ignore_mismatched_sizes` would otherwise re-draw
    pruned weights at random). Missing task-head weights stay allowed: that is how a new head is fine-tuned."""
    want_info = kwargs.pop("output_loading_info", False)
    # Let transformers report size mismatches instead of raising its generic error, so that ours names them.
    kwargs["ignore_mismatched_sizes"] = True
    model, info = load(*args, output_loading_info=True, **kwargs)
    prefix = "" if isinstance(model, BertModel) else model.base_model_prefix + "."
    backbone = (prefix + "embeddings.", prefix + "encoder.")
    missing = sorted(k for k in info.get("missing_keys", ()) if k.startswith(backbone))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    if missing or mismatched:
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        details = []
        if mismatched:
            details.append(f"{len(mismatched)} tensor(s) with a shape other than the config says: {mismatched[:5]}")
        if missing:
            details.append(f"{len(missing)} encoder/embedding tensor(s) missing from the weights: {missing[:5]}")
        raise ValueError(
            f"The weights at {source!r} do not match its OTOBertConfig "
            f"(heads per layer {model.config.num_attention_heads_per_layer}, FFN widths per layer "
            f"{model.config.intermediate_size_per_layer}): " + "; ".join(details) + ". The config and the weights "
            "must come from the same compressed model: save them together with `save_pretrained`."
        )
    return (model, info) if want_info else model


class OTOBertForPreTraining(_OTOBertTaskModel, BertForPreTraining):
    pass


class OTOBertLMHeadModel(_OTOBertTaskModel, BertLMHeadModel):
    pass


class OTOBertForMaskedLM(_OTOBertTaskModel, BertForMaskedLM):
    pass


class OTOBertForNextSentencePrediction(_OTOBertTaskModel, BertForNextSentencePrediction):
    pass


class OTOBertForSequenceClassification(_OTOBertTaskModel, BertForSequenceClassification):
    pass


class OTOBertForMultipleChoice(_OTOBertTaskModel, BertForMultipleChoice):
    pass


class OTOBertForTokenClassification(_OTOBertTaskModel, BertForTokenClassification):
    pass


class OTOBertForQuestionAnswering(_OTOBertTaskModel, BertForQuestionAnswering):
    pass


# Auto class of each model class: used by `oto_hf` to register them, and written into `auto_map` so that
# `trust_remote_code=True` finds every head without oto_hf installed.
AUTO_CLASSES = {
    "AutoModel": OTOBertModel,
    "AutoModelForPreTraining": OTOBertForPreTraining,
    "AutoModelForCausalLM": OTOBertLMHeadModel,
    "AutoModelForMaskedLM": OTOBertForMaskedLM,
    "AutoModelForNextSentencePrediction": OTOBertForNextSentencePrediction,
    "AutoModelForSequenceClassification": OTOBertForSequenceClassification,
    "AutoModelForMultipleChoice": OTOBertForMultipleChoice,
    "AutoModelForTokenClassification": OTOBertForTokenClassification,
    "AutoModelForQuestionAnswering": OTOBertForQuestionAnswering,
}

# `save_pretrained` copies this file and the config's next to the weights.
OTOBertConfig.register_for_auto_class()
for _name, _model_class in AUTO_CLASSES.items():
    _model_class.register_for_auto_class(_name)

__all__ = ["OTOBertEncoder", "OTOBertLayer", "OTOBertSelfAttention", *(c.__name__ for c in AUTO_CLASSES.values())]
