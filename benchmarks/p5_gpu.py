"""P5 — GPU latency of compressed models in fp16 and bf16: a prepared script for a lent GPU (never run in CI).

The model (`--config`): `minilm`, the packaged all-MiniLM-L6-v2 (real weights) as BertForQuestionAnswering (the QA
head initialised from `--seed`); `bert-base`, BertConfig's defaults (bert-base size) with random weights (speed
does not depend on the weights); `tiny`, a 2-layer toy config for the smoke check. Attention is PyTorch's SDPA
(attn_implementation="sdpa") in every model.

Two compressed copies are made, removing 50% and 70% (`--fractions`) of the encoder FLOPs at 384 tokens with the
uniform layout that HSPG uses by default: every layer gives up that fraction of its cost, its heads the nearest
whole number of their share, its FFN neurons the rest; within a layer and kind the lowest-L2-norm groups go. They
are zeroed in a copy of the dense model (group-sparse) and cut out by `oto_hf.compress`; the float32 outputs of the
group-sparse and compressed models are compared (max |Δ|) before timing. Models and copies are the benchmarks' own
(`common.build_model`, `common.compressed_copies`), the ones `p5_onnx.py` exports.

Timed: the whole model (embeddings and task head included) under `torch.inference_mode()`, dense against each
compressed copy, in each dtype (`--dtypes`, default fp16 and bf16) at batch × tokens 32 × 384 and 1 × 128
(`--shapes`), all-ones attention masks, random token ids. Each repeat times every variant once, in an order rotated
every repeat (interleaved, `oto_hf.timing.interleaved`); one timing is the mean of `inner` back-to-back calls (chosen
after warm-up so that one timing of the fastest variant lasts about `--min-timing-s`), bracketed by
`torch.cuda.synchronize()`; the CPU load of other processes during each repeat is recorded. Reported: per-variant
medians,
speedup = dense median / compressed median, with the median of the per-repeat (paired) ratios, next to the encoder
FLOPs ratio dense / compressed at that sequence length (`oto_hf.model_stats`).

The run stops adding repeats once `--budget-s` (default 240 s, from the start, loading included) is spent, so that
with loading it finishes within 5 minutes; a truncated block says so in the JSON. It refuses to run without CUDA
unless `--device cpu` is given (`--device cpu --repeats 1 --config tiny`: a smoke check of the script, not a
measurement).

    python benchmarks/p5_gpu.py --out benchmarks/results/p5_gpu_minilm.json
    python benchmarks/p5_gpu.py --config bert-base --out benchmarks/results/p5_gpu_bert_base.json
    python benchmarks/p5_gpu.py --device cpu --repeats 1 --config tiny --out /tmp/p5_smoke.json
"""

import argparse
import copy
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets the offline environment before transformers is imported)

import torch  # noqa: E402

import oto_hf  # noqa: E402
from oto_hf import timing  # noqa: E402

CONFIGS = ("minilm", "bert-base", "tiny")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
STATS_SEQ_LEN = 384


@torch.inference_mode()
def time_block(variants: dict, inputs: dict, args, deadline: float) -> dict:
    """Interleaved timings of every variant on `inputs` (`oto_hf.timing.interleaved`, CUDA-synchronised on a GPU):
    warm-up, calibration of `inner`, then up to `args.repeats` repeats (fewer if `deadline` passes), the order
    rotated every repeat; other processes' CPU load recorded."""
    synchronize = torch.cuda.synchronize if args.device.startswith("cuda") else None
    times = timing.interleaved({name: partial(model, **inputs) for name, model in variants.items()}, args.repeats,
                               warmup=args.warmup, min_timing_s=args.min_timing_s, max_inner=args.max_inner,
                               deadline=deadline, synchronize=synchronize)
    return {"inner": times.inner, "repeats": times.repeats, "truncated_by_budget": times.truncated_by_deadline,
            "foreign_load_cores": times.foreign_load_cores, "seconds": times.seconds, "median_s": times.medians(),
            "speedup": {label: times.ratio("dense", label) for label in variants if label != "dense"}}


