"""P1 side probe: which saliency criterion should HSPG's target mode use to choose the groups it removes?

A full P1 run takes ~35 min here, so criteria are compared one-shot first: the dense P1 model
(benchmarks/results/p1_lr<lr>/dense/model) gets per-group statistics over `--batches` training batches, each criterion
picks groups until `--target` of encoder FLOPs (384 tokens) is removed (the optimizer's own `_fill_budget`), the
picked groups are zeroed, and EM/F1 are measured on the first `--questions` P1 dev questions, with no retraining.
That isolates the choice (how many heads vs neurons, which layers) from the training schedule. It says nothing
about the final quality after training; the P1 runs do.

Per-batch statistic of group g: t_g = x_gᵀ∇_g L_B (first-order change of the batch loss when g is removed).
  taylor_abs/cost   mean |t_g| per unit of FLOPs                  (HSPG's "taylor" saliency)
  taylor_sq/cost    mean t_g² per unit of FLOPs                   (Fisher-style second-order estimate)
  magnitude/cost    ‖x_g‖²/|g| per unit of FLOPs                   (HSPG's "magnitude" saliency)
  same_ratio        the same fraction of heads and of neurons, each ranked by mean |t_g| normalised by its layer's
                    mean (Torch-Pruning's default shape: GroupTaylorImportance, global ranking);
                    same_ratio_raw without the layer normalisation, same_ratio_sq with t² instead of |t_g|
  headsXX           XX% of the heads removed (same ranking as same_ratio), the rest of the budget from neurons
  zero_set:DIR      the groups that are zero in the group-sparse model saved in DIR (e.g. an OTO run's last
                    checkpoint): what OTO chose during training, judged on the same dense model (--target unused)

    python benchmarks/p1_allocation_probe.py --out benchmarks/results/p1_probe/probe50.json

`--stats_from pretrained` takes the statistics from the pretrained model before any training (its QA head seeded
as in the runs) instead of the dense fine-tuned one, and still zeroes and evaluates the dense model: how good a
choice made at the start of training is.
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
import p1_quality as p1  # noqa: E402  (sets threads, offline mode, paths)
import torch  # noqa: E402

import oto_hf  # noqa: E402
from oto_hf.groups import HEAD, NEURON  # noqa: E402
from oto_hf.hspg import _fill_budget  # noqa: E402


def group_statistics(model, groups, features, batch_size: int, n_batches: int, seed: int = 0) -> dict:
    """Mean |t_g| and mean t_g² over `n_batches` seeded training batches (eval mode: no dropout)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(features), generator=gen).tolist()
    names = ["input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"]
    abs_sum = torch.zeros(groups.num_groups, dtype=torch.float64)
    sq_sum = torch.zeros(groups.num_groups, dtype=torch.float64)
    for b in range(n_batches):
        rows = features.select(order[b * batch_size:(b + 1) * batch_size])
        batch = {n: torch.tensor(rows[n]) for n in names}
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        t = torch.zeros(groups.num_groups, dtype=torch.float64)
        with torch.no_grad():
            for gt in groups.tensors:
                t[gt.span] += gt.per_group_sum(gt.param.grad * gt.param).double()
        abs_sum += t.abs()
        sq_sum += t.square()
    model.zero_grad(set_to_none=True)
    return {"abs": abs_sum / n_batches, "sq": sq_sum / n_batches}


def layer_normalised(score: torch.Tensor, groups) -> torch.Tensor:
    out = score.clone()
    for kind in (HEAD, NEURON):
        for layer in range(groups.num_layers):
            m = (groups.kinds == kind) & (groups.layers == layer)
            if m.any():
                out[m] = score[m] / score[m].mean().clamp_min(1e-30)
    return out


def _kind_ratio_mask(score, groups, ratios: dict) -> torch.Tensor:
    """Remove round(ratios[kind] · n_kind) groups of each kind, the lowest `score` first (global across layers)."""
    mask = torch.zeros(groups.num_groups, dtype=torch.bool)
    for kind, r in ratios.items():
        idx = torch.nonzero(groups.kinds == kind).flatten()
        mask[idx[torch.argsort(score[idx])[:int(round(r * len(idx)))]]] = True
    return mask


def _bisect(make, costs: torch.Tensor, budget: float) -> torch.Tensor:
    """The largest r in [0, 1] whose mask make(r) stays within the FLOPs budget."""
    lo, hi, best = 0.0, 1.0, make(0.0)
    for _ in range(40):
        r = (lo + hi) / 2
        m = make(r)
        if float(costs[m].sum()) <= budget:
            lo, best = r, m
        else:
            hi = r
    return best


