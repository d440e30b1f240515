"""The encoder families oto_hf prunes: one entry per module layout, and everything else follows from it.

An entry says where a family keeps the parts that structured pruning touches: the list of layers, each layer's
self-attention module, its query/key/value projections (separate, or one fused projection laid out as
(3, heads, head_size)), the attention output projection, and the two FFN projections (the input one holding
[input; gate] for a GLU FFN). From these entries oto_hf derives the zero-invariant groups and their costs
(`oto_hf.groups`), the cut (`oto_hf.compress`) and the compressed model classes (`modeling_oto`).

Adding a family that follows one of these layouts is one entry here (and its test parameters in
tests/families.py). Paths are attribute paths: `layers` from the base model, the others from one layer.

This file travels with every compressed checkpoint (``trust_remote_code=True``), so it imports only ``torch`` and
``transformers``, never ``oto_hf``.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn


def get_submodule(root: nn.Module, path: str) -> nn.Module | None:
    """`root`'s submodule at the dotted `path`, or None where it has none (e.g. an optional projection)."""
    module = root
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def _standard_attention_flops(attention: nn.Module, tokens: int, head_size: int, width: int | None = None) -> int:
    """One head's scores (Q·Kᵀ) and context (softmax·V) over `tokens` tokens: 2 · 2·t²·d (whatever the stream's
    `width`)."""
    return 4 * tokens * tokens * head_size


def _deberta_attention_flops(attention: nn.Module, tokens: int, head_size: int, width: int | None = None) -> int:
    """DeBERTa's disentangled attention adds, per relative term (content→position "c2p", position→content "p2c"),
    the head's projection of the 2·k relative-position embeddings (`width` channels wide; default: the module's)
    and its scores against them (k = the attention span: `position_buckets`, else `max_relative_positions`)."""
    flops = _standard_attention_flops(attention, tokens, head_size)
    if getattr(attention, "relative_attention", False):
        span = 2 * attention.pos_ebd_size
        hidden = width or attention.query_proj.in_features
        for term in ("c2p", "p2c"):
            if term in attention.pos_att_type:
                flops += 2 * span * hidden * head_size + 2 * tokens * span * head_size
    return flops


