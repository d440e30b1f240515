"""Run by tests/test_trainer.py under `torchrun --nproc_per_node 2`: a short OTOTrainer run with DDP on CPU (gloo).
Each rank writes which groups are zero and a checksum of its weights, so the test can check that ranks agree."""

import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import BertForQuestionAnswering

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import finish_rank, tiny_bert_config  # noqa: E402

import oto_hf  # noqa: E402
from transformers import TrainerCallback  # noqa: E402


class StepChecksums(TrainerCallback):
    """Per step, a checksum of the gradients the optimizer is given (after DDP's all-reduce and clipping) and of the
    weights it leaves: if the ranks ever disagree, the first step and side (gradients or update) where they part
    say whether communication or the optimizer step is rank-asymmetric."""

    def __init__(self):
        self.grads, self.weights = [], []

    @staticmethod
    def _sum(model, of):
        return float(sum(of(p).double().abs().sum() for p in model.parameters() if of(p) is not None))

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append(self._sum(model, lambda p: p.grad))

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.weights.append(self._sum(model, lambda p: p.detach()))


def main(output_dir: str) -> None:
    torch.manual_seed(0)
    model = BertForQuestionAnswering(tiny_bert_config(hidden_dropout_prob=0.1))
    g = torch.Generator().manual_seed(0)
    n, seq = 64, 16
    ids = torch.randint(0, 97, (n, seq), generator=g)
    start = torch.randint(0, seq, (n,), generator=g)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "start_positions": start.tolist(),
                              "end_positions": start.clamp(max=seq - 1).tolist()})
    args = oto_hf.OTOTrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=4, max_steps=16, learning_rate=1e-3, use_cpu=True,
        ddp_backend="gloo", report_to=[], save_strategy="no", logging_steps=4, seed=0, disable_tqdm=True,
        oto_target=0.4, oto_seq_len=seq,
    )
    checksums = StepChecksums()
    trainer = oto_hf.OTOTrainer(model=model, args=args, train_dataset=data, callbacks=[checksums])
    trainer.train()
    rank = trainer.args.process_index
    groups = trainer.oto_groups
    zero = groups.is_zero()
    record = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "zero_groups": zero.nonzero().flatten().tolist(),
        "weights_checksum": float(sum(p.detach().double().abs().sum() for p in trainer.model.parameters())),
        "grad_checksums": checksums.grads,
        "weight_checksums": checksums.weights,
        "flops_removed": float(groups.costs("flops", seq)[zero].sum()) / groups.total_cost("flops", seq),
    }
    finish_rank(output_dir, record)


if __name__ == "__main__":
    main(sys.argv[1])
