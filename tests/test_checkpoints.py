"""Checkpoints: a rerun resumes from the last whole one, and a full disk is named as such."""

import errno
import json

import pytest
import torch
from transformers import BertForSequenceClassification, TrainerCallback

from conftest import tiny_bert_config
from oto_hf import OTOTrainer, OTOTrainingArguments
from oto_hf.checkpoints import checkpoint_problem, last_complete_checkpoint


def examples(n=16):
    generator = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(5, 90, (8,), generator=generator).tolist(), "labels": i % 2} for i in range(n)]


def collate(batch):
    return {"input_ids": torch.tensor([b["input_ids"] for b in batch]), "labels": torch.tensor([b["labels"] for b in batch])}


class FirstStep(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        self.step = state.global_step


def trainer(output_dir, max_steps=4, data=None, **overrides):
    torch.manual_seed(0)
    settings = dict(output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=max_steps,
                    save_strategy="steps", save_steps=2, use_cpu=True, report_to=[], disable_tqdm=True, oto_target=0.3,
                    oto_half_space_start=0.0, oto_prune_fraction=0.5, oto_num_periods=1)
    args = OTOTrainingArguments(**{**settings, **overrides})
    first = FirstStep()
    return OTOTrainer(model=BertForSequenceClassification(tiny_bert_config()), args=args,
                      train_dataset=examples() if data is None else data,
                      data_collator=collate, callbacks=[first]), first


def test_a_torn_checkpoint_is_skipped_and_the_last_whole_one_resumed(tmp_path):
    run, _ = trainer(tmp_path)
    run.train()
    assert checkpoint_problem(tmp_path / "checkpoint-4") is None
    (tmp_path / "checkpoint-4" / "trainer_state.json").unlink()  # killed while writing checkpoint-4
    assert "no trainer_state.json" in checkpoint_problem(tmp_path / "checkpoint-4")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")

    rerun, first = trainer(tmp_path)
    rerun.train(resume_from_checkpoint=True)
    assert first.step == 2 and rerun.state.global_step == 4
    assert checkpoint_problem(tmp_path / "checkpoint-4") is None  # written again, whole

    (tmp_path / "checkpoint-4" / "trainer_state.json").unlink()
    with pytest.raises(ValueError, match="Cannot resume from .*checkpoint-4: it has no trainer_state.json"):
        trainer(tmp_path)[0].train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{")  # and one that is cut short
    assert "cannot be read" in checkpoint_problem(tmp_path / "checkpoint-2")


def test_a_full_disk_is_named_and_leaves_no_torn_checkpoint(tmp_path, monkeypatch):
    import oto_hf.checkpoints

    run, _ = trainer(tmp_path, max_steps=2)
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . basic_ios::clear: iostream error")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    usage = oto_hf.checkpoints.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(oto_hf.checkpoints.shutil, "disk_usage", lambda path: usage._replace(free=3 * 2**20))
    with pytest.raises(OSError, match=r"No space left on the disk holding .*checkpoint-2 \(3 MiB free\)") as caught:
        run.train()
    assert caught.value.errno == errno.ENOSPC
    assert not (tmp_path / "checkpoint-2").exists()

    # With room on the disk, the error is not blamed on it.
    monkeypatch.setattr(oto_hf.checkpoints.shutil, "disk_usage", lambda path: usage._replace(free=50 * 2**30))
    with pytest.raises(RuntimeError, match="iostream error"):
        trainer(tmp_path / "again", max_steps=2)[0].train()


def test_resuming_with_other_settings_model_data_or_seed_is_refused_with_what_differs(tmp_path):
    run, _ = trainer(tmp_path, max_steps=2)
    run.train()
    recorded = json.loads((tmp_path / "checkpoint-2" / "oto_run.json").read_text())
    assert recorded["oto_settings"]["oto_target"] == 0.3 and recorded["train_data"]["examples"] == 16
    with pytest.raises(ValueError, match=r"other settings(.|\n)*oto_target: 0.3 in the checkpoint, 0.7 now(.|\n)*"
                                         r"Start fresh"):
        trainer(tmp_path, max_steps=2, oto_target=0.7)[0].train(resume_from_checkpoint=True)
    other_data = examples(20)
    with pytest.raises(ValueError, match=r"train data: .*'examples': 16.* in the checkpoint, .*'examples': 20"):
        trainer(tmp_path, max_steps=2, data=other_data)[0].train(resume_from_checkpoint=True)
    with pytest.raises(ValueError, match=r"seed: 42 in the checkpoint, 7 now"):
        trainer(tmp_path, max_steps=2, seed=7)[0].train(resume_from_checkpoint=True)
    same, first = trainer(tmp_path, max_steps=2)  # the same run resumes (here: nothing left to train)
    same.train(resume_from_checkpoint=True)
    assert first.step == 2
