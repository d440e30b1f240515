"""P5 on CPU — serving speed in ONNX Runtime: compressed against dense, fp32 and int8 (benchmark protocol, P5).

A prepared script: run it on an otherwise idle machine (docs/deployment.md, "P5 (CPU, onnxruntime)"); on a shared
machine its ratios are noise.

The models are those of `benchmarks/p5_gpu.py` (`common.build_model` and `common.compressed_copies`):
`--config minilm` (the packaged all-MiniLM-L6-v2, real weights, as BertForQuestionAnswering), `bert-base`
(BertConfig's defaults, random weights: speed does not depend on them) or `tiny` (a 2-layer toy, the smoke check),
loaded with SDPA attention, and copies compressed with the uniform layout that removes 50% and 70% (`--fractions`) of every
layer's encoder FLOPs at 384 tokens (lowest-norm heads and FFN neurons zeroed, then cut out by `oto_hf.compress`).

Each model (dense and every compressed copy) is exported in float32 with `oto_hf.export.export_onnx` (its attention
traced in the eager form, export_onnx's default; `--attention model` traces the SDPA the models run in PyTorch; the
dynamo exporter by default, about 26 s per bert-base model on the busy 2-core machine; `--exporter torchscript` for
torch's faster deprecated one, same outputs) and quantized to int8 with `export.quantize_int8`, what
`export_onnx(..., quantize="int8")` runs (onnxruntime's dynamic quantization, int8 weights per output channel,
activations quantized at run time; about 14 s for bert-base). Every file is checked against its PyTorch model
with `check_onnx` (max |Δ| per output; fp32 must be within `--atol`, int8 is only measured).

Timed: `InferenceSession.run` of every file (variants "fp32 dense", "fp32 50%", …, "int8 70%"), one session per
file built once, CPUExecutionProvider, intra_op_num_threads = `--threads` (default 2; torch.set_num_threads too),
inter_op_num_threads 1, sequential execution, all graph optimisations, onnxruntime's default thread spinning; at
batch × tokens 32 × 384 and 1 × 128 (`--shapes`), random token ids, all-ones attention masks, zero token types, the
same numpy feed for every variant. Per shape: `--warmup` untimed runs per variant, then one timed run each, from
which `inner` is chosen so that one timing of the fastest variant lasts about `--min-timing-s` (at most
`--max-inner`); then `--repeats` repeats, each timing every variant once in an order rotated every repeat
(interleaved, all six variants in the same process and the same repeats); one timing = the mean of `inner`
back-to-back runs (`oto_hf.timing.interleaved`). The CPU time other processes used during each repeat is recorded (a
noise indicator: ~0 on an idle machine). Shapes are timed cheapest first.

Reported per shape (medians; for each ratio the ratio of medians and the median and IQR of per-repeat ratios):
* fp32 dense / fp32 compressed, per fraction, beside the encoder FLOPs ratio dense / compressed at that length
  (`oto_hf.model_stats`) and speedup / FLOPs ratio (target: ≥ 0.9 at 32 × 384);
* int8 dense / int8 compressed, per fraction, with the same FLOPs ratio;
* fp32 dense / int8 compressed: the combined gain of pruning and quantization;
* fp32 / int8 of each model: the gain of quantization alone.
Also: file sizes, export and quantization times, every file's max |Δ| against PyTorch, the compressed models' max
|Δ| against their group-sparse originals (PyTorch, fp32), the machine (`common.machine_info`, onnxruntime's version,
the CPU's int8-relevant flags) and the load average at the start, before timing and at the end.

Quality is NOT measured here: the jobs' `--export_onnx --quantize int8` (run_squad.py, run_glue.py) and
`benchmarks/quality.py onnx` score the int8 file of a trained compressed model on real dev data. The timing stops adding repeats to a shape once its share of
`--budget-s` (the time left, split evenly over the shapes still to time) is spent; a truncated shape says so.

    python benchmarks/p5_onnx.py --repeats 20 --profile 5 --out benchmarks/results/p5_onnx_minilm.json
    python benchmarks/p5_onnx.py --config bert-base --repeats 10 --out benchmarks/results/p5_onnx_bert_base.json
    python benchmarks/p5_onnx.py --attention model --repeats 20 --out benchmarks/results/p5_onnx_minilm_sdpa.json
    python benchmarks/p5_onnx.py --config tiny --repeats 1 --shapes 2x16 --threads 1 --out /tmp/p5_onnx_smoke.json
    python benchmarks/p5_onnx.py --config tiny --repeats 1 --shapes 2x16 --threads 1 --exporter torchscript \
        --min-timing-s 0.005 --out /tmp/p5_onnx_smoke.json    # the test's smoke run: ~15 s instead of ~30 s
    python benchmarks/p5_onnx.py --show benchmarks/results/p5_onnx_minilm.json   # the tables of a finished run
"""

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets the offline environment before transformers is imported)
from p5_gpu import CONFIGS, STATS_SEQ_LEN  # noqa: E402

