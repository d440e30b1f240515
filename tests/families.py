"""Test parameters of every supported model type: a tiny random-weight config and inputs for it.

No pretrained weights of these families can be downloaded on the machines that run the tests (the real-weight
checks use the packaged all-MiniLM-L6-v2, a BERT), so every family is proven on random weights from its config.
`test_every_supported_model_type_has_test_parameters` keeps this table and `oto_hf.architectures` in step: a model
type cannot be listed as supported without passing the suite.
"""

from pathlib import Path

import torch
import transformers

from oto_hf.modeling_oto import AUTO_CLASSES

# ../shared beside the checkout: the data the tests read.
SHARED = Path(__file__).resolve().parents[2] / "shared"


# hidden 32, 4 heads of 8, FFN 24 (24 = 3 layers' worth of distinct widths), 3 layers, large init so that outputs
# depend on the input; no dropout.
_COMMON = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=24, vocab_size=97,
               max_position_embeddings=64, initializer_range=0.3, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0)
_VISION = dict(image_size=16, patch_size=4, num_channels=3, encoder_stride=4)  # stride = patch: masked image modeling


def _config(model_type: str, **overrides) -> transformers.PreTrainedConfig:
    values = dict(_COMMON)
    if model_type == "distilbert":
        values = dict(dim=32, n_layers=3, n_heads=4, hidden_dim=24, vocab_size=97, max_position_embeddings=64,
                      initializer_range=0.3, dropout=0.0, attention_dropout=0.0)
    elif model_type == "deberta-v2":
        # Relative attention with unshared position projections: a head also owns its rows of those.
        values.update(relative_attention=True, pos_att_type=["p2c", "c2p"], share_att_key=False, position_buckets=8,
                      max_relative_positions=16)
    elif model_type == "modernbert":
        # Alternating local (window 4) and global attention, biases on (the layout must cut them too).
        values = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=24,
                      vocab_size=97, max_position_embeddings=64, initializer_range=0.3, global_attn_every_n_layers=2,
                      local_attention=4, attention_bias=True, mlp_bias=True, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2, cls_token_id=1, sep_token_id=2, embedding_dropout=0.0,
                      mlp_dropout=0.0, attention_dropout=0.0)
    elif model_type in ("vit", "deit"):
        values = {k: v for k, v in values.items() if k not in ("vocab_size", "max_position_embeddings")} | _VISION
    elif model_type == "electra":
        values.update(embedding_size=16)  # a generator-style projection between embeddings and encoder
    values.update(overrides)
    return transformers.AutoConfig.for_model(model_type, **values)


MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "data2vec-text", "ernie", "distilbert",
               "deberta-v2", "modernbert", "vit", "deit")
VISION = ("vit", "deit")
# The families' attention implementations (DeBERTa-v2 has no sdpa path).
ATTENTION = {t: ("eager",) if t == "deberta-v2" else ("eager", "sdpa") for t in MODEL_TYPES}


def tiny_config(model_type: str, **overrides) -> transformers.PreTrainedConfig:
    return _config(model_type, **overrides)


def task_heads(model_type: str) -> dict[str, str]:
    """Auto class name -> stock class name of every task head oto_hf compresses for `model_type`."""
    return {auto: cls.__bases__[1].__name__ for auto, cls in AUTO_CLASSES["oto_" + model_type].items()}


def all_heads() -> list[tuple[str, str]]:
    """(model type, stock class name) of every compressed class, each once."""
    seen = {}
    for model_type in MODEL_TYPES:
        for name in task_heads(model_type).values():
            seen.setdefault(name, model_type)
    return [(t, name) for name, t in seen.items()]


def build(model_type: str, class_name: str, attn: str = "eager", **overrides):
    """A tiny random model of the stock class `class_name`, in eval mode."""
    decoder = "CausalLM" in class_name or class_name.endswith("LMHeadModel")
    config = tiny_config(model_type, is_decoder=decoder, **overrides)
    config._attn_implementation = attn
    if "ForMultipleChoice" in class_name or "ForQuestionAnswering" in class_name:
        config.num_labels = 2
    return getattr(transformers, class_name)(config).eval()


def inputs(model_type: str, class_name: str = "", batch: int = 2, length: int = 12, seed: int = 0) -> dict:
    """Inputs for a model of `model_type`: a padded batch of token ids (the second row padded after 7 tokens), or
    random pixels (every third patch masked for a masked-image-modeling head, so that its mask token is used); with
    the extra axis a multiple-choice head wants."""
    generator = torch.Generator().manual_seed(seed)
    if model_type in VISION:
        pixels = {"pixel_values": torch.randn(batch, 3, 16, 16, generator=generator)}
        if "MaskedImageModeling" in class_name:
            masked = torch.zeros(batch, 16, dtype=torch.bool)  # 16 patches of 4 × 4
            masked[:, ::3] = True
            pixels["bool_masked_pos"] = masked
        return pixels
    ids = torch.randint(5, 97, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[1:, 7:] = 0
    ids[1:, 7:] = 0
    if "ForMultipleChoice" in class_name:
        return {"input_ids": ids.unsqueeze(0).expand(2, -1, -1).contiguous(),
                "attention_mask": mask.unsqueeze(0).expand(2, -1, -1).contiguous()}
    return {"input_ids": ids, "attention_mask": mask}


def tokens(model_type: str) -> int:
    """The sequence length `inputs` gives (the patch count plus class tokens for vision models)."""
    return {"vit": 17, "deit": 18}.get(model_type, 12)


def classifier(model_type: str) -> str:
    """The stock classifier class of `model_type` (sequence classification, or image classification)."""
    heads = task_heads(model_type)
    return heads.get("AutoModelForSequenceClassification") or heads["AutoModelForImageClassification"]


def run_python(code: str, cwd) -> str:
    """Run `code` in a fresh offline Python process (this interpreter) in `cwd`; its stdout, or fail with its output."""
    import subprocess
    import sys
    import textwrap

    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(cwd)})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def compressed_model(model_type: str, class_name: str, attn: str = "eager", seed: int = 0, hidden: bool = True,
                     **overrides):
    """A compressed model of the stock class `class_name` with random groups cut, layer 1 left without a head and
    layer 2 without an FFN neuron (the heterogeneous and empty layers a compressed model must handle), and with
    `hidden` a quarter of the residual stream's channels (the stream's norms live in the group-sparse model first,
    as HSPG trains it): the general case, which the conformance suite runs."""
    import oto_hf
    from oto_hf.groups import HEAD, HIDDEN, NEURON

    torch.manual_seed(seed)
    model = build(model_type, class_name, attn, **overrides)
    groups = oto_hf.zero_invariant_groups(model, prune_hidden=hidden)
    zero = (torch.rand(groups.num_groups) < 0.3) & (groups.kinds != HIDDEN)
    channels = torch.nonzero(groups.kinds == HIDDEN).flatten()
    zero[channels[torch.randperm(len(channels))[: len(channels) // 4]]] = True
    groups.zero_(zero | ((groups.layers == 1) & (groups.kinds == HEAD)) | ((groups.layers == 2) & (groups.kinds == NEURON)))
    groups.track_live_width()
    return oto_hf.compress(model)
