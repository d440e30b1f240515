"""P2 — optimizer overhead of HSPG against torch.optim.AdamW (benchmark protocol, section P2).

For each model, two (or three) independent copies of the same initial weights are trained on the same real
SQuAD batch: one with `torch.optim.AdamW`, one with `oto_hf.HSPG` in its most expensive regime (target mode inside
the pruning window: `target=0.5`, `half_space_start_step=0`, a window far longer than the run, so every measured step
is a pruning step with redundant groups taking the adaptive-λ subgradient step and the half-space test), and,
optionally, one with HSPG in the paper's λ-only stage 2 (`target=None`, `half_space_start_step=0`: every non-zero group
is penalised and a projection candidate), and optionally (`--hidden`) one with the target mode over groups that
include the residual stream's channels (`prune_hidden=True`: most weights and the embedding tables in two sets of
groups).

Measured, interleaved (variant order rotated every repeat), after warm-up:
* the full training step: forward, backward, `opt.step()`, `opt.zero_grad()`;
* the optimizer step alone: `opt.step()` on fixed gradients (one backward beforehand, grads then left in place).

Published: the ratios HSPG / AdamW (ratio of medians, and median and IQR of the per-repeat paired ratios).
Absolute medians go to the JSON only.

    python benchmarks/p2_optimizer_overhead.py --models minilm bert-base --repeats 10 --out benchmarks/results/p2.json
    python benchmarks/p2_optimizer_overhead.py --models minilm --hidden minilm --lambda-full-step --aa-control \
        --out benchmarks/results/p2_hidden.json      # HSPG with the hidden width's groups against AdamW and HSPG
    python benchmarks/p2_optimizer_overhead.py --models minilm --repeats 1 --step-repeats 1 --minilm-batch 2 \
        --minilm-seq-len 32 --patience 0 --out /tmp/p2_smoke.json     # a smoke run of the script, not a measurement
"""

import argparse
import copy
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets the offline environment before transformers is imported)

import torch  # noqa: E402

import oto_hf  # noqa: E402
from oto_hf import timing  # noqa: E402


LR, WEIGHT_DECAY, LMBDA = 3e-5, 0.01, 1e-3


def make_optimizer(kind: str, model: torch.nn.Module, prune_steps: int):
    if kind in ("adamw", "adamw_control"):
        return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    groups = oto_hf.zero_invariant_groups(model, prune_hidden=kind == "hspg_hidden")
    if kind in ("hspg_target", "hspg_hidden"):
        return oto_hf.HSPG(model.parameters(), groups, lr=LR, direction="adamw", lmbda=LMBDA,
                           weight_decay=WEIGHT_DECAY, half_space_start_step=0, target=0.5, prune_steps=prune_steps)
    if kind == "hspg_lambda":
        return oto_hf.HSPG(model.parameters(), groups, lr=LR, direction="adamw", lmbda=LMBDA,
                           weight_decay=WEIGHT_DECAY, half_space_start_step=0, target=None)
    raise ValueError(kind)


