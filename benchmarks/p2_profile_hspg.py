"""Where the time of `HSPG.step` goes (companion to P2; diagnosis only, not a published ratio).

Builds the model, fills the gradients once (one forward/backward on a real SQuAD batch), warms up, then times the
named phases of `HSPG.step` (`STEP_PHASES`: base directions, per-group sums, the saliency's averages, penalty,
half-space projection, apply) by wrapping those methods on the optimizer, and runs `opt.step()` under
`torch.profiler` with Python stacks, every operator's *self* CPU time charged to the innermost oto_hf function on its
stack. The same is done for `torch.optim.AdamW` (by operator) as the reference. Also: un-profiled wall time of each
step alone, interleaved. (Until 9a312b9 the phases were found by parsing "# 1." … "# 5." comments in `HSPG.step`;
its two result files were written that way.)

    python benchmarks/p2_profile_hspg.py --model minilm --out benchmarks/results/p2_profile_minilm.json
"""

import argparse
import copy
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from oto_hf import timing  # noqa: E402
from p2_optimizer_overhead import make_optimizer  # noqa: E402


# The named phases of HSPG.step, in the order it calls them ("policy.saliency.observe": the saliency's running
# averages). _base_update runs inside _base_directions; choose_redundant inside _penalty, once per period.
STEP_PHASES = ("_base_directions", "_group_sums", "policy.saliency.observe", "_penalty", "_half_space_projection",
               "_apply")


def attribute(prof) -> tuple[dict, dict, float]:
    """Self CPU time (s) of the aten operators: per operator, and per innermost oto_hf function on the Python call
    chain (from the profiler's Python tracer events); and the total."""
    pattern = re.compile(r"(.*)\((\d+)\): (\w+)$")
    per_op, per_function = defaultdict(float), defaultdict(float)
    total = 0.0
    for evt in prof.events():
        if not evt.name.startswith("aten::"):
            continue
        self_s = evt.self_cpu_time_total / 1e6
        total += self_s
        per_op[evt.name] += self_s
        function, parent = "other", evt.cpu_parent
        while parent is not None:
            m = pattern.match(parent.name)
            if m and "oto_hf" in m.group(1):
                function = f"{Path(m.group(1)).name}:{m.group(3)}"
                break
            if m and "torch/optim" in m.group(1):
                function = f"torch.optim {Path(m.group(1)).name}:{m.group(3)}"
                break
            parent = parent.cpu_parent
        per_function[function] += self_s
    return dict(per_op), dict(per_function), total


