"""oto-hf: Only-Train-Once structured pruning for Hugging Face BERT models.

One training run with `HSPG` drives whole attention heads and FFN neurons (zero-invariant groups) to exactly
zero; `compress` then cuts them out, giving a physically smaller model with the same outputs.

    groups = oto_hf.zero_invariant_groups(model)
    optimizer = oto_hf.HSPG(model.parameters(), groups, lr=3e-5, target=0.5, prune_steps=1000)
    ...train...
    small = oto_hf.compress(model)
    small.save_pretrained("out")   # reload with AutoModelFor*.from_pretrained after `import oto_hf`,
                                   # or with trust_remote_code=True without oto_hf
"""

from transformers import AutoConfig

from .compress import compress, kept_indices
from .configuration_oto_bert import OTOBertConfig
from .distillation import DistillationTrainer, distillation_loss, hidden_state_loss
from .groups import GroupedTensor, UnsupportedModelError, ZeroInvariantGroups, zero_invariant_groups
from .hspg import HSPG
from .modeling_oto_bert import (
    AUTO_CLASSES,
    OTOBertForMaskedLM,
    OTOBertForMultipleChoice,
    OTOBertForNextSentencePrediction,
    OTOBertForPreTraining,
    OTOBertForQuestionAnswering,
    OTOBertForSequenceClassification,
    OTOBertForTokenClassification,
    OTOBertLMHeadModel,
    OTOBertModel,
)
from .stats import ModelStats, model_stats
from .trainer import OTOTrainer, OTOTrainingArguments


__version__ = "0.1.0"


def _register_auto_classes() -> None:
    """Make `AutoConfig` / `AutoModel*` resolve model_type "oto_bert" once oto_hf is imported."""
    import transformers

    AutoConfig.register(OTOBertConfig.model_type, OTOBertConfig, exist_ok=True)
    for auto_name, model_class in AUTO_CLASSES.items():
        getattr(transformers, auto_name).register(OTOBertConfig, model_class, exist_ok=True)


_register_auto_classes()

__all__ = [
    "DistillationTrainer",
    "HSPG",
    "GroupedTensor",
    "ModelStats",
    "OTOBertConfig",
    "OTOBertForMaskedLM",
    "OTOBertForMultipleChoice",
    "OTOBertForNextSentencePrediction",
    "OTOBertForPreTraining",
    "OTOBertForQuestionAnswering",
    "OTOBertForSequenceClassification",
    "OTOBertForTokenClassification",
    "OTOBertLMHeadModel",
    "OTOBertModel",
    "OTOTrainer",
    "OTOTrainingArguments",
    "UnsupportedModelError",
    "ZeroInvariantGroups",
    "compress",
    "distillation_loss",
    "hidden_state_loss",
    "kept_indices",
    "model_stats",
    "zero_invariant_groups",
]