def bench_model(name: str, batch_size: int, seq_len: int, kinds: list[str], step_kinds: list[str], repeats: int,
                step_repeats: int, seed: int, quiet: float, patience: float) -> dict:
    common.log(f"== {name}: batch {batch_size} x {seq_len}, full step: {kinds}, step alone: {step_kinds}")
    base, description = common.build_model(name, seed)
    base.train()  # dropout on, as in training (same cost for every optimizer)
    batch = common.squad_batch(batch_size, seq_len, split="train", seed=seed)
    gen = torch.Generator().manual_seed(seed)
    start = torch.randint(1, seq_len - 1, (batch_size,), generator=gen)
    end = torch.clamp(start + torch.randint(0, 10, (batch_size,), generator=gen), max=seq_len - 1)

    all_kinds = list(dict.fromkeys(kinds + step_kinds))
    models, opts = {}, {}
    prune_steps = 10**9  # the window never ends within the run: every step is a pruning step
    for kind in all_kinds:
        models[kind] = copy.deepcopy(base)
        opts[kind] = make_optimizer(kind, models[kind], prune_steps)
    num_groups = oto_hf.zero_invariant_groups(base).num_groups
    del base
    gc.collect()

    def full_step(kind):
        model, opt = models[kind], opts[kind]

        def run():
            out = model(**batch, start_positions=start, end_positions=end)
            out.loss.backward()
            opt.step()
            opt.zero_grad()

        return run

    common.log(f"-- full training step ({repeats} repeats after 1 warm-up round)")
    full = timing.interleaved({k: full_step(k) for k in kinds}, repeats, warmup=1, log=common.log,
                              quiet_threshold=quiet, patience_s=patience)

    # Optimizer step alone on fixed gradients: one forward/backward per copy, grads are then left in place.
    for kind in step_kinds:
        opts[kind].zero_grad()
        out = models[kind](**batch, start_positions=start, end_positions=end)
        out.loss.backward()
    common.log(f"-- optimizer step alone ({step_repeats} repeats after 2 warm-up rounds)")
    alone = timing.interleaved({k: opts[k].step for k in step_kinds}, step_repeats, warmup=2,
                               quiet_threshold=quiet, patience_s=min(patience, 30.0))
    common.log("   medians: " + ", ".join(f"{k} {alone.median(k):.4f}s" for k in step_kinds)
               + f"; {len(alone.discarded)} noisy repeats redone")

    result = {
        "model": description,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "num_params": sum(p.numel() for p in models[all_kinds[0]].parameters()),
        "num_groups": num_groups,
        "optimizers": {
            "adamw": f"torch.optim.AdamW(lr={LR}, weight_decay={WEIGHT_DECAY}) (defaults: foreach/fused=None, "
                     "i.e. the single-tensor loop on CPU)",
            "hspg_target": f"HSPG(direction='adamw', lr={LR}, weight_decay={WEIGHT_DECAY}, lmbda={LMBDA}, "
                           f"half_space_start_step=0, target=0.5, prune_steps={prune_steps})",
            "hspg_lambda": f"HSPG(direction='adamw', lr={LR}, weight_decay={WEIGHT_DECAY}, lmbda={LMBDA}, "
                           "half_space_start_step=0, target=None)",
            "hspg_hidden": "as hspg_target, over zero_invariant_groups(model, prune_hidden=True)",
            "adamw_control": "a second, independent copy trained with the same AdamW (A/A control: its ratio to "
                             "'adamw' shows the noise floor and any bias between copies or positions)",
        },
        "full_step": {"seconds": full.seconds, "median_s": full.medians(),
                      "foreign_load_cores": full.foreign_load_cores, "discarded_noisy_repeats": full.discarded,
                      "waited_for_quiet_s": full.waited_s},
        "step_alone": {"seconds": alone.seconds, "median_s": alone.medians(),
                       "foreign_load_cores": alone.foreign_load_cores,
                       "discarded_noisy_repeats": len(alone.discarded), "waited_for_quiet_s": alone.waited_s},
        "ratios": {},
    }
    for kind in kinds:
        if kind != "adamw":
            result["ratios"][f"full_step/{kind}"] = full.ratio(kind, "adamw")
    for kind in step_kinds:
        if kind != "adamw":
            result["ratios"][f"step_alone/{kind}"] = alone.ratio(kind, "adamw")
    # Share of the AdamW full step that is the optimizer step (explains how step-alone ratios dilute).
    result["adamw_step_share_of_full_step"] = result["step_alone"]["median_s"]["adamw"] / result["full_step"]["median_s"]["adamw"]
    for kind in all_kinds:
        if kind.startswith("hspg"):
            report = opts[kind].sparsity_report()
            report["redundant_groups"] = int(opts[kind].hspg_state["redundant"].sum())
            report["steps_taken"] = opts[kind].step_count
            result[f"{kind}_state_at_end"] = report
    del models, opts
    gc.collect()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["minilm", "bert-base"], choices=["minilm", "bert-base"])
    parser.add_argument("--repeats", type=int, default=10, help="timed full steps per optimizer (after warm-up)")
    parser.add_argument("--step-repeats", type=int, default=30, help="timed optimizer-only steps per optimizer")
    parser.add_argument("--minilm-batch", type=int, default=16)
    parser.add_argument("--minilm-seq-len", type=int, default=256)
    parser.add_argument("--bert-base-batch", type=int, default=8)
    parser.add_argument("--bert-base-seq-len", type=int, default=384)
    parser.add_argument("--lambda-full-step", nargs="*", default=["minilm"], choices=["minilm", "bert-base"],
                        help="models whose full-step comparison also includes HSPG λ-only stage 2 (it is always in "
                             "the step-alone comparison); default minilm only, to keep bert-base's run short")
    parser.add_argument("--aa-control", nargs="*", default=["minilm"], choices=["minilm", "bert-base"],
                        help="models whose full-step comparison also includes a second AdamW copy (A/A control)")
    parser.add_argument("--hidden", nargs="*", default=[], choices=["minilm", "bert-base"],
                        help="models whose comparisons also include HSPG over the hidden width's groups too "
                             "(hspg_hidden); default none")
    common.add_timing_arguments(parser, patience=120.0, out="benchmarks/results/p2.json")
    args = parser.parse_args(argv)

    common.setup_threads(args.threads)
    t_start = time.perf_counter()
    payload = common.result_header(
        "P2 optimizer overhead (HSPG vs torch.optim.AdamW)", __file__, argv,
        "variants interleaved, order rotated each repeat; 1 warm-up round (full step) / 2 (step alone); "
        "medians; ratios are HSPG / AdamW; paired = per-repeat ratio within one round; a repeat during "
        f"which other processes used >= {args.quiet_threshold} cores is redone while patience "
        f"({args.patience:.0f} s per block, 30 s for step alone) lasts"
    )
    for name in args.models:
        batch = args.minilm_batch if name == "minilm" else args.bert_base_batch
        seq = args.minilm_seq_len if name == "minilm" else args.bert_base_seq_len
        kinds = ["adamw", "hspg_target"] + (["hspg_lambda"] if name in args.lambda_full_step else []) \
            + (["adamw_control"] if name in args.aa_control else []) + (["hspg_hidden"] if name in args.hidden else [])
        step_kinds = ["adamw", "hspg_target", "hspg_lambda"] + (["hspg_hidden"] if name in args.hidden else [])
        payload["results"][name] = bench_model(name, batch, seq, kinds, step_kinds, args.repeats, args.step_repeats,
                                               args.seed, args.quiet_threshold, args.patience)
        common.write_json(args.out, payload)  # partial results survive an interrupted run
    payload["wall_time_s"] = time.perf_counter() - t_start
    common.write_json(args.out, payload)

    common.log("\nP2 — HSPG / AdamW time ratios (median of paired per-repeat ratios [IQR]; ratio of medians)")
    common.log(f"{'model':<10} {'batch':<9} {'measure':<26} {'paired median [q1, q3]':<26} {'ratio of medians':>16}")
    for name, res in payload["results"].items():
        for key, r in res["ratios"].items():
            common.log(f"{name:<10} {res['batch_size']}x{res['seq_len']:<6} {key:<26} "
                       f"{r['paired_median']:.3f} [{r['paired_q1']:.3f}, {r['paired_q3']:.3f}]{'':<6} "
                       f"{r['ratio_of_medians']:>16.3f}")
        common.log(f"{name:<10} {'':<9} AdamW opt.step share of full step: {res['adamw_step_share_of_full_step']:.1%}")
    common.log(f"\nwrote {args.out} (wall time {payload['wall_time_s']:.0f} s)")


if __name__ == "__main__":
    main()