def run(args) -> dict:
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    dense, description = common.build_model(args.config, args.seed, attn_implementation="sdpa")
    copies, zeroed, max_diff = common.compressed_copies(dense, args.fractions, args.seed)
    stats = {}
    for seq_len in sorted({tokens for _, tokens in args.shapes} | {STATS_SEQ_LEN}):  # the layout's own, too
        base = oto_hf.model_stats(dense, seq_len)
        stats[seq_len] = {label: base.encoder_flops / oto_hf.model_stats(m, seq_len).encoder_flops
                          for label, m in copies.items()}
    common.log(f"{description}; attention {dense.config._attn_implementation}; compressed heads per layer "
               + "; ".join(f"{label}: {m.config.num_attention_heads_per_layer}" for label, m in copies.items())
               + f"; max |Δ logits| group-sparse vs compressed (fp32): {max_diff}")

    results = {}
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        variants = {"dense": copy.deepcopy(dense).to(args.device, dtype)}
        variants.update({label: copy.deepcopy(m).to(args.device, dtype) for label, m in copies.items()})
        for batch, tokens in args.shapes:
            key = f"{dtype_name} {batch}x{tokens}"
            inputs = common.random_batch(dense.config, batch, tokens, args.device, args.seed)
            block = time_block(variants, inputs, args, deadline)
            for label, speedup in block["speedup"].items():
                speedup["encoder_flops_ratio"] = stats[tokens][label]
            medians = block["median_s"]
            results[key] = block
            common.log(f"  {key}: " + ", ".join(f"{n} {1e3 * s:.3f} ms" for n, s in medians.items())
                       + f" ({block['repeats']} repeats of {block['inner']} calls"
                       + (", truncated by the time budget)" if block["truncated_by_budget"] else ")"))
        del variants
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return {"model": description, "attention": dense.config._attn_implementation, "fractions": args.fractions,
            "zeroed": zeroed, "max_abs_logit_diff_sparse_vs_compressed_fp32": max_diff,
            "heads_per_layer": {label: m.config.num_attention_heads_per_layer for label, m in copies.items()},
            "ffn_width_per_layer": {label: m.config.intermediate_size_per_layer for label, m in copies.items()},
            "encoder_flops_ratio_dense_over_compressed": {str(k): v for k, v in stats.items()},
            "latency": results, "wall_time_s": time.perf_counter() - t_start}


def print_table(result: dict) -> None:
    common.log("\nP5 — latency, dense vs compressed (SDPA; medians of interleaved repeats; speedup = dense / "
               "compressed)")
    common.log(f"{'dtype':<6} {'input':<8} {'model':<8} {'median ms':>10} {'speedup':>8} {'paired':>8} "
               f"{'FLOPs ratio':>11} {'speedup/FLOPs':>13}")
    for key, block in result["latency"].items():
        dtype, shape = key.split()
        common.log(f"{dtype:<6} {shape:<8} {'dense':<8} {1e3 * block['median_s']['dense']:>10.3f}")
        for label, s in block["speedup"].items():
            common.log(f"{dtype:<6} {shape:<8} {label:<8} {1e3 * block['median_s'][label]:>10.3f} "
                       f"{s['ratio_of_medians']:>8.3f} {s['paired_median']:>8.3f} {s['encoder_flops_ratio']:>11.3f} "
                       f"{s['ratio_of_medians'] / s['encoder_flops_ratio']:>13.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=CONFIGS, default="minilm")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke check only)")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["fp16", "bf16"])
    common.add_block_timing_arguments(parser, repeats=30, warmup=3, min_timing_s=0.02, max_inner=50)
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="stop adding repeats after this many seconds from the start (default 240)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads with --device cpu (default 1: the smoke check measures nothing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="where to write the JSON results")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device: P5 measures GPU latency and needs a GPU (for a smoke check of the script on "
              "the CPU: --device cpu --repeats 1 --config tiny)", file=sys.stderr)
        return 2
    if args.device == "cpu":
        common.setup_threads(args.threads)
    payload = common.result_header(
        "P5 GPU latency of compressed models (fp16/bf16, SDPA)", __file__, argv,
        "dense and compressed copies interleaved (order rotated every repeat), warm-up calls first; one timing = "
        "mean of `inner` back-to-back calls between torch.cuda.synchronize(); inference_mode, eval; medians")
    payload["device"] = {"device": args.device, "cuda_version": torch.version.cuda,
                         "name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
    payload["results"][args.config] = run(args)
    common.write_json(args.out, payload)
    print_table(payload["results"][args.config])
    common.log(f"\nwrote {args.out} (wall time {payload['results'][args.config]['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
