#!/usr/bin/env python
"""SQuAD v1.1 end to end: train an encoder with HSPG, prune, compress, evaluate, report.

    python run_squad.py                                   # configs/quickstart.yaml: ~15 min on 2 CPU cores, offline
    python run_squad.py configs/minilm_squad_p1.yaml      # benchmark protocol P1 (CPU, tens of minutes)
    python run_squad.py configs/bert_base_squad.yaml      # the paper's bert-base experiment (GPU)
    python run_squad.py configs/minilm_squad_p1.yaml --oto_target 0.3 --output_dir runs/p1_oto30  # config + overrides
    python run_squad.py --oto_target 0.5 --output_dir runs/q50   # options alone override the quickstart config
    python run_squad.py --help                            # every option

The dense-start + teacher recipe (the best OTO50 of benchmark P1; twice the training compute) is two runs:

    python run_squad.py configs/minilm_squad_p1.yaml --dense --output_dir runs/dense    # plain AdamW, no pruning
    python run_squad.py configs/minilm_squad_p1.yaml --model_name_or_path runs/dense/model \
        --teacher_model_name_or_path runs/dense/model --output_dir runs/oto50_from_dense

Writes into --output_dir: checkpoints while training (an interrupted run resumes from the last one when started
again), `compressed_model/` (the pruned model, loadable with `from_pretrained`), `eval_predictions.json` (its answer to each
dev question), `report.json`, `report.md` and `plots/`. The report is written last: a folder with a report.json holds
a finished run. With --dense, `model/` (the fine-tuned full-size model) instead of `compressed_model/`.

The task (data options, windows, post-processing, EM/F1) is `oto_hf.tasks.squad.SquadTask`; the job is
`oto_hf.runner.run`, the same for every task.
"""

import sys

from oto_hf import runner
from oto_hf.tasks import get_task


TASK = get_task("squad")


def parse_arguments(argv: list[str]):
    """(model, data, training, run) arguments; without a config first, configs/quickstart.yaml is the config."""
    return runner.parse_arguments(TASK, argv)


def main(argv: list[str] | None = None) -> dict:
    return runner.run(TASK, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    runner.main_guard(main, TASK.script)
