"""Which onnxruntime session settings run a file fastest on this machine (issue 44): the dense model and its
compressed copies (`common.compressed_copies`, as P5 makes them), exported to float32 ONNX (eager attention, the
exporter's default), each run by `oto_hf.export.ort_session` under every candidate of `export.SESSION_SETTINGS`; all
these sessions timed interleaved in one process (`oto_hf.timing.interleaved`: a rotating order, one warm-up round,
calls per timing calibrated, busy repeats waited out and redone while patience lasts, other processes' load
recorded), at each batch × tokens, on random token ids. Beside it, what `export.fastest_session_settings` (the
short measurement `python -m oto_hf.export` records) picks for each file and shape. The evidence of
docs/deployment.md's "Session settings".

    python benchmarks/ort_session_settings.py      # MiniLM (real weights), dense and 70%, 1x128 and 32x128; ~3 min
    python benchmarks/ort_session_settings.py --config tiny --shapes 2x16 --repeats 1 --threads 1 \\
        --exporter torchscript --min-timing-s 0.005 --patience 0 --out /tmp/ort_settings.json   # the smoke run
"""

import argparse
import sys
import tempfile
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets the offline environment before transformers is imported)

from oto_hf import export, timing  # noqa: E402


def _shape(text: str) -> tuple[int, int]:
    try:
        return timing.parse_shape(text, "--shapes")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def prepare(args, workdir: Path) -> tuple[dict, dict, object]:
    """Export the dense model and its compressed copies and check every file under every settings against PyTorch;
    returns (the result's description, {label: .onnx path}, the dense model's config)."""
    dense, description = common.build_model(args.config, args.seed, attn_implementation="sdpa")
    copies, zeroed, _ = common.compressed_copies(dense, args.fractions, args.seed)
    paths, diffs = {}, {}
    for label, model in {"dense": dense, **copies}.items():
        paths[label] = workdir / f"{args.config}_{label.rstrip('%')}.onnx"
        export.export_onnx(model, paths[label], exporter=args.exporter)
        diffs[label] = {settings: export.check_onnx(model, paths[label], atol=args.atol, session_settings=settings)
                        for settings in export.SESSION_SETTINGS}
        common.log(f"{label}: exported, max |Δ| vs PyTorch "
                   + ", ".join(f"{s} {max(d.values()):.1e}" for s, d in diffs[label].items()))
    result = {"model": description, "exporter": args.exporter, "attention_traced": "eager", "zeroed": zeroed,
              "heads_per_layer": {label: m.config.num_attention_heads_per_layer for label, m in copies.items()},
              "ffn_width_per_layer": {label: m.config.intermediate_size_per_layer for label, m in copies.items()},
              "max_abs_diff_vs_pytorch": diffs}
    return result, paths, dense.config


def time_shape(sessions: dict, config, batch: int, tokens: int, args) -> dict:
    """Every (file, settings) session interleaved on one random batch; medians, per-file ratios, the load record."""
    inputs = common.random_batch(config, batch, tokens, "cpu", args.seed)
    variants = {}
    for name, session in sessions.items():
        feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
        variants[name] = partial(session.run, None, feed)
    times = timing.interleaved(variants, args.repeats, warmup=1, min_timing_s=args.min_timing_s,
                               max_inner=args.max_inner, quiet_threshold=args.quiet_threshold,
                               patience_s=args.patience, log=common.log)
    medians = times.medians()
    files = list(dict.fromkeys(name.split(" ", 1)[0] for name in sessions))
    per_file = {}
    for label in files:
        ms = {settings: 1e3 * medians[f"{label} {settings}"] for settings in export.SESSION_SETTINGS}
        per_file[label] = {"median_ms": ms, "fastest": min(ms, key=ms.get),
                           "all_fusions_over_others": {s: times.ratio(f"{label} all_fusions", f"{label} {s}")
                                                       for s in export.SESSION_SETTINGS if s != "all_fusions"}}
    return {"files": per_file, "repeats": times.repeats, "inner": times.inner,
            "discarded_repeats": len(times.discarded), "waited_s": times.waited_s, "seconds": times.seconds,
            **times.load()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="minilm", choices=common.MODELS,
                        help="the benchmark model (default minilm: all-MiniLM-L6-v2, real weights)")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.7],
                        help="shares of the encoder FLOPs removed in the compressed copies (default 0.7)")
    parser.add_argument("--shapes", nargs="+", type=_shape, default=[(1, 128), (32, 128)],
                        help="batch x tokens (default 1x128 32x128)")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved repeats per shape (default 15)")
    parser.add_argument("--min-timing-s", type=float, default=0.2,
                        help="calls per timing chosen so that the fastest variant's lasts about this long "
                             "(default 0.2)")
    parser.add_argument("--max-inner", type=int, default=100)
    parser.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest |Δ| to PyTorch allowed under any settings")
    common.add_timing_arguments(parser, patience=120.0, out="benchmarks/results/ort_session_settings.json")
    args = parser.parse_args(argv)
    common.setup_threads(args.threads)
    import onnxruntime

    payload = common.result_header(
        "onnxruntime session settings: every candidate of oto_hf.export.SESSION_SETTINGS on each file", __file__,
        argv, "every (file, settings) session in one process, interleaved in a rotating order, one warm-up round, "
              "calls per timing calibrated on the fastest, busy repeats redone while patience lasts; medians and "
              "paired ratios; fastest_session_settings' own short pick beside it")
    payload["machine"]["onnxruntime_version"] = onnxruntime.__version__
    payload["session_settings"] = {name: {k: list(v) for k, v in s.items()} for name, s in
                                   export.SESSION_SETTINGS.items()}
    with tempfile.TemporaryDirectory() as tmp:
        result, paths, config = prepare(args, Path(tmp))
        sessions = {f"{label} {settings}": export.ort_session(path, args.threads, settings, spinning=False)
                    for label, path in paths.items() for settings in export.SESSION_SETTINGS}
        result["threads"] = args.threads
        result["shapes"] = {}
        for batch, tokens in args.shapes:
            key = f"{batch}x{tokens}"
            common.log(f"{key}: timing {len(sessions)} sessions")
            block = time_shape(sessions, config, batch, tokens, args)
            for label, path in paths.items():
                pick = export.fastest_session_settings(path, batch, tokens, threads=args.threads)
                block["files"][label]["fastest_session_settings"] = pick
            result["shapes"][key] = block
            for label, file in block["files"].items():
                common.log(f"  {key} {label}: " + ", ".join(f"{s} {ms:.3g} ms" for s, ms in file["median_ms"].items())
                           + "; all_fusions / " + ", ".join(f"{s} {r['paired_median']:.3f} (paired median, range "
                                                            f"{r['paired_min']:.3f}-{r['paired_max']:.3f})"
                                                            for s, r in file["all_fusions_over_others"].items())
                           + f"; fastest {file['fastest']}, fastest_session_settings picks "
                             f"{file['fastest_session_settings']['settings']}")
            common.log(f"  {key}: " + timing.describe_load(block))
        del sessions
    payload["results"][args.config] = result
    common.write_json(args.out, payload)
    common.log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