def _vision_tokens(config) -> int:
    """Tokens of a ViT-style model: one per patch, plus the class token (and DeiT's distillation token)."""
    patches = (config.image_size // config.patch_size) ** 2
    return patches + (2 if config.model_type.endswith("deit") else 1)


@dataclass(frozen=True)
class StreamMembers:
    """Modules that touch the residual stream (the hidden width), by what each does with a channel of it. Paths
    that a model does not have (another task head's, an optional projection) are skipped."""

    embeddings: tuple[str, ...] = ()  # nn.Embedding tables whose column c is channel c
    readers: tuple[str, ...] = ()  # nn.Linear layers that read the stream: input column c
    writers: tuple[str, ...] = ()  # nn.Linear layers that write it: output row c and bias c
    transforms: tuple[str, ...] = ()  # nn.Linear layers from the stream to the stream (an MLM head's): both
    norms: tuple[str, ...] = ()  # LayerNorms over the stream: weight c and bias c (another module there is skipped)
    vectors: tuple[str, ...] = ()  # parameters whose last axis is the stream (ViT's class and position embeddings)


@dataclass(frozen=True)
class HiddenStream:
    """Where a family's residual stream is read and written, for hidden-width pruning (one group per channel).

    Within a layer the readers are the family's Q/K/V and FFN input projections and the writers its attention and
    FFN output projections; `layer_norms` adds the layer's norms over the stream. `base` holds the members outside
    the layers (paths from the base model), `embeddings` the embedding tables and their norm, which belong to the
    stream unless the model has `embedding_projection` (ELECTRA with `embedding_size != hidden_size`: the embeddings
    then have their own width and the projection writes the stream). `heads` holds, per task head (a suffix of the
    stock class name), what the head adds (paths from the task model): a head that reads only the pooler's output
    adds nothing, since the pooler keeps its output width. A model that has one of the `unsupported` paths (from the
    base model: a part that mixes channels and is not described here) is refused.
    """

    layer_norms: tuple[str, ...]
    embeddings: StreamMembers
    base: StreamMembers = StreamMembers()
    embedding_projection: str | None = None
    heads: tuple[tuple[str, StreamMembers], ...] = ()
    unsupported: tuple[str, ...] = ()

    def head_members(self, class_name: str) -> StreamMembers:
        """What the task head of the stock class `class_name` adds to the stream's members."""
        return next((members for suffix, members in self.heads if class_name.endswith(suffix)), StreamMembers())


# A BERT-style masked / causal LM head: a stream-to-stream transform, its norm and a decoder (tied to the word
# embeddings by default, so the tie survives: both are the same tensor, cut once); ELECTRA's generator and
# discriminator heads read the stream into their own width.
_BERT_LM_HEAD = StreamMembers(
    transforms=("cls.predictions.transform.dense", "lm_head.dense"),
    norms=("cls.predictions.transform.LayerNorm", "lm_head.layer_norm"),
    readers=("cls.predictions.decoder", "lm_head.decoder", "generator_predictions.dense",
             "discriminator_predictions.dense"),
)

_BERT_HIDDEN = HiddenStream(
    layer_norms=("attention.output.LayerNorm", "output.LayerNorm"),
    embeddings=StreamMembers(
        embeddings=("embeddings.word_embeddings", "embeddings.position_embeddings",
                    "embeddings.token_type_embeddings", "embeddings.task_type_embeddings"),
        norms=("embeddings.LayerNorm",)),
    base=StreamMembers(readers=("pooler.dense",)),  # the pooler reads the stream; its output keeps its width
    embedding_projection="embeddings_project",
    heads=(
        ("ForQuestionAnswering", StreamMembers(readers=("qa_outputs",))),
        ("ForTokenClassification", StreamMembers(readers=("classifier",))),
        # RoBERTa's and ELECTRA's classification heads read the first token; BERT's reads the pooler
        ("ForSequenceClassification", StreamMembers(readers=("classifier.dense",))),
        # ELECTRA's sequence summary; the others read the pooler
        ("ForMultipleChoice", StreamMembers(readers=("sequence_summary.summary",))),
        ("ForMaskedLM", _BERT_LM_HEAD), ("ForCausalLM", _BERT_LM_HEAD), ("LMHeadModel", _BERT_LM_HEAD),
        ("ForPreTraining", _BERT_LM_HEAD),
    ),
)


_DISTILBERT_HIDDEN = HiddenStream(
    layer_norms=("sa_layer_norm", "output_layer_norm"),
    embeddings=StreamMembers(embeddings=("embeddings.word_embeddings", "embeddings.position_embeddings"),
                             norms=("embeddings.LayerNorm",)),
    heads=(
        ("ForMaskedLM", StreamMembers(transforms=("vocab_transform",), norms=("vocab_layer_norm",),
                                      readers=("vocab_projector",))),
        ("ForSequenceClassification", StreamMembers(readers=("pre_classifier",))),  # its output keeps its width
        ("ForMultipleChoice", StreamMembers(readers=("pre_classifier",))),
        ("ForTokenClassification", StreamMembers(readers=("classifier",))),
        ("ForQuestionAnswering", StreamMembers(readers=("qa_outputs",))),
    ),
)

_DEBERTA_HIDDEN = HiddenStream(
    layer_norms=("attention.output.LayerNorm", "output.LayerNorm"),
    embeddings=StreamMembers(
        embeddings=("embeddings.word_embeddings", "embeddings.position_embeddings",
                    "embeddings.token_type_embeddings"),
        norms=("embeddings.LayerNorm",)),
    # The relative-position table is read by the projections that read the stream (key/query, or the heads' own
    # position projections): its columns are the stream's channels, and so are its norm's entries.
    base=StreamMembers(embeddings=("encoder.rel_embeddings",), norms=("encoder.LayerNorm",)),
    embedding_projection="embeddings.embed_proj",
    heads=(
        ("ForMaskedLM", _BERT_LM_HEAD),
        ("ForSequenceClassification", StreamMembers(readers=("pooler.dense",))),  # DeBERTa's pooler: in the head
        ("ForMultipleChoice", StreamMembers(readers=("pooler.dense",))),
        ("ForTokenClassification", StreamMembers(readers=("classifier",))),
        ("ForQuestionAnswering", StreamMembers(readers=("qa_outputs",))),
    ),
    unsupported=("encoder.conv",),  # DeBERTa-v2's convolution beside the first layer
)

_MODERNBERT_HIDDEN = HiddenStream(
    layer_norms=("attn_norm", "mlp_norm"),  # pre-LN (layer 0 has no attention norm)
    embeddings=StreamMembers(embeddings=("embeddings.tok_embeddings",), norms=("embeddings.norm",)),
    base=StreamMembers(norms=("final_norm",)),
    heads=(
        # The MLM decoder is tied to the token embeddings: the head's transform and norm are the stream's.
        ("ForMaskedLM", StreamMembers(transforms=("head.dense",), norms=("head.norm",), readers=("decoder",))),
        # The other heads read the stream through the head's transform, whose output keeps its width.
        ("ForSequenceClassification", StreamMembers(readers=("head.dense",))),
        ("ForMultipleChoice", StreamMembers(readers=("head.dense",))),
        ("ForTokenClassification", StreamMembers(readers=("head.dense",))),
        ("ForQuestionAnswering", StreamMembers(readers=("head.dense",))),
    ),
)

_VIT_HIDDEN = HiddenStream(
    layer_norms=("layernorm_before", "layernorm_after"),
    # The patch projection writes the stream; the class (and DeiT's distillation), mask and position embeddings
    # are added to it.
    embeddings=StreamMembers(
        writers=("embeddings.patch_embeddings.projection",),
        vectors=("embeddings.cls_token", "embeddings.distillation_token", "embeddings.mask_token",
                 "embeddings.position_embeddings")),
    base=StreamMembers(norms=("layernorm",), readers=("pooler.dense",)),
    heads=(
        ("ForImageClassification", StreamMembers(readers=("classifier",))),
        ("ForImageClassificationWithTeacher", StreamMembers(readers=("cls_classifier", "distillation_classifier"))),
        ("ForMaskedImageModeling", StreamMembers(readers=("decoder.0",))),  # a 1×1 convolution over the channels
    ),
)


@dataclass(frozen=True)
class Family:
    """Where one module layout keeps its prunable parts (see the module docstring)."""

    name: str
    model_types: tuple[str, ...]
    layers: str
    attention: str
    qkv: tuple[str, ...]
    attention_output: str
    ffn_input: str
    ffn_output: str
    fused_qkv: bool = False
    glu: bool = False
    # Projections whose rows also belong to a head, where the model has them (DeBERTa's relative-position
    # projections when `share_att_key` is off). They project the relative-position table, not the tokens.
    head_extras: tuple[str, ...] = ()
    # The norms applied before the attention only and before the FFN only (pre-LN layouts), if any: a layer without
    # heads (without FFN neurons) never reads the first's (the second's) output.
    attention_norm: str | None = None
    ffn_norm: str | None = None
    # Attributes of the attention module: its head size, and those that hold its head count (updated when heads go).
    head_size_attribute: str = "attention_head_size"
    head_count_attributes: tuple[str, ...] = ("num_attention_heads", "all_head_size")
    # The config attribute that holds the FFN width (the head count is `num_attention_heads` in every family).
    width_attribute: str = "intermediate_size"
    # FLOPs of one head beyond its projections of the tokens, at `tokens` tokens (and a stream `width` channels wide).
    attention_flops: Callable[..., int] = _standard_attention_flops
    # The sequence length at which FLOPs are counted by default; None: oto_hf's text default (384).
    default_tokens: Callable | None = None
    # The Auto classes of this family's compressed task models ("AutoModel", …), where transformers has them.
    # Where the residual stream is read and written (hidden-width pruning); None: the hidden width is not pruned.
    hidden: HiddenStream | None = None
    auto_classes: tuple[str, ...] = field(default=(
        "AutoModel", "AutoModelForPreTraining", "AutoModelForCausalLM", "AutoModelForMaskedLM",
        "AutoModelForNextSentencePrediction", "AutoModelForSequenceClassification", "AutoModelForMultipleChoice",
        "AutoModelForTokenClassification", "AutoModelForQuestionAnswering"))

    def head_rows(self) -> tuple[str, ...]:
        """Every projection whose output rows are grouped by head (the fused one counts once)."""
        return self.qkv + self.head_extras

    @property
    def output_inside_attention(self) -> bool:
        """Whether the attention module applies the output projection itself (then it returns the projected
        output; otherwise the caller projects the per-head context it returns)."""
        return self.attention_output.startswith(self.attention + ".")


FAMILIES: tuple[Family, ...] = (
    Family(
        name="bert",
        model_types=("bert", "roberta", "xlm-roberta", "camembert", "electra", "data2vec-text", "ernie"),
        layers="encoder.layer",
        attention="attention.self",
        qkv=("attention.self.query", "attention.self.key", "attention.self.value"),
        attention_output="attention.output.dense",
        ffn_input="intermediate.dense",
        ffn_output="output.dense",
        hidden=_BERT_HIDDEN,
    ),
    Family(
        name="distilbert",
        model_types=("distilbert",),
        layers="transformer.layer",
        attention="attention",
        qkv=("attention.q_lin", "attention.k_lin", "attention.v_lin"),
        attention_output="attention.out_lin",
        ffn_input="ffn.lin1",
        ffn_output="ffn.lin2",
        head_count_attributes=("n_heads",),
        width_attribute="hidden_dim",
        hidden=_DISTILBERT_HIDDEN,
    ),
    Family(
        name="deberta-v2",
        model_types=("deberta-v2",),
        layers="encoder.layer",
        attention="attention.self",
        qkv=("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj"),
        head_extras=("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
        attention_output="attention.output.dense",
        ffn_input="intermediate.dense",
        ffn_output="output.dense",
        attention_flops=_deberta_attention_flops,
        hidden=_DEBERTA_HIDDEN,
    ),
    Family(
        name="modernbert",
        model_types=("modernbert",),
        layers="layers",
        attention="attn",
        qkv=("attn.Wqkv",),
        fused_qkv=True,
        attention_output="attn.Wo",
        ffn_input="mlp.Wi",
        ffn_output="mlp.Wo",
        glu=True,
        attention_norm="attn_norm",
        ffn_norm="mlp_norm",
        head_size_attribute="head_dim",
        head_count_attributes=(),
        hidden=_MODERNBERT_HIDDEN,
    ),
    Family(
        name="vit",
        model_types=("vit", "deit"),
        layers="layers",
        attention="attention",
        qkv=("attention.q_proj", "attention.k_proj", "attention.v_proj"),
        attention_output="attention.o_proj",
        ffn_input="mlp.fc1",
        ffn_output="mlp.fc2",
        attention_norm="layernorm_before",
        ffn_norm="layernorm_after",
        head_size_attribute="head_dim",
        head_count_attributes=("num_attention_heads",),
        default_tokens=_vision_tokens,
        hidden=_VIT_HIDDEN,
        auto_classes=("AutoModel", "AutoModelForImageClassification", "AutoModelForMaskedImageModeling"),
    ),
)

def stream_modules(family: Family, model: nn.Module, base: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(role, root, path) of every module of `model` (its body `base`) that the residual stream's channels own,
    each module once, in a fixed order: the base model's members, the embeddings (or the embedding projection),
    each layer's readers, writers and norms, then the task head's. Roles: "embedding", "reader", "writer",
    "transform", "norm", "vector" (see `StreamMembers`; a vector's "module" is the parameter). Paths the model lacks
    are skipped."""
    hidden = family.hidden
    parts = [(base, hidden.base)]
    if hidden.embedding_projection and get_submodule(base, hidden.embedding_projection) is not None:
        parts.append((base, StreamMembers(writers=(hidden.embedding_projection,))))
    else:
        parts.append((base, hidden.embeddings))
    in_layer = StreamMembers(readers=(*family.qkv, *family.head_extras, family.ffn_input),
                             writers=(family.attention_output, family.ffn_output), norms=hidden.layer_norms)
    parts += [(layer, in_layer) for layer in get_submodule(base, family.layers)]
    if model is not base:
        parts.append((model, hidden.head_members(getattr(type(model), "stock_class", type(model)).__name__)))
    found, seen = [], set()
    for root, part in parts:
        for role, paths in (("embedding", part.embeddings), ("reader", part.readers), ("writer", part.writers),
                            ("transform", part.transforms), ("norm", part.norms), ("vector", part.vectors)):
            for path in paths:
                module = get_submodule(root, path)
                if role == "norm" and not isinstance(module, nn.LayerNorm):
                    continue  # a pre-LN layout's missing norm (nn.Identity): nothing to own
                if module is not None and id(module) not in seen:
                    seen.add(id(module))
                    found.append((role, root, path))
    return found


FAMILY_OF_MODEL_TYPE: dict[str, Family] = {model_type: f for f in FAMILIES for model_type in f.model_types}

__all__ = ["FAMILIES", "FAMILY_OF_MODEL_TYPE", "Family", "HiddenStream", "StreamMembers", "get_submodule",
           "stream_modules"]