class PhaseTimer:
    """Wall time of each of `STEP_PHASES` (CPU operators run synchronously, so a call's wall time is its cost), by
    wrapping those methods on the optimizer instance (and its saliency object) while the timer is entered."""

    def __init__(self, hspg):
        self.hspg = hspg
        self.times = defaultdict(float)

    def _owner_and_name(self, phase: str):
        *path, name = phase.split(".")
        owner = self.hspg
        for attribute_name in path:
            owner = getattr(owner, attribute_name)
        return owner, name

    def __enter__(self):
        for phase in STEP_PHASES:
            owner, name = self._owner_and_name(phase)
            setattr(owner, name, self._timed(phase, getattr(owner, name)))
        return self

    def __exit__(self, *exc):
        for phase in STEP_PHASES:
            owner, name = self._owner_and_name(phase)
            delattr(owner, name)  # the class's method shows through again

    def _timed(self, phase: str, method):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.times[phase] += time.perf_counter() - start

        return timed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm", choices=["minilm", "bert-base"])
    parser.add_argument("--batch", type=int, default=None, help="default: 16 (minilm) / 8 (bert-base)")
    parser.add_argument("--seq-len", type=int, default=None, help="default: 256 (minilm) / 384 (bert-base)")
    parser.add_argument("--kind", default="hspg_target", choices=["hspg_target", "hspg_lambda"])
    parser.add_argument("--steps", type=int, default=5, help="profiled steps")
    parser.add_argument("--repeats", type=int, default=20, help="un-profiled, interleaved step-alone repeats")
    parser.add_argument("--threads", type=int, default=common.THREADS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    common.setup_threads(args.threads)
    batch_size = args.batch or (16 if args.model == "minilm" else 8)
    seq_len = args.seq_len or (256 if args.model == "minilm" else 384)

    base, description = common.build_model(args.model, args.seed)
    base.train()
    batch = common.squad_batch(batch_size, seq_len, split="train", seed=args.seed)
    start = torch.randint(1, seq_len - 1, (batch_size,), generator=torch.Generator().manual_seed(args.seed))
    models = {k: copy.deepcopy(base) for k in ("adamw", args.kind)}
    del base
    opts = {k: make_optimizer(k, m, 10**9) for k, m in models.items()}
    for k, m in models.items():
        m(**batch, start_positions=start, end_positions=start).loss.backward()
        for _ in range(3):
            opts[k].step()

    times = timing.interleaved({k: opts[k].step for k in opts}, args.repeats, warmup=1, patience_s=30.0).seconds
    wall = {k: statistics.median(times[k]) for k in opts}
    common.log(f"{description}, batch {batch_size}x{seq_len}: opt.step alone, median of {args.repeats} interleaved: "
               + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in wall.items())
               + f"; ratio {wall[args.kind] / wall['adamw']:.2f}")

    # Wall time of each named phase of HSPG.step, and of the whole step (the rest is the step's own glue).
    hspg = opts[args.kind]
    step_total = 0.0
    with PhaseTimer(hspg) as timer:
        for _ in range(args.steps):
            start = time.perf_counter()
            hspg.step()
            step_total += time.perf_counter() - start
    per_phase = {phase: timer.times[phase] / args.steps for phase in STEP_PHASES}
    per_phase["step: other"] = max(step_total / args.steps - sum(per_phase.values()), 0.0)
    traced_total = step_total / args.steps

    results = {"phase_timer": {"per_phase_s_per_step": per_phase, "timed_step_s": traced_total}}

    # The one-off work at the start of each pruning period (choosing the redundant groups), not in the steps above.
    if hspg.settings.target is not None:
        saved = hspg.hspg_state["redundant"].clone()
        sq = hspg.groups.sq_norms()
        t_choose = []
        for _ in range(5):
            t0 = time.perf_counter()
            hspg.choose_redundant(0, sq)
            t_choose.append(time.perf_counter() - t0)
        hspg.hspg_state["redundant"] = saved
        results["choose_redundant_s"] = statistics.median(t_choose)
        common.log(f"choose_redundant (once per pruning period, {hspg.groups.num_groups} groups): "
                   f"{results['choose_redundant_s'] * 1e3:.1f} ms")
    for k, opt in opts.items():
        with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
            for _ in range(args.steps):
                opt.step()
        per_op, per_function, total = attribute(prof)
        results[k] = {"per_op_s_per_step": {o: v / args.steps for o, v in sorted(per_op.items(), key=lambda x: -x[1])},
                      "per_function_s_per_step": {f: v / args.steps for f, v in
                                                  sorted(per_function.items(), key=lambda x: -x[1])},
                      "aten_total_s_per_step": total / args.steps}

    common.log(f"\nHSPG ({args.kind}) step by phase (wall time per step; timed step {traced_total * 1e3:.1f} ms, "
               f"un-timed median {wall[args.kind] * 1e3:.1f} ms, AdamW {wall['adamw'] * 1e3:.1f} ms):")
    for phase, v in sorted(per_phase.items(), key=lambda x: -x[1]):
        common.log(f"  {v * 1e3:8.1f} ms  {v / traced_total:6.1%}  {phase}")
    for k in opts:
        common.log(f"  aten self time per step, {k}: total {results[k]['aten_total_s_per_step'] * 1e3:.1f} ms; by function: "
                   + ", ".join(f"{f} {v * 1e3:.1f} ms" for f, v in list(results[k]["per_function_s_per_step"].items())[:6]))
        common.log("    by operator: " + ", ".join(
            f"{o} {v * 1e3:.1f} ms" for o, v in list(results[k]["per_op_s_per_step"].items())[:9]))

    if args.out:
        common.write_json(args.out, {
            "benchmark": "P2 companion: profile of HSPG.step",
            "command": common.command_line(__file__, argv),
            "machine": common.machine_info(), "model": description, "batch": [batch_size, seq_len],
            "hspg_phases": list(STEP_PHASES),
            "step_alone_median_s": wall, "step_alone_seconds": {k: times[k] for k in opts},
            "profile": results,
        })
        common.log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
