"""P6 — speed on demand, the predictor (benchmark protocol, section P6): is the speedup the latency table predicts the
one measured? Every point is data in benchmarks/p6.yaml; this is its one runner.

    python benchmarks/p6_speed.py run [--only MODEL ...] [--runtimes R ...] [--shapes BxT ...] [--asked X ...]
                                      [--allocations A ...] [--force] [--refresh-tables] [--smoke | --gpu | --stream]
                                      [--results DIR]
    python benchmarks/p6_speed.py summarize [--smoke] [--results DIR]   # markdown for docs/benchmarks.md

For each (model, runtime, shape) of the yaml, `run` measures the latency table of the model's class
(`oto_hf.latency.measure_latency_table`, cached in <results>/tables/ by everything it depends on: a second run reads
it and says so), recording how long it took to build. Then, for each allocation and asked speedup, it chooses the
layout HSPG's last pruning period would choose, without training:

* the groups of the dense model, their FLOPs at the shape's length (`Pools`), the time budget of the asked speedup
  (`LatencyTable.budget`), the selection policy of `OTOSettings(speedup=asked, allocation=..., saliency=...)` and a
  one-period goal; saliency averages at zero (no gradient was seen), so the yaml's saliency must be one that needs
  none ("magnitude": each group's mean squared weight);
* the chosen groups are zeroed in a copy of the dense model and cut out (`oto_hf.compress`);
* predicted: the table's speedup of the compressed model's heads and FFN widths; measured: the dense and the
  compressed model timed interleaved on the runtime (`oto_hf.latency.measure_speedup`, medians, busy repeats waited
  out and redone while the patience lasts; the load record is kept beside the figure).

Each point is written to <results>/points/<model>-<runtime>-<shape>-<allocation>-<asked>x.json as soon as it is
measured, and a point with a file is skipped unless --force (so an interrupted run resumes); after every point
<results>/predictor.json gathers every point of the yaml that has a file. A speedup beyond what emptying every
prunable group gives is recorded as unreachable, with the largest reachable one, and not measured.

--gpu runs the yaml's `gpu:` block (MiniLM's latency tables and points on CUDA, prepared for a lent GPU: one
command of at most 5 minutes, `python benchmarks/p6_speed.py run --gpu`; refused at once without CUDA).
--stream runs the yaml's `stream:` block: the same question with the residual stream's channels among the groups
(`prune_hidden: true`, as `--oto_prune_hidden true`): the latency tables are measured at narrower stream widths too
(`stream_points`), the layout cuts the stream with the heads and neurons, and the prediction is at the kept width.
--smoke runs the yaml's `smoke:` block (a tiny random model, results under benchmarks/results/tmp/): a check that
the pipeline goes through, not a measurement. Timings are only worth publishing from an idle machine
(docs/benchmarks.md, "Machines and noise"); every figure carries the other processes' load (`busy`).
"""

import argparse
import copy
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets the offline environment before transformers is imported)

import torch  # noqa: E402
import yaml  # noqa: E402

import oto_hf  # noqa: E402
from oto_hf import latency, timing  # noqa: E402
from oto_hf.selection import Goal, Pools, StreamCosts  # noqa: E402
from oto_hf.settings import InvalidOTOSettings, OTOSettings  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
TABLE = HERE / "p6.yaml"
BENCHMARK = "P6 speed on demand: predicted vs measured speedup"
KEYS = {"results", "seed", "threads", "tolerance", "models", "runtimes", "shapes", "asked", "allocations", "saliency",
        "layer_floor", "prune_hidden", "table", "measure", "smoke", "gpu", "stream"}
BLOCKS = ("smoke", "gpu", "stream")  # the yaml's blocks that --smoke, --gpu and --stream lay over its settings
PROTOCOL = ("per (model, runtime, shape): the latency table of the model's class (oto_hf.latency.measure_latency_table,"
            " interleaved medians of grid models, cached); per point: the layout of one pruning period without "
            "training (saliency averages at zero), zeroed and compressed; predicted = the table's speedup of the "
            "compressed sizes; measured = oto_hf.latency.measure_speedup (dense and compressed interleaved, order "
            "rotated every repeat, medians, busy repeats redone while the patience lasts); error = |predicted − "
            "measured| / measured")


