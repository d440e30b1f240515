"""oto-hf: Only-Train-Once structured pruning for Hugging Face encoders.

One training run with `HSPG` drives whole attention heads and FFN neurons (zero-invariant groups) to exactly
zero; `compress` then cuts them out, giving a physically smaller model with the same outputs. Supported: the
families of `oto_hf.architectures` (BERT and its layout: RoBERTa, XLM-R, CamemBERT, ELECTRA, …; DistilBERT;
DeBERTa-v2/v3; ModernBERT; ViT/DeiT), every task head transformers gives them.

    groups = oto_hf.zero_invariant_groups(model)
    optimizer = oto_hf.HSPG(model.parameters(), groups, lr=3e-5, target=0.5, prune_steps=1000)
    ...train...
    small = oto_hf.compress(model)
    small.save_pretrained("out")   # reload with AutoModelFor*.from_pretrained after `import oto_hf`,
                                   # or with trust_remote_code=True without oto_hf
"""

import transformers
from transformers import AutoConfig

from .architectures import FAMILIES
from .compress import compress, kept_indices
from .configuration_oto import CONFIG_CLASSES, OTOBertConfig
from . import model_card
from .distillation import DistillationTrainer, distillation_loss, hidden_state_loss
from .groups import (GroupedTensor, UnsupportedModelError, ZeroInvariantGroups, supported_model_types,
                     zero_invariant_groups)
from .hspg import HSPG
from . import selection
from .selection import SelectionPolicy
from .settings import OTOSettings
from .modeling_oto import (
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


__version__ = "0.3.0"


def _register_auto_classes() -> None:
    """Make `AutoConfig` / `AutoModel*` resolve the compressed model types ("oto_bert", "oto_roberta", …) once
    oto_hf is imported."""
    for model_type, config_class in CONFIG_CLASSES.items():
        AutoConfig.register(model_type, config_class, exist_ok=True)
        for auto_name, model_class in AUTO_CLASSES[model_type].items():
            getattr(transformers, auto_name).register(config_class, model_class, exist_ok=True)


_register_auto_classes()

__all__ = [
    "DistillationTrainer",
    "FAMILIES",
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
    "OTOSettings",
    "OTOTrainer",
    "OTOTrainingArguments",
    "UnsupportedModelError",
    "ZeroInvariantGroups",
    "compress",
    "distillation_loss",
    "hidden_state_loss",
    "kept_indices",
    "model_card",
    "model_stats",
    "selection",
    "SelectionPolicy",
    "supported_model_types",
    "zero_invariant_groups",
]
