"""Which attention to trace into an ONNX file: onnxruntime's speed of the same dense model exported with its SDPA
attention (`export_onnx(..., attn_implementation=None)`) and in the eager form (`export_onnx`'s default), timed
interleaved in one process (`oto_hf.timing.interleaved`: the order alternated every repeat, one warm-up round;
paired per-repeat ratios; other processes' CPU load recorded), on the CPU with 2 threads, at batch × tokens 1 × 128
and 32 × 384, random token ids, all-ones masks. The evidence of docs/deployment.md's "Which attention is traced".

    python benchmarks/export_attention.py --out benchmarks/results/export_attention.json   # MiniLM and bert-base
    python benchmarks/export_attention.py --configs tiny --repeats 2 --out /tmp/attention.json   # a smoke run
"""

import argparse
import sys
import tempfile
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets the offline environment before transformers is imported)

from oto_hf import export, timing  # noqa: E402

TRACES = {"sdpa": None, "eager": "eager"}  # label: export_onnx's attn_implementation


def measure(config: str, shapes, repeats: int, threads: int, workdir: Path) -> dict:
    dense, description = common.build_model(config, 0, attn_implementation="sdpa")
    paths, diffs = {}, {}
    for label, attn in TRACES.items():
        paths[label] = workdir / f"{config}_{label}.onnx"
        export.export_onnx(dense, paths[label], attn_implementation=attn)
        diffs[label] = export.check_onnx(dense, paths[label])
    sessions = {label: common.onnx_session(path, threads) for label, path in paths.items()}
    result = {"model": description, "max_abs_diff_vs_pytorch": diffs, "shapes": {}}
    for batch, tokens in shapes:
        inputs = common.random_batch(dense.config, batch, tokens, "cpu", 0)
        feed = {name: inputs[name].numpy() for name in ("input_ids", "attention_mask", "token_type_ids")}
        times = timing.interleaved({label: partial(session.run, None, feed) for label, session in sessions.items()},
                                   repeats if batch * tokens > 1024 else 4 * repeats, warmup=1)
        ratios = [s / e for s, e in zip(times.seconds["sdpa"], times.seconds["eager"])]
        result["shapes"][f"{batch}x{tokens}"] = {
            "median_ms": {label: 1e3 * median for label, median in times.medians().items()},
            "sdpa_over_eager_paired_median": times.ratio("sdpa", "eager")["paired_median"],
            "sdpa_over_eager_min_max": [min(ratios), max(ratios)], "repeats": times.repeats, "seconds": times.seconds,
            **times.load()}
        shape = result["shapes"][f"{batch}x{tokens}"]
        common.log(f"{config} {batch}x{tokens}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in shape["median_ms"].items())
                   + f"; SDPA trace / eager trace {shape['sdpa_over_eager_paired_median']:.3f} "
                   f"(paired median of {len(ratios)}, range {min(ratios):.3f}–{max(ratios):.3f})")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["minilm", "bert-base"], help="default minilm bert-base")
    parser.add_argument("--shapes", nargs="+", type=common.parse_shape, default=[(1, 128), (32, 384)])
    parser.add_argument("--repeats", type=int, default=6,
                        help="interleaved pairs at 32 x 384 (4 times as many for shapes of at most 1,024 tokens)")
    parser.add_argument("--threads", type=int, default=common.THREADS)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    common.setup_threads(args.threads)
    payload = common.result_header("Traced attention in onnxruntime: SDPA against eager", __file__, argv,
                             "dense model, both files in one process, alternated every repeat; paired ratios")
    with tempfile.TemporaryDirectory() as tmp:
        payload["results"] = {c: measure(c, args.shapes, args.repeats, args.threads, Path(tmp)) for c in args.configs}
    common.write_json(args.out, payload)
    common.log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
