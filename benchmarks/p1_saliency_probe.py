"""P1 side probe: how much does OTO's first pruning choice depend on the training seed, and on how the saliency
average starts?

OTO50 at seed 1 scored 4.4 F1 below seed 0 on the full dev set and kept a different layout. Its groups are chosen
from a running average of |x_gᵀ∇_g| (decay 0.99) that starts at the first step's score, so at step 55, where P1's
first pruning period chooses 1/4 of the target, that one batch (scored through a QA head that is still random) holds
0.99^55 = 58% of the average. This probe trains oto50 (the P1 YAML, `--oto_layer_floor 0`, as oto50 ran) for each seed
up to that first choice, and compares the groups it marks with those the zero-started average
(`--oto_saliency_zero_init`) would mark from the same run: the two averages differ by exactly decay^(k+1)·s0 (s0 the
first step's scores) while no group is pruned yet, so one run per seed gives both choices.

Agreement between two seeds' choices is the Jaccard index |A ∩ B| / |A ∪ B| of their redundant sets, in FLOPs
(heads and neurons weighted by their cost) and in heads alone.

    python benchmarks/p1_saliency_probe.py --seeds 0 1 2 --out benchmarks/results/p1_probe/saliency_start.json
"""

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import p1_quality as p1  # noqa: E402  (sets threads, offline mode, paths)
import torch  # noqa: E402
from transformers import AutoModelForQuestionAnswering, TrainerCallback, default_data_collator, set_seed  # noqa: E402

import oto_hf  # noqa: E402
import run_squad  # noqa: E402
from oto_hf.groups import HEAD  # noqa: E402


class FirstChoice(TrainerCallback):
    """Keeps the first step's saliency scores and, right after the first period's choice, the running average and
    the marked groups; then stops training."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.s0 = self.average = self.chosen = None

    def on_step_end(self, args, state, control, **kwargs):
        hspg = self.trainer.hspg
        if state.global_step == 1:
            self.s0 = hspg.hspg_state["taylor"].clone()
        if state.global_step == hspg.half_space_start + 1:  # the step that chose the first period's groups
            self.average = hspg.hspg_state["taylor"].clone()
            self.chosen = hspg.hspg_state["redundant"].clone()
            control.should_training_stop = True
        return control


def choose_with(hspg, average: torch.Tensor) -> torch.Tensor:
    """The groups the first period marks from saliency average `average` (nothing pruned yet)."""
    state = hspg.hspg_state
    saved = {k: state[k].clone() for k in ("taylor", "redundant", "zero")}
    state["taylor"] = average.clone()
    state["zero"] = torch.zeros_like(saved["zero"])
    hspg._choose_redundant(0, torch.zeros_like(average))
    chosen = state["redundant"].clone()
    state.update(saved)
    return chosen


def run_seed(seed: int, work: Path) -> tuple[dict, "oto_hf.ZeroInvariantGroups"]:
    """The first choice of oto50 at `seed` (as run, and from the zero-started average), and the model's groups."""
    # oto50's settings with the seed given last (the last --seed wins), so any seed works, not only SEEDS'.
    argv = p1.oto_argv(p1.Ctx(smoke=False), "oto50", work / f"seed{seed}") + list(p1.seed_option(seed))
    model_args, data_args, train_args, _ = run_squad.parse_arguments(argv)
    data = p1.load_data(model_args, data_args)
    set_seed(train_args.seed)  # seeds the new QA head, as run_squad.main does
    model = AutoModelForQuestionAnswering.from_pretrained(data["model_path"])
    trainer = oto_hf.OTOTrainer(model=model, args=train_args, train_dataset=data["train_features"],
                                processing_class=data["tokenizer"], data_collator=default_data_collator)
    probe = FirstChoice(trainer)
    trainer.add_callback(probe)
    t0 = time.perf_counter()
    trainer.train()
    hspg = trainer.hspg
    k = hspg.half_space_start
    zero_started = probe.average - hspg.taylor_decay ** (k + 1) * probe.s0
    first_started = choose_with(hspg, probe.average)
    if not torch.equal(first_started, probe.chosen):
        raise RuntimeError("re-choosing from the run's own average does not give the run's choice")
    return {"seed": seed, "choice_step": k, "first_step_weight": hspg.taylor_decay ** k,
            # indices of the groups chosen (group order of oto_hf.zero_invariant_groups)
            "chosen": {"first_step_start": indices(probe.chosen),
                       "zero_start": indices(choose_with(hspg, zero_started))},
            "wall_s": time.perf_counter() - t0}, hspg.groups


def indices(chosen: torch.Tensor) -> list[int]:
    return torch.nonzero(chosen).flatten().tolist()


def mask(chosen: list[int], num_groups: int) -> torch.Tensor:
    out = torch.zeros(num_groups, dtype=torch.bool)
    out[chosen] = True
    return out


def jaccard(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> float:
    return float(weight[a & b].sum() / weight[a | b].sum())


def heads_per_layer(chosen: torch.Tensor, groups) -> list[int]:
    """Heads each layer gives up in this choice."""
    heads = chosen & (groups.kinds == HEAD)
    return torch.bincount(groups.layers[heads], minlength=groups.num_layers).tolist()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=p1.REPO_ROOT / "benchmarks/results/p1_probe/saliency_start.json")
    p.add_argument("--work", type=Path, default=p1.REPO_ROOT / "benchmarks/results/tmp/saliency_probe")
    args = p.parse_args(argv)
    runs, groups = [], None
    for seed in args.seeds:
        run, groups = run_seed(seed, args.work)
        runs.append(run)
        p1.log(f"seed {seed}: chosen at step {run['choice_step']} in {run['wall_s']:.0f} s")
    flops = groups.costs("flops", 384).double()
    heads = (groups.kinds == HEAD).double()
    summary = {}
    for start in ("first_step_start", "zero_start"):
        chosen = {r["seed"]: mask(r["chosen"][start], groups.num_groups) for r in runs}
        pairs = {f"{a}-{b}": {"jaccard_flops": jaccard(chosen[a], chosen[b], flops),
                              "jaccard_heads": jaccard(chosen[a], chosen[b], heads)}
                 for a, b in itertools.combinations(sorted(chosen), 2)}
        summary[start] = {"pairs": pairs,
                          "mean_jaccard_flops": sum(v["jaccard_flops"] for v in pairs.values()) / max(len(pairs), 1),
                          "mean_jaccard_heads": sum(v["jaccard_heads"] for v in pairs.values()) / max(len(pairs), 1),
                          "heads_removed_per_layer": {s: heads_per_layer(c, groups) for s, c in chosen.items()}}
        p1.log(f"{start}: mean Jaccard across seeds {summary[start]['mean_jaccard_flops']:.3f} (FLOPs), "
               f"{summary[start]['mean_jaccard_heads']:.3f} (heads); heads removed per layer "
               f"{summary[start]['heads_removed_per_layer']}")
    for r in runs:
        c = {k: mask(v, groups.num_groups) for k, v in r["chosen"].items()}
        r["first_vs_zero_start_jaccard_flops"] = jaccard(c["first_step_start"], c["zero_start"], flops)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python benchmarks/p1_saliency_probe.py --seeds "
                                    + " ".join(map(str, args.seeds)), "summary": summary, "runs": runs,
                                    "environment": p1.environment()}, indent=1) + "\n")
    p1.log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