import oto_hf  # noqa: E402
from oto_hf import export, timing  # noqa: E402

TARGET_QUOTIENT = 0.9  # speedup / encoder FLOPs ratio, fp32, at 32 x 384
TARGET_SHAPE = (32, 384)
INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags() -> list[str]:
    """Which of the CPU flags that decide onnxruntime's int8 kernels this machine has."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in INT8_FLAGS if flag in present]
    except OSError:
        pass
    return []


def load_average():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def file_bytes(path: Path) -> int:
    """Size of an .onnx file with its external data file, if any."""
    data = Path(str(path) + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def prepare(args, workdir: Path) -> tuple[dict, dict]:
    """Build the models, export and check every file; returns (the result's description, {variant: .onnx path},
    the dense model's config)."""
    dense, description = common.build_model(args.config, args.seed, attn_implementation="sdpa")
    copies, zeroed, sparse_diff = common.compressed_copies(dense, args.fractions, args.seed)
    models = {"dense": dense, **copies}
    stats = {}
    for seq_len in sorted({tokens for _, tokens in args.shapes} | {STATS_SEQ_LEN}):
        base = oto_hf.model_stats(dense, seq_len)
        stats[str(seq_len)] = {label: base.encoder_flops / oto_hf.model_stats(m, seq_len).encoder_flops
                               for label, m in models.items() if label != "dense"}

    files, paths = {}, {}
    for label, model in models.items():
        target = workdir / f"{args.config}_{label.rstrip('%')}.onnx"
        t0 = time.perf_counter()
        info = export.export_onnx(model, target, exporter=args.exporter,
                                  attn_implementation=None if args.attention == "model" else args.attention)
        export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        int8 = export.quantize_int8(target)
        quantize_s = time.perf_counter() - t0
        fp32_diff = export.check_onnx(model, target, atol=args.atol)  # raises OnnxMismatchError above --atol
        int8_diff = export.check_onnx(model, int8, atol=None)
        files[f"fp32 {label}"] = {"bytes": info["bytes"], "export_s": export_s, "max_abs_diff_vs_pytorch": fp32_diff}
        files[f"int8 {label}"] = {"bytes": file_bytes(int8), "quantize_s": quantize_s,
                                  "max_abs_diff_vs_pytorch": int8_diff}
        paths[f"fp32 {label}"], paths[f"int8 {label}"] = target, int8
        common.log(f"{label}: exported in {export_s:.1f} s ({info['bytes'] / 1e6:.1f} MB, max |Δ| "
                   f"{max(fp32_diff.values()):.2e}), int8 in {quantize_s:.1f} s ({file_bytes(int8) / 1e6:.1f} MB, "
                   f"max |Δ| {max(int8_diff.values()):.2e})")
    order = [f"{dtype} {label}" for dtype in ("fp32", "int8") for label in ["dense", *zeroed]]
    result = {
        "model": description, "attention": dense.config._attn_implementation,
        "attention_traced": info["attn_implementation"], "exporter": args.exporter,
        "opset": export.DEFAULT_OPSET, "fractions": args.fractions, "zeroed": zeroed,
        "heads_per_layer": {label: m.config.num_attention_heads_per_layer for label, m in models.items()
                            if label != "dense"},
        "ffn_width_per_layer": {label: m.config.intermediate_size_per_layer for label, m in models.items()
                                if label != "dense"},
        "max_abs_logit_diff_sparse_vs_compressed_fp32": sparse_diff,
        "encoder_flops_ratio_dense_over_compressed": stats,
        "files": {name: files[name] for name in order},
    }
    return result, {name: paths[name] for name in order}, dense.config


def time_block(sessions: dict, feed: dict, args, deadline: float) -> dict:
    """Interleaved timings of every session on `feed` (`oto_hf.timing.interleaved`): warm-up, calibration of `inner`
    on the fastest, then up to `args.repeats` repeats (fewer if `deadline` passes), the order rotated every repeat;
    other processes' CPU load recorded per repeat."""
    times = timing.interleaved({name: partial(session.run, None, feed) for name, session in sessions.items()},
                               args.repeats, warmup=args.warmup, min_timing_s=args.min_timing_s,
                               max_inner=args.max_inner, deadline=deadline)
    return {"inner": times.inner, "repeats": times.repeats, "truncated_by_budget": times.truncated_by_deadline,
            "foreign_load_cores": times.foreign_load_cores, "seconds": times.seconds, "median_s": times.medians()}


def profile_ops(paths: dict, feed: dict, threads: int, runs: int, workdir: Path) -> dict:
    """Where the time goes: each file run `runs` times under onnxruntime's profiler after one profiled warm-up run
    (left out), and the milliseconds per run its kernels spent, by operator type, largest first. The profiler's own
    cost makes these totals a little above the timed medians; compare shares, not absolute times."""
    out = {}
    for name, path in paths.items():
        session = common.onnx_session(path, threads, workdir / f"profile_{name.replace(' ', '_').rstrip('%')}")
        for _ in range(runs + 1):
            session.run(None, feed)
        trace = Path(session.end_profiling())
        events = json.loads(trace.read_text())
        trace.unlink()
        starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
        per_op: dict[str, float] = {}
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= starts[1]:
                op = e["args"]["op_name"]
                per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1e3 / runs
        out[name] = dict(sorted(per_op.items(), key=lambda kv: -kv[1]))
    return out


def ratios(block: dict, labels: list[str], flops: dict[str, float], shape: tuple[int, int]) -> dict:
    """The protocol's ratios of one shape (numerator / denominator: > 1 means the denominator is faster)."""
    seconds = block["seconds"]
    out = {}

    def add(kind: str, num: str, den: str, flops_ratio: float | None = None):
        entry = {"kind": kind, **timing.ratio_summary(seconds[num], seconds[den])}
        if flops_ratio is not None:
            entry["encoder_flops_ratio"] = flops_ratio
            entry["speedup_over_flops_ratio"] = entry["ratio_of_medians"] / flops_ratio
            if kind == "fp32 compression" and shape == TARGET_SHAPE:
                entry["meets_target"] = entry["speedup_over_flops_ratio"] >= TARGET_QUOTIENT
        out[f"{num} / {den}"] = entry

    for label in labels:
        add("fp32 compression", "fp32 dense", f"fp32 {label}", flops[label])
    for label in labels:
        add("int8 compression", "int8 dense", f"int8 {label}", flops[label])
    for label in labels:
        add("combined: int8 compressed vs fp32 dense", "fp32 dense", f"int8 {label}")
    for label in ["dense", *labels]:
        add("quantization alone", f"fp32 {label}", f"int8 {label}")
    return out


def run(args, workdir: Path, t_start: float) -> dict:
    deadline = t_start + args.budget_s
    result, paths, config = prepare(args, workdir)
    labels = list(result["zeroed"])
    gc.collect()  # the PyTorch models are no longer needed
    sessions = {name: common.onnx_session(path, args.threads) for name, path in paths.items()}
    input_names = [i.name for i in sessions["fp32 dense"].get_inputs()]
    result["session"] = {"provider": "CPUExecutionProvider", "intra_op_num_threads": args.threads,
                         "inter_op_num_threads": 1, "execution_mode": "sequential",
                         "graph_optimization_level": "ORT_ENABLE_ALL", "intra_op_spinning": "onnxruntime's default",
                         "input_names": input_names}
    result["load_average_before_timing"] = load_average()
    latency = {}
    shapes = sorted(args.shapes, key=lambda s: s[0] * s[1])  # cheapest first: what it leaves goes to the rest
    for i, (batch, tokens) in enumerate(shapes):
        key = f"{batch}x{tokens}"
        share = (deadline - time.perf_counter()) / (len(shapes) - i)
        inputs = common.random_batch(config, batch, tokens, "cpu", args.seed)
        feed = {name: inputs[name].numpy() for name in input_names}
        block = time_block(sessions, feed, args, time.perf_counter() + share)
        block["ratios"] = ratios(block, labels, result["encoder_flops_ratio_dense_over_compressed"][str(tokens)],
                                 (batch, tokens))
        latency[key] = block
        common.log(f"  {key}: " + ", ".join(f"{n} {1e3 * s:.2f} ms" for n, s in block["median_s"].items())
                   + f" ({block['repeats']} repeats of {block['inner']} runs"
                   + (", truncated by the time budget)" if block["truncated_by_budget"] else ")"))
    result["latency"] = {f"{b}x{t}": latency[f"{b}x{t}"] for b, t in args.shapes}
    if args.profile:
        batch, tokens = args.shapes[0]
        inputs = common.random_batch(config, batch, tokens, "cpu", args.seed)
        feed = {name: inputs[name].numpy() for name in input_names}
        result["profile"] = {"shape": f"{batch}x{tokens}", "runs": args.profile,
                             "ms_per_run_by_op": profile_ops(paths, feed, args.threads, args.profile, workdir)}
    result["load_average_at_end"] = load_average()
    result["wall_time_s"] = time.perf_counter() - t_start
    return result


def print_table(result: dict) -> None:
    common.log(f"\nP5 on CPU — onnxruntime, {result['session']['intra_op_num_threads']} threads: {result['model']}, "
               f"{result.get('attention_traced', result['attention'])} attention traced; "
               "medians of interleaved repeats; ratio = numerator / denominator (paired median [IQR])")
    common.log(f"{'input':<8} {'variant':<11} {'median ms':>10} {'file MB':>8} {'max |Δ| vs PyTorch':>19}")
    for key, block in result["latency"].items():
        for name, seconds in block["median_s"].items():
            file = result["files"][name]
            common.log(f"{key:<8} {name:<11} {1e3 * seconds:>10.3f} {file['bytes'] / 1e6:>8.2f} "
                       f"{max(file['max_abs_diff_vs_pytorch'].values()):>19.2e}")
    common.log(f"\n{'input':<8} {'ratio':<26} {'of medians':>10} {'paired [q1, q3]':>24} {'FLOPs ratio':>11} "
               f"{'speedup/FLOPs':>13} {'target':>7}")
    for key, block in result["latency"].items():
        for name, r in block["ratios"].items():
            flops = f"{r['encoder_flops_ratio']:>11.3f} {r['speedup_over_flops_ratio']:>13.3f}" \
                if "encoder_flops_ratio" in r else f"{'':>11} {'':>13}"
            target = ("ok" if r["meets_target"] else "below") if "meets_target" in r else ""
            common.log(f"{key:<8} {name:<26} {r['ratio_of_medians']:>10.3f} {r['paired_median']:>8.3f} "
                       f"[{r['paired_q1']:.3f}, {r['paired_q3']:.3f}] {flops} {target:>7}")
        loads = [x for x in block["foreign_load_cores"] if x is not None]
        common.log(f"{key:<8} {block['repeats']} repeats of {block['inner']} runs"
                   + (" (truncated by the time budget)" if block["truncated_by_budget"] else "")
                   + (f"; other processes used up to {max(loads):.2f} cores" if loads else ""))


def print_profile(result: dict) -> None:
    """Each file's milliseconds per run by operator type (the profiled shape), with dense / file for each type."""
    prof = result["profile"]
    by_op = prof["ms_per_run_by_op"]
    names = list(by_op)
    ops = list(dict.fromkeys(op for name in names for op in by_op[name]))
    common.log(f"\nonnxruntime profile at {prof['shape']}, ms per run by operator type ({prof['runs']} runs each)")
    common.log(f"{'operator':<24}" + "".join(f"{n:>12}" for n in names))
    for op in ops + ["total"]:
        row = [sum(by_op[n].values()) if op == "total" else by_op[n].get(op, 0.0) for n in names]
        common.log(f"{op:<24}" + "".join(f"{v:>12.2f}" for v in row))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=CONFIGS, default="minilm")
    common.add_block_timing_arguments(parser, repeats=10, warmup=1, min_timing_s=0.25, max_inner=100)
    parser.add_argument("--threads", type=int, default=common.THREADS,
                        help="onnxruntime intra-op threads and torch threads (default 2)")
    parser.add_argument("--budget-s", type=float, default=2400.0,
                        help="stop adding repeats once this many seconds from the start (exports included) are "
                             "spent, split evenly over the shapes left (default 2400)")
    parser.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo",
                        help="torch.onnx exporter (default dynamo; torchscript: torch's deprecated, faster one)")
    parser.add_argument("--attention", choices=["eager", "model"], default="eager",
                        help="attention traced into the files: eager (default, export_onnx's default) or the models' "
                             "own (SDPA)")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="largest max |Δ| of an fp32 file against PyTorch before the run stops (default 1e-4)")
    parser.add_argument("--workdir", default=None,
                        help="where the .onnx files go and stay (default: a temporary folder, deleted at the end)")
    parser.add_argument("--profile", type=int, default=0, metavar="RUNS",
                        help="after the timing, profile every file this many runs at the first --shapes shape and "
                             "record the time per operator type (default 0: no profile)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="where to write the JSON results")
    parser.add_argument("--show", metavar="JSON", help="print the tables of a finished run's JSON and exit")
    args = parser.parse_args(argv)
    if args.show:
        payload = json.loads(Path(args.show).read_text())
        for result in payload["results"].values():
            print_table(result)
            if "profile" in result:
                print_profile(result)
        return 0
    if not args.out:
        parser.error("--out is required (or --show JSON)")
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        print(f"error: P5 on CPU needs onnx, onnxruntime and onnxscript ({error}): pip install 'oto-hf[onnx]'",
              file=sys.stderr)
        return 2

    t_start = time.perf_counter()
    common.setup_threads(args.threads)
    payload = common.result_header(
        "P5 CPU serving speed in onnxruntime (fp32 and int8)", __file__, argv,
        "one InferenceSession per file (CPUExecutionProvider), built once; per shape every variant interleaved "
        "(order rotated every repeat) after warm-up runs; one timing = mean of `inner` back-to-back session.run "
        "calls; medians; ratios as ratio of medians and paired per-repeat medians [IQR]")
    payload["machine"].update(onnxruntime_version=onnxruntime.__version__, onnx_version=onnx.__version__,
                              cpu_int8_flags=cpu_flags())
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="p5_onnx_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, workdir, t_start)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result["workdir"] = str(workdir) if args.workdir else None
    payload["results"][args.config] = result
    common.write_json(args.out, payload)
    print_table(result)
    if "profile" in result:
        print_profile(result)
    common.log(f"\nwrote {args.out} (wall time {result['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
