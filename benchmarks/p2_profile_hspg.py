"""Where the time of `HSPG.step` goes (companion to P2; diagnosis only, not a published ratio).

Builds the model, fills the gradients once (one forward/backward on a real SQuAD batch), warms up, then runs
`opt.step()` under `torch.profiler` with Python stacks. Every operator's *self* CPU time is charged to the innermost
line of `oto_hf/hspg.py` on its stack, and lines are grouped into the sections that `HSPG.step` marks with
"# 1." … "# 5." comments (`_base_update`, called from section 1, is reported on its own). The same is done for
`torch.optim.AdamW` (by operator) as the reference. Also: un-profiled wall time of each step alone, interleaved.

    python benchmarks/p2_profile_hspg.py --model minilm --out benchmarks/results/p2_profile_minilm.json
"""

import argparse
import copy
import inspect
import linecache
import os
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

import oto_hf.hspg as hspg_module  # noqa: E402
from p2_optimizer_overhead import build_model, make_optimizer  # noqa: E402


HSPG_FILE = os.path.realpath(inspect.getsourcefile(hspg_module))


def section_map() -> tuple[dict[int, str], dict[str, tuple[int, int]]]:
    """Line number → section name for hspg.py, from the '# N.' comments of HSPG.step and the method boundaries."""
    lines = Path(HSPG_FILE).read_text().splitlines()
    step_start = next(i for i, l in enumerate(lines, 1) if re.match(r"\s+def step\(", l))
    methods = [(i, re.match(r"\s+def (\w+)", l).group(1)) for i, l in enumerate(lines, 1) if re.match(r"\s+def \w+", l)]
    markers = [(i, l.strip()) for i, l in enumerate(lines, 1) if i > step_start and re.match(r"\s+# [1-9]\. ", l)]
    step_end = next(i for i, _ in methods if i > step_start) - 1
    mapping, ranges = {}, {}
    bounds = [(step_start, "0. step: set-up")] + markers + [(step_end + 1, None)]
    for (a, name), (b, _) in zip(bounds, bounds[1:]):
        label = name if name.startswith("0.") else name[2:].split(":")[0][:70]
        for i in range(a, b):
            mapping[i] = label
        ranges[label] = (a, b - 1)
    for (a, name), (b, _) in zip(methods, methods[1:] + [(len(lines) + 1, None)]):
        if name != "step":
            for i in range(a, b):
                mapping.setdefault(i, f"HSPG.{name}")
            ranges.setdefault(f"HSPG.{name}", (a, b - 1))
    return mapping, ranges


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


class LineTimer:
    """Wall time per source line of the traced functions (a minimal line profiler; CPU ops run synchronously, so
    the time between two line events is the cost of the first line, callees included)."""

    def __init__(self, codes):
        self.codes = set(codes)
        self.times = defaultdict(float)

    def _global(self, frame, event, arg):
        if event == "call" and frame.f_code in self.codes:
            state = {"line": frame.f_lineno, "t": time.perf_counter()}

            def local(frame, event, arg):
                now = time.perf_counter()
                self.times[(frame.f_code.co_name, state["line"])] += now - state["t"]
                state["line"] = frame.f_lineno
                state["t"] = time.perf_counter()
                return local

            return local
        return None

    def __enter__(self):
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc):
        sys.settrace(None)


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

    base, description = build_model(args.model, args.seed)
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

    times = common.interleaved({k: opts[k].step for k in opts}, args.repeats, warmup=1, patience_s=30.0)
    wall = {k: statistics.median(times[k]) for k in opts}
    common.log(f"{description}, batch {batch_size}x{seq_len}: opt.step alone, median of {args.repeats} interleaved: "
               + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in wall.items())
               + f"; ratio {wall[args.kind] / wall['adamw']:.2f}")

    # Line-level wall time of HSPG.step (callees such as _base_update and the groups' helpers are included in the
    # line that calls them) and, separately, of _base_update's own lines.
    hspg = opts[args.kind]
    step_code = inspect.unwrap(type(hspg).step).__code__  # under Optimizer's hook wrapper and no_grad
    with LineTimer([step_code, type(hspg)._base_update.__code__]) as timer:
        for _ in range(args.steps):
            hspg.step()
    mapping, _ = section_map()
    per_line = {f"{fn}:{line}": v / args.steps for (fn, line), v in timer.times.items()}
    per_section = defaultdict(float)
    for (fn, line), v in timer.times.items():
        if fn == step_code.co_name:
            per_section[mapping.get(line, "step: other")] += v / args.steps
    traced_total = sum(per_section.values())

    results = {"line_timer": {"per_section_s_per_step": dict(per_section), "per_line_s_per_step": per_line,
                              "traced_step_s": traced_total}}

    # The one-off work at the start of each pruning period (choosing the redundant groups), not in the steps above.
    if hspg.target is not None:
        saved = hspg.hspg_state["redundant"].clone()
        sq = hspg.groups.sq_norms()
        t_choose = []
        for _ in range(5):
            t0 = time.perf_counter()
            hspg._choose_redundant(0, sq)
            t_choose.append(time.perf_counter() - t0)
        hspg.hspg_state["redundant"] = saved
        results["choose_redundant_s"] = statistics.median(t_choose)
        common.log(f"_choose_redundant (once per pruning period, {len(hspg.groups)} groups): "
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

    common.log(f"\nHSPG ({args.kind}) step by section (line timer, wall time per step; traced step "
               f"{traced_total * 1e3:.1f} ms, un-traced median {wall[args.kind] * 1e3:.1f} ms, AdamW "
               f"{wall['adamw'] * 1e3:.1f} ms):")
    for sec, v in sorted(per_section.items(), key=lambda x: -x[1]):
        common.log(f"  {v * 1e3:8.1f} ms  {v / traced_total:6.1%}  {sec}")
    common.log("  top lines (step lines include their callees; _base_update lines are its own):")
    for key, v in sorted(per_line.items(), key=lambda x: -x[1])[:16]:
        fn, line = key.split(":")
        common.log(f"  {v * 1e3:8.1f} ms  hspg.py:{line:<4} {fn:<13} {linecache.getline(HSPG_FILE, int(line)).strip()[:80]}")
    for k in opts:
        common.log(f"  aten self time per step, {k}: total {results[k]['aten_total_s_per_step'] * 1e3:.1f} ms; by function: "
                   + ", ".join(f"{f} {v * 1e3:.1f} ms" for f, v in list(results[k]["per_function_s_per_step"].items())[:6]))
        common.log(f"    by operator: " + ", ".join(
            f"{o} {v * 1e3:.1f} ms" for o, v in list(results[k]["per_op_s_per_step"].items())[:9]))

    if args.out:
        common.write_json(args.out, {
            "benchmark": "P2 companion: profile of HSPG.step",
            "command": common.command_line(__file__, argv),
            "machine": common.machine_info(), "model": description, "batch": [batch_size, seq_len],
            "hspg_sections": {k: list(v) for k, v in section_map()[1].items()},
            "step_alone_median_s": wall, "step_alone_seconds": {k: times[k] for k in opts},
            "profile": results,
        })
        common.log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
