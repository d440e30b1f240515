#!/usr/bin/env python
"""Text classification end to end (GLUE or your own files): train an encoder with HSPG, prune, compress, evaluate,
report.

    python run_glue.py                                    # configs/sst2_quickstart.yaml: SST-2, ~6 min on 2 CPU cores
    python run_glue.py configs/minilm_glue_p4.yaml --task_name rte --output_dir runs/rte   # RTE (sentence pairs)
    python run_glue.py --task_name rte --oto_target 0.7 --output_dir runs/rte70   # options override the quickstart
    python run_glue.py --train_file train.csv --validation_file dev.csv --text_columns review --output_dir runs/mine
    python run_glue.py --help                             # every option

`--task_name` takes a GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli): GLUE's own files from a local
folder ($OTO_GLUE_DIR or ../shared/data/glue) when they are there, else the Hub's nyu-mll/glue. Your own CSV / TSV /
JSON files need one or two text columns and a label column (found by name, or --text_columns / --label_column); a
label with a fraction in it makes the task a regression. Every row is checked before training starts.

The dense baseline and the dense-start + teacher recipe are two runs, as with run_squad.py:

    python run_glue.py --dense --output_dir runs/sst2_dense                          # plain AdamW, no pruning
    python run_glue.py --model_name_or_path runs/sst2_dense/model --teacher_model_name_or_path runs/sst2_dense/model \\
        --output_dir runs/sst2_oto50_from_dense

Writes into --output_dir: checkpoints while training (an interrupted run resumes from the last one when started
again), `compressed_model/` (the pruned model with its model card, loadable with `from_pretrained`),
`eval_predictions.json` (its label for each evaluation example, in order), `report.json`, `report.md` and `plots/`.
The report is written last: a folder with a report.json holds a finished run. With --dense, `model/` (the fine-tuned
full-size model) instead of `compressed_model/`.

The task (data options, rows checked, accuracy/F1/Matthews/correlations) is
`oto_hf.tasks.classification.ClassificationTask`; the job is `oto_hf.runner.run`, the same for every task.
"""

import sys

from oto_hf import runner
from oto_hf.tasks import get_task


TASK = get_task("classification")


def parse_arguments(argv: list[str]):
    """(model, data, training, run) arguments; without a config first, configs/sst2_quickstart.yaml is the config."""
    return runner.parse_arguments(TASK, argv)


def main(argv: list[str] | None = None) -> dict:
    return runner.run(TASK, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    runner.main_guard(main, TASK.script)
