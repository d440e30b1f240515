"""Run by tests/test_conformance.py under `torchrun --nproc_per_node 2`: the plain `Trainer` fine-tunes compressed
models that have a layer without heads (and one without FFN neurons), with DDP on CPU (gloo) and gradient
checkpointing on, so that DDP runs with `find_unused_parameters=False`: it fails if such a layer holds a parameter
that nothing reads. One model per layout where a headless layer used to leave parameters behind (the separate Q/K/V
of BERT, DeBERTa's relative-position projections, ModernBERT's and ViT's norm before the attention). Each rank
writes what it saw, so the test can check that training happened and that the ranks agree."""

import sys
from pathlib import Path

import torch
import transformers
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import families  # noqa: E402
from conftest import finish_rank  # noqa: E402

MODELS = (("bert", "BertForSequenceClassification"), ("deberta-v2", "DebertaV2ForSequenceClassification"),
          ("modernbert", "ModernBertForSequenceClassification"), ("vit", "ViTForImageClassification"))


def dataset(model_type: str, n: int = 16) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    inputs = families.inputs(model_type, batch=n, length=10)
    columns = {k: v.tolist() for k, v in inputs.items()}
    columns["labels"] = torch.randint(0, 2, (n,), generator=generator).tolist()
    return Dataset.from_dict(columns)


def main(output_dir: str) -> None:
    record = {}
    for model_type, class_name in MODELS:
        model = families.compressed_model(model_type, class_name).train()
        assert model.config.num_attention_heads_per_layer[1] == 0
        args = transformers.TrainingArguments(
            output_dir=str(Path(output_dir) / model_type), per_device_train_batch_size=4, max_steps=2,
            learning_rate=1e-3, use_cpu=True, ddp_backend="gloo", report_to=[], save_strategy="no", seed=0,
            disable_tqdm=True, gradient_checkpointing=True, logging_steps=1,
        )
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset(model_type))
        trainer.train()
        wrapped = trainer.model_wrapped
        trained = trainer.model
        record[model_type] = {
            "ddp": isinstance(wrapped, torch.nn.parallel.DistributedDataParallel),
            "find_unused_parameters": getattr(wrapped, "find_unused_parameters", None),
            "gradient_checkpointing": trained.is_gradient_checkpointing,
            "steps": trainer.state.global_step,
            "changed": sorted(n for n, p in trained.named_parameters()
                              if p.numel() and not torch.equal(p.detach(), before[n])),
            "parameters": sorted(n for n, p in trained.named_parameters() if p.numel()),
            "checksum": float(sum(p.detach().double().abs().sum() for p in trained.parameters())),
        }
    finish_rank(output_dir, record)


if __name__ == "__main__":
    main(sys.argv[1])
