"""The job runner's parts that every task shares (the jobs end to end: tests/test_run_glue.py, test_run_squad.py)."""

import pytest
import torch
from transformers import BertForSequenceClassification, TrainingArguments

from conftest import tiny_bert_config
from oto_hf.runner import train_dense


def test_the_dense_path_gives_the_whole_batch_loss_under_gradient_accumulation(tmp_path):
    generator = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(5, 90, (8,), generator=generator).tolist(), "labels": i % 2} for i in range(8)]

    def collate(batch):
        return {"input_ids": torch.tensor([b["input_ids"] for b in batch]),
                "labels": torch.tensor([b["labels"] for b in batch])}

    losses = []
    for batch, accumulation in ((8, 1), (2, 4)):
        torch.manual_seed(0)
        args = TrainingArguments(str(tmp_path / f"ga{accumulation}"), per_device_train_batch_size=batch,
                                 gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=0.0,
                                 use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, seed=0)
        _, result = train_dense(BertForSequenceClassification(tiny_bert_config()), args,
                                {"train_dataset": data, "data_collator": collate}, tokenizer=None, fresh=True)
        losses.append(result.training_loss)
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)  # not 4 times as large