def choose(criterion: str, stats: dict, groups, costs: torch.Tensor, budget: float) -> torch.Tensor:
    """Boolean mask of the groups the criterion removes."""
    if criterion.startswith("zero_set:"):
        trained = p1.load_model(Path(criterion.split(":", 1)[1]))
        trained_groups = oto_hf.zero_invariant_groups(trained)
        if trained_groups.num_groups != groups.num_groups:
            raise SystemExit(f"{criterion}: that model has {trained_groups.num_groups} groups, the dense model "
                             f"{groups.num_groups}; give the full-size group-sparse checkpoint, not the compressed one")
        return trained_groups.is_zero().cpu()
    if criterion.startswith("same_ratio"):
        # One ratio r for heads and neurons alike, bisected to the FLOPs budget.
        raw = stats["sq"] if criterion.endswith("_sq") else stats["abs"]
        score = raw if criterion.endswith("_raw") else layer_normalised(raw, groups)
        return _bisect(lambda r: _kind_ratio_mask(score, groups, {HEAD: r, NEURON: r}), costs, budget)
    if criterion.startswith("heads"):
        # A fixed fraction of heads (headsXX: XX% removed), the rest of the budget from neurons.
        h = int(criterion[5:]) / 100
        score = layer_normalised(stats["abs"], groups)
        return _bisect(lambda r: _kind_ratio_mask(score, groups, {HEAD: h, NEURON: r}), costs, budget)
    importance = {"taylor_abs/cost": stats["abs"], "taylor_sq/cost": stats["sq"],
                  "magnitude/cost": groups.sq_norms().double().cpu() / groups.sizes.double()}[criterion]
    order = torch.argsort(importance / costs)
    mask = torch.zeros(groups.num_groups, dtype=torch.bool)
    mask[order[_fill_budget(costs[order], budget)]] = True
    return mask


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", type=float, default=0.5, help="fraction of encoder FLOPs removed")
    p.add_argument("--batches", type=int, default=40, help="training batches (of 16) for the statistics")
    p.add_argument("--questions", type=int, default=300, help="P1 dev questions evaluated")
    p.add_argument("--criteria", nargs="*", default=["taylor_abs/cost", "taylor_sq/cost", "magnitude/cost",
                                                     "same_ratio"])
    p.add_argument("--stats_from", choices=["dense", "pretrained"], default="dense",
                   help="model whose training-batch statistics rank the groups (evaluation is always on dense)")
    p.add_argument("--learning_rate", type=float, default=None,
                   help="the P1 lr whose dense model is probed (benchmarks/results/p1_lr<LR>/dense); default the YAML's")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    ctx = p1.Ctx(False, None, learning_rate=args.learning_rate)
    model_args, data_args, train_args, _, _ = p1.parse_settings(ctx, ctx.method_dir("probe") / "unused")
    data = p1.load_data(model_args, data_args)
    data["eval_examples"] = data["eval_examples"].select(range(args.questions))
    ids = set(data["eval_examples"]["id"])
    data["eval_features"] = data["eval_features"].filter(lambda f: f["example_id"] in ids)
    dense = p1.load_model(ctx.method_dir("dense") / "model")
    groups = oto_hf.zero_invariant_groups(dense)
    costs = groups.costs("flops", 384).double().cpu()
    budget = args.target * groups.total_cost("flops", 384)

    suffix = "" if args.stats_from == "dense" else f"_{args.stats_from}"
    cache = args.out.parent / f"group_statistics_{args.batches}{suffix}.pt"  # criteria can be added without recomputing
    if cache.exists():
        stats = torch.load(cache)
    else:
        t0 = time.perf_counter()
        source = dense
        if args.stats_from == "pretrained":
            from transformers import AutoModelForQuestionAnswering, set_seed

            set_seed(train_args.seed)  # the QA head the runs start from
            source = AutoModelForQuestionAnswering.from_pretrained(data["model_path"])
        stats = group_statistics(source, groups if source is dense else oto_hf.zero_invariant_groups(source),
                                 data["train_features"], train_args.per_device_train_batch_size, args.batches)
        p1.log(f"statistics over {args.batches} batches: {time.perf_counter() - t0:.0f}s")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(stats, cache)
    results = {"target": args.target, "batches": args.batches, "questions": args.questions,
               "stats_from": args.stats_from,
               "command": common.command_line(__file__, argv), "rows": []}
    dense_metrics = p1.evaluate(dense, data, data_args, train_args, "dense")
    results["dense"] = dense_metrics
    p1.log(f"dense: EM {dense_metrics['exact_match']:.2f} F1 {dense_metrics['f1']:.2f}")
    for criterion in args.criteria:
        mask = choose(criterion, stats, groups, costs, budget)
        model = copy.deepcopy(dense)
        model_groups = oto_hf.zero_invariant_groups(model)
        model_groups.zero_(torch.nonzero(mask).flatten())
        metrics = p1.evaluate(model, data, data_args, train_args, criterion)
        keep = ~mask
        row = {"criterion": criterion, "exact_match": metrics["exact_match"], "f1": metrics["f1"],
               "flops_removed": float(costs[mask].sum()) / groups.total_cost("flops", 384),
               "heads_kept": groups.count_per_layer(keep, "head"),
               "neurons_kept": groups.count_per_layer(keep, "neuron")}
        results["rows"].append(row)
        p1.log(f"{criterion}: EM {row['exact_match']:.2f} F1 {row['f1']:.2f} heads {row['heads_kept']} "
               f"neurons {row['neurons_kept']}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