def log(message: str) -> None:
    print(f"[p6 {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- the yaml ----


def load_settings(path: Path = TABLE, smoke: bool = False, block: str | None = None) -> dict:
    """The yaml's settings (with --smoke, --gpu or --stream, that block over them), checked: unknown keys, models,
    runtimes, shapes, allocations and asked speedups are refused with the key named."""
    data = yaml.safe_load(Path(path).read_text())
    unknown = set(data) - KEYS
    if unknown:
        raise SystemExit(f"{path}: unknown keys {sorted(unknown)} (known: {sorted(KEYS)})")
    blocks = {name: data.pop(name, {}) or {} for name in BLOCKS}
    block = "smoke" if smoke else block
    if block is not None:
        unknown = set(blocks[block]) - KEYS
        if unknown:
            raise SystemExit(f"{path}, {block}: unknown keys {sorted(unknown)}")
        data = {**data, **blocks[block]}
    for name in data["models"]:
        if name not in common.MODELS:
            raise SystemExit(f"{path}: model {name!r} is not one of benchmarks/common.py's {common.MODELS}")
    for runtime in data["runtimes"]:
        if runtime not in latency.RUNTIMES:
            raise SystemExit(f"{path}: runtime {runtime!r} is not one of {latency.RUNTIMES}")
    for shape in data["shapes"]:
        timing.parse_shape(shape, f"{path}: shape")
    data["shapes"] = [shape_key(s) for s in data["shapes"]]
    data["asked"] = [float(a) for a in data["asked"]]
    data["prune_hidden"] = bool(data.get("prune_hidden", False))
    if data["prune_hidden"] and not data["table"].get("stream_points"):
        raise SystemExit(f"{path}: prune_hidden needs the table's stream_points (the stream widths to time)")
    for allocation in data["allocations"]:  # refuses a bad name, and 'latency' with the hidden width
        try:
            OTOSettings(speedup=2.0, allocation=allocation, saliency=data["saliency"], layer_floor=data["layer_floor"],
                        prune_hidden=data["prune_hidden"], half_space_start_step=0, prune_steps=1)
        except InvalidOTOSettings as refusal:
            raise SystemExit(f"{path}: allocations: {refusal}") from None
    return data


def shape_key(shape: str) -> str:
    batch, tokens = timing.parse_shape(shape)
    return f"{batch}x{tokens}"


def point_name(model: str, runtime: str, shape: str, allocation: str, asked: float) -> str:
    return f"{model}-{runtime}-{shape}-{allocation}-{asked:g}x"


def results_dir(settings: dict, override: Path | None) -> Path:
    folder = Path(override or settings["results"])
    return folder if folder.is_absolute() else REPO_ROOT / folder


# ---- one layout, chosen and measured ----


def choose_layout(dense: torch.nn.Module, table: latency.LatencyTable, spec: latency.LatencySpec, asked: float,
                  allocation: str, settings: dict) -> tuple[torch.nn.Module | None, dict]:
    """The group-sparse copy of `dense` with the groups HSPG's selection policy would remove in its last (here: only)
    period for a speed target of `asked`, and what was chosen. (None, {"unreachable": ...}) when the asked speedup is
    beyond emptying every prunable group."""
    sparse = copy.deepcopy(dense)
    groups = oto_hf.zero_invariant_groups(sparse, prune_hidden=settings["prune_hidden"])
    oto = OTOSettings(speedup=asked, allocation=allocation, saliency=settings["saliency"],
                      layer_floor=settings["layer_floor"], prune_hidden=settings["prune_hidden"],
                      latency_runtime=spec.runtime, latency_shape=spec.shape,
                      latency_threads=spec.threads, seq_len=spec.seq_len, half_space_start_step=0, prune_steps=1)
    try:
        oto.check_speedup_fits(table, groups)
    except InvalidOTOSettings as refusal:
        return None, {"unreachable": True, "largest_reachable": table.budget(groups, asked).largest_speedup,
                      "refusal": str(refusal)}
    costs = groups.costs("flops", spec.seq_len)
    pools = Pools.of(groups, costs, groups.device)
    budget = table.budget(groups, asked)
    stream = StreamCosts(groups, "flops", spec.seq_len) if groups.prune_hidden else None  # as HSPG builds it
    goal = Goal(target=0.0, period=0, num_periods=1, total_cost=groups.total_cost("flops", spec.seq_len), time=budget,
                stream=stream)
    zero = groups.is_zero()
    averages = {"taylor": torch.zeros(groups.num_groups), "direction": torch.zeros(groups.num_groups)}
    started = time.perf_counter()
    redundant = oto.selection_policy().choose(zero, groups.sq_norms(), averages, pools, goal)
    choose_seconds = time.perf_counter() - started
    groups.zero_(redundant)
    return sparse, {"unreachable": False, "groups_removed": int(redundant.sum()), "groups": groups.num_groups,
                    "policy_predicted_speedup": budget.dense_seconds / budget.predict(zero | redundant, pools),
                    "choose_seconds": choose_seconds}


def layout_of(model: torch.nn.Module, dense: torch.nn.Module, seq_len: int) -> dict:
    """Heads and FFN width per layer of the compressed `model`, its residual stream's width (None: not cut), the
    blocks it emptied (layer indices from 0) and the share of the dense model's encoder FLOPs it keeps at `seq_len`
    tokens."""
    heads = list(model.config.num_attention_heads_per_layer)
    widths = list(model.config.intermediate_size_per_layer)
    kept = oto_hf.model_stats(model, seq_len).encoder_flops / oto_hf.model_stats(dense, seq_len).encoder_flops
    return {"heads_per_layer": heads, "ffn_width_per_layer": widths,
            "hidden_size": getattr(model.config, "compressed_hidden_size", None),
            "emptied_attention": [i for i, h in enumerate(heads) if h == 0],
            "emptied_ffn": [i for i, w in enumerate(widths) if w == 0], "encoder_flops_kept": kept}


def table_record(table: latency.LatencyTable) -> dict:
    """What a point says of the table it was predicted from."""
    path = Path(table.path) if table.path else None
    return {"path": str(path.relative_to(REPO_ROOT)) if path and path.is_relative_to(REPO_ROOT) else table.path,
            "cached": table.cached, "build_seconds": table.build_seconds, "measured_at": table.measured_at,
            "repeats": table.repeats, "busy": table.load.get("busy"),
            "max_foreign_load_cores": table.load.get("max_foreign_load_cores"), "full_ms": table.full_seconds * 1e3,
            "empty_ms": table.empty_seconds * 1e3, "largest_speedup": table.full_seconds / table.empty_seconds,
            "additivity_factor": table.calibration, "heads_grid": table.heads_grid, "width_grid": table.width_grid,
            "session_settings": table.session_settings or None, "stream_grid": table.stream_grid or None}


def measure_point(dense, table, spec, model_name, allocation, asked, settings) -> dict:
    """One point: the layout for `asked`, cut out, predicted and measured."""
    sparse, chosen = choose_layout(dense, table, spec, asked, allocation, settings)
    point = {"model": model_name, "runtime": spec.runtime, "shape": spec.shape, "threads": spec.threads,
             "allocation": allocation, "saliency": settings["saliency"], "layer_floor": settings["layer_floor"],
             "prune_hidden": settings["prune_hidden"],
             "asked": asked, **chosen, "table": table_record(table)}
    if sparse is None:
        log(f"  {allocation} {asked:g}×: unreachable (largest {chosen['largest_reachable']:.2f}×); not measured")
        return point
    compressed = oto_hf.compress(sparse).eval()
    del sparse
    layout = layout_of(compressed, dense, spec.seq_len)
    predicted = table.speedup(layout["heads_per_layer"], layout["ffn_width_per_layer"], stream=layout["hidden_size"])
    started = time.perf_counter()
    measured = latency.measure_speedup(dense, compressed, spec, repeats=settings["measure"]["repeats"],
                                       patience_s=settings["measure"]["patience_s"])
    error = abs(predicted - measured["speedup"]) / measured["speedup"]
    # How far this machine's speed moved between the table and this measurement: the dense model is the table's
    # full size, so its time now over the table's full time (1: no drift).
    drift = measured["dense_median_s"] / table.full_seconds
    point.update(predicted=predicted, measured=measured["speedup"], error=error, dense_now_over_table=drift,
                 within_tolerance=error <= settings["tolerance"], tolerance=settings["tolerance"], **layout,
                 measurement={**measured, "seconds": time.perf_counter() - started})
    log(f"  {allocation} {asked:g}×: predicted {predicted:.3f}×, measured {measured['speedup']:.3f}× (error "
        f"{error:.1%}{', busy' if measured.get('busy') else ''}); {layout_summary(point)}")
    del compressed
    gc.collect()
    return point


# ---- run ----


def run(settings: dict, folder: Path, only: list[str] | None, runtimes: list[str] | None, shapes: list[str] | None,
        asked: list[float] | None, allocations: list[str] | None, force: bool, refresh_tables: bool,
        argv: list[str] | None) -> None:
    """Measure every point of `settings` that the filters keep and that has no file yet (all of them with `force`)."""
    pick = {"models": only, "runtimes": runtimes, "shapes": [shape_key(s) for s in shapes] if shapes else None,
            "asked": asked, "allocations": allocations}
    chosen = {}
    for key, wanted in pick.items():
        if wanted is None:
            chosen[key] = list(settings[key])
            continue
        missing = [w for w in wanted if w not in settings[key]]
        if missing:
            raise SystemExit(f"--{key if key != 'models' else 'only'} {missing}: not among the yaml's {key} "
                             f"{settings[key]}")
        chosen[key] = [v for v in settings[key] if v in wanted]
    for runtime in chosen["runtimes"]:  # before any long work
        problem = latency.runtime_problem(runtime)
        if problem:
            raise SystemExit(f"runtime {problem}")
    points_dir, tables_dir = folder / "points", folder / "tables"
    header = common.result_header(BENCHMARK, __file__, argv, PROTOCOL)
    started = time.perf_counter()
    for model_name in chosen["models"]:
        dense = None
        for runtime in chosen["runtimes"]:
            for shape in chosen["shapes"]:
                todo = [(allocation, x) for allocation in chosen["allocations"] for x in chosen["asked"]
                        if force or not (points_dir / f"{point_name(model_name, runtime, shape, allocation, x)}.json"
                                         ).is_file()]
                if not todo:
                    log(f"{model_name} {runtime} {shape}: every point has a result (--force to measure again)")
                    continue
                if dense is None:
                    common.setup_threads(settings["threads"])
                    dense, description = common.build_model(model_name, settings["seed"])
                spec = latency.LatencySpec.of(runtime, shape, settings["threads"])
                log(f"{model_name} {runtime} {shape}: {len(todo)} point(s); the latency table first")
                table = latency.measure_latency_table(dense, spec, directory=tables_dir, refresh=refresh_tables,
                                                      log=log, **settings["table"])
                for allocation, x in todo:
                    point = measure_point(dense, table, spec, model_name, allocation, x, settings)
                    point.update(model_description=description, machine=header["machine"], command=header["command"],
                                 protocol=PROTOCOL, seed=settings["seed"])
                    common.write_json(points_dir / f"{point_name(model_name, runtime, shape, allocation, x)}.json",
                                      point)
                    write_summary(settings, folder)
        del dense
        gc.collect()
    log(f"done in {time.perf_counter() - started:.0f} s; summary in {folder / 'predictor.json'}")


def all_points(settings: dict) -> list[tuple[str, str, str, str, float]]:
    return [(m, r, s, a, x) for m in settings["models"] for r in settings["runtimes"] for s in settings["shapes"]
            for a in settings["allocations"] for x in settings["asked"]]


def write_summary(settings: dict, folder: Path) -> dict:
    """<folder>/predictor.json: every point of the yaml that has a file (in the yaml's order), the ones still missing,
    the tables the points were predicted from, and whether every measured point is within the tolerance."""
    points, missing, tables = [], [], {}
    for key in all_points(settings):
        path = folder / "points" / f"{point_name(*key)}.json"
        if not path.is_file():
            missing.append(point_name(*key))
            continue
        point = json.loads(path.read_text())
        points.append({k: v for k, v in point.items() if k not in ("machine", "command", "protocol")}
                      | {"file": path.name, "machine": point["machine"]["cpu_model"],
                         "date_utc": point["machine"]["date_utc"], "git_commit": point["machine"]["git_commit"]})
        name = f"{point['model']} {point['runtime']} {point['shape']}"
        if name not in tables or (tables[name]["cached"] and not point["table"]["cached"]):
            tables[name] = point["table"]  # the point that measured it, where there is one
    measured = [p for p in points if not p["unreachable"]]
    summary = {"benchmark": BENCHMARK, "protocol": PROTOCOL, "tolerance": settings["tolerance"],
               "points": points, "missing": missing, "tables": tables,
               "all_within_tolerance": bool(measured) and not missing and all(p["within_tolerance"] for p in measured),
               "any_busy": any(p["measurement"].get("busy") for p in measured)}
    common.write_json(folder / "predictor.json", summary)
    return summary


# ---- summarize ----


def layout_summary(point: dict) -> str:
    """"heads 12,12,0,…; FFN 1536,…; emptied: attn L2, FFN L5" (layers from 0), with "; stream 288" where the
    residual stream was cut."""
    emptied = [f"attn L{i}" for i in point["emptied_attention"]] + [f"FFN L{i}" for i in point["emptied_ffn"]]
    heads, widths = (",".join(map(str, point[key])) for key in ("heads_per_layer", "ffn_width_per_layer"))
    stream = f"; stream {point['hidden_size']}" if point.get("hidden_size") is not None else ""
    return f"heads {heads}; FFN {widths}{stream}; emptied: {', '.join(emptied) if emptied else 'none'}"


def markdown(summary: dict) -> str:
    """The P6 tables of docs/benchmarks.md from predictor.json."""
    rows = [("| model | runtime | batch × tokens | allocation | asked | predicted | measured | error | within "
             f"{summary['tolerance']:.0%} | encoder FLOPs kept | layout (layers from 0) | dense now / table | busy |"),
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in summary["points"]:
        where = (f"| {p['model']} | {p['runtime']} | {p['shape'].replace('x', ' × ')} | {p['allocation']} | "
                 f"{p['asked']:g}× |")
        if p["unreachable"]:
            rows.append(f"{where} unreachable (largest {p['largest_reachable']:.2f}×) | — | — | — | — | — | — | — |")
            continue
        busy = p["measurement"].get("busy")
        rows.append(f"{where} {p['predicted']:.2f}× | {p['measured']:.2f}× | {p['error']:.1%} | "
                    f"{'yes' if p['within_tolerance'] else '**no**'} | {p['encoder_flops_kept']:.1%} | "
                    f"{layout_summary(p)} | {p.get('dense_now_over_table', float('nan')):.2f} | "
                    f"{'**busy**' if busy else 'no' if busy is not None else 'n/a'} "
                    f"({p['measurement']['max_foreign_load_cores'] or 0:.2f}) |")
    tables = [("| model | runtime | batch × tokens | table built in | cached | repeats | full / every block empty | "
               "largest speedup | additivity factor | busy while built |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in summary["tables"].items():
        model, runtime, shape = name.split(" ")
        tables.append(f"| {model} | {runtime} | {shape.replace('x', ' × ')} | {t['build_seconds']:.0f} s "
                      f"({t['measured_at']}) | {'yes' if t['cached'] else 'no'} | {t['repeats']} | "
                      f"{t['full_ms']:.2f} / {t['empty_ms']:.2f} ms | {t['largest_speedup']:.2f}× | "
                      f"{t['additivity_factor']:.3f} | {'**busy**' if t['busy'] else 'no'} "
                      f"({t['max_foreign_load_cores'] or 0:.2f}) |")
    measured = [p for p in summary["points"] if not p["unreachable"]]
    verdict = (f"{sum(p['within_tolerance'] for p in measured)} of {len(measured)} measured points within "
               f"{summary['tolerance']:.0%}" + (f"; {len(summary['missing'])} points not run yet"
                                                 if summary["missing"] else ""))
    machines = sorted({f"{p['machine']} (commit {p['git_commit'][:7]}, {p['date_utc']})" for p in summary["points"]})
    threshold = next((p["measurement"]["busy_threshold_cores"] for p in measured), 0.25)
    busy = (f"{verdict}. Busy: other processes used {threshold:g} cores or more during a kept repeat (in brackets: "
            "the most they used, in cores).")
    where = ("Measured on: " + "; ".join(machines)) if machines else "Nothing measured yet."
    return "\n".join([*rows, "", busy, "", *tables, "", where])


def main(argv: list[str] | None = None) -> int:
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--table", type=Path, default=TABLE, help="the yaml of points (default benchmarks/p6.yaml)")
    shared.add_argument("--smoke", action="store_true",
                        help="the yaml's smoke block (tiny model, results under benchmarks/results/tmp/p6_smoke)")
    shared.add_argument("--gpu", action="store_true",
                        help="the yaml's gpu block (CUDA latency tables and points, within a lent device's 5 minutes)")
    shared.add_argument("--stream", action="store_true",
                        help="the yaml's stream block (the residual stream's channels pruned too, as with "
                             "--oto_prune_hidden true; tables timed at narrower stream widths)")
    shared.add_argument("--results", type=Path, help="results folder instead of the yaml's")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_cmd = sub.add_parser("run", parents=[shared], help="measure the points without a result (resumable)")
    run_cmd.add_argument("--only", nargs="+", metavar="MODEL", help="these models of the yaml (default: all)")
    run_cmd.add_argument("--runtimes", nargs="+", help="these runtimes of the yaml (default: all)")
    run_cmd.add_argument("--shapes", nargs="+", metavar="BxT", help="these shapes of the yaml (default: all)")
    run_cmd.add_argument("--asked", nargs="+", type=float, help="these asked speedups of the yaml (default: all)")
    run_cmd.add_argument("--allocations", nargs="+", help="these allocations of the yaml (default: all)")
    run_cmd.add_argument("--force", action="store_true", help="measure again points that have a result")
    run_cmd.add_argument("--refresh-tables", action="store_true",
                         help="measure the latency tables again even where one is cached (e.g. on a quiet machine "
                              "after one was built on a busy one)")
    sub.add_parser("summarize", parents=[shared], help="write predictor.json again and print the markdown tables")
    args = parser.parse_args(argv)
    if args.smoke + args.gpu + args.stream > 1:
        parser.error("--smoke, --gpu and --stream name different blocks of the yaml: give one")
    settings = load_settings(args.table, args.smoke, "gpu" if args.gpu else "stream" if args.stream else None)
    folder = results_dir(settings, args.results)
    if args.command == "run":
        run(settings, folder, args.only, args.runtimes, args.shapes, args.asked, args.allocations, args.force,
            args.refresh_tables, argv)
    else:
        print(markdown(write_summary(settings, folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
