"""P3 — real speedup of the compressed model (benchmark protocol, section P3), for every supported family.

For each model, 50% of every layer's encoder FLOPs are set to exactly zero with the uniform layout
(`common.zero_uniform`: with 12 heads and an even FFN width, that is 50% of the attention heads and 50% of the FFN
neurons of every layer, the lowest-norm groups of each layer and kind; the random init, the task head and the data
sample come from `--seed`), giving a group-sparse model, which `oto_hf.compress` turns into a physically smaller
model.

Models: `minilm` (the packaged all-MiniLM-L6-v2, real weights) and, with random weights from their stock base
configurations (no other pretrained weights can be downloaded here; speed does not depend on the weights):
`bert-base`, `roberta-base`, `distilbert-base`, `deberta-v3-base`, `modernbert-base` (question answering) and
`vit-base` (image classification, 224 × 224 pixels: 197 tokens instead of 384).

Measured:
* correctness: max |Δ| of the logits between the group-sparse and the compressed model on real SQuAD dev
  question/context pairs tokenised to 384 tokens (random pixels for ViT) (must be ≤ 1e-4);
* inference latency, dense (the group-sparse model: the same shapes as the model it came from) against compressed,
  at batch 1 × 384 and batch 32 × 384, `torch.no_grad()`, eval mode, 2 threads, interleaved (order alternating
  every repeat, `oto_hf.timing.interleaved`; a repeat during which other processes used a quarter core or more is
  redone while `--patience` lasts, and every repeat's foreign load is recorded), medians: of the whole model (embeddings and task head included, which are not pruned) and, for
  the BERT models, of the encoder alone (`model.bert.encoder` on the embeddings and mask that the model's own
  forward gives it);
* the measured speedup next to the encoder FLOPs ratio (dense / compressed, from `oto_hf.model_stats`) and their
  quotient (target: ≥ 0.9 at batch 32);
* the time `oto_hf.compress` takes (median of a few runs; target on bert-base: < 2 s).

    python benchmarks/p3_speedup.py --models minilm bert-base --out benchmarks/results/p3.json
    python benchmarks/p3_speedup.py --models roberta-base distilbert-base deberta-v3-base modernbert-base vit-base \
        --batches 32 --no-encoder-only --out benchmarks/results/p3_families.json
    python benchmarks/p3_speedup.py --models minilm --batches 1 --repeats-b1 2 --compress-repeats 1 --check-examples 2 \
        --patience 0 --out /tmp/p3_smoke.json     # a smoke run of the script, not a measurement
"""

import argparse
import gc
import inspect
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets the offline environment before transformers is imported)

import torch  # noqa: E402

import oto_hf  # noqa: E402
from oto_hf import timing  # noqa: E402


SEQ_LEN = 384
MODELS = [name for name in common.MODELS if name != "tiny"]


def model_inputs(model: torch.nn.Module, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Real SQuAD question/context pairs at 384 tokens for a text model (token type ids only for the BERT models,
    which have a segment embedding), seeded random 224 × 224 images for a vision model."""
    if "pixel_values" in inspect.signature(model.forward).parameters:
        generator = torch.Generator().manual_seed(seed)
        size = model.config.image_size
        return {"pixel_values": torch.randn(batch_size, 3, size, size, generator=generator)}
    batch = common.squad_batch(batch_size, SEQ_LEN, split="dev", seed=seed)
    if model.config.model_type != "bert":
        batch.pop("token_type_ids")
    return batch


@torch.no_grad()
def capture_encoder_call(model: torch.nn.Module, batch: dict) -> tuple[tuple, dict]:
    """The exact (args, kwargs) that `model`'s forward hands to `model.bert.encoder` for `batch`."""
    captured = {}

    def hook(module, args, kwargs):
        captured["args"], captured["kwargs"] = args, dict(kwargs)

    handle = model.bert.encoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(**batch)
    finally:
        handle.remove()
    return captured["args"], captured["kwargs"]


def time_pair(dense, small, make_args, repeats: int, warmup: int, label: str, quiet: float, patience: float) -> dict:
    """Interleaved latency of `dense(...)` and `small(...)` (same inputs), medians and speedup dense/compressed."""
    dense_args, small_args = make_args(dense), make_args(small)

    def runner(module, args_kwargs):
        args, kwargs = args_kwargs

        def run():
            with torch.no_grad():
                module(*args, **kwargs)

        return run

    common.log(f"-- {label}: {repeats} repeats after {warmup} warm-up round(s)")
    times = timing.interleaved({"dense": runner(dense, dense_args), "compressed": runner(small, small_args)},
                               repeats, warmup=warmup, log=common.log, quiet_threshold=quiet, patience_s=patience)
    return {
        "seconds": times.seconds,
        "median_s": times.medians(),
        "foreign_load_cores": times.foreign_load_cores,
        "discarded_noisy_repeats": times.discarded,
        "waited_for_quiet_s": times.waited_s,
        "speedup": times.ratio("dense", "compressed"),  # dense / compressed
    }


def bench_model(name: str, args) -> dict:
    common.log(f"== {name}")
    model, description = common.build_model(name, args.seed)
    seq_len = oto_hf.zero_invariant_groups(model).default_seq_len  # 384 for text, 197 for ViT-base
    dense_stats = oto_hf.model_stats(model, seq_len)
    zeroed = common.zero_uniform(model, args.fraction, args.selection, args.seed)
    sparse = model  # group-sparse, same shapes (and so the same latency) as the dense model it came from

    # compress: time a few runs, keep the last result
    compress_times = []
    for _ in range(args.compress_repeats):
        gc.collect()
        t0 = time.perf_counter()
        small = oto_hf.compress(sparse)
        compress_times.append(time.perf_counter() - t0)
    small.eval()
    sparse_stats = oto_hf.model_stats(sparse, seq_len, exclude_zero_groups=False)
    small_stats = oto_hf.model_stats(small, seq_len)
    flops_ratio = sparse_stats.encoder_flops / small_stats.encoder_flops
    common.log(f"compress: median {statistics.median(compress_times):.3f} s over {len(compress_times)} runs; "
               f"encoder FLOPs ratio {flops_ratio:.3f}")

    # correctness on real tokenised text (random pixels for ViT)
    check = model_inputs(sparse, args.check_examples, seed=args.seed + 1)
    with torch.no_grad():
        a, b = common.logits(sparse(**check)), common.logits(small(**check))
    diff = {k: float((a[k] - b[k]).abs().max()) for k in a}
    diff["max"] = max(diff.values())
    common.log(f"max |Δ logits| group-sparse vs compressed on {args.check_examples} examples x {seq_len}: "
               f"{diff['max']:.3g}")

    latency = {}
    for batch_size in args.batches:
        batch = model_inputs(sparse, batch_size, seed=args.seed)
        repeats = args.repeats_b1 if batch_size == 1 else args.repeats
        if name == "bert-base" and batch_size > 1 and args.bert_base_repeats is not None:
            repeats = args.bert_base_repeats
        key = f"batch{batch_size}x{seq_len}"
        latency[key] = {"repeats": repeats,
                        "whole_model": time_pair(sparse, small, lambda m: ((), batch), repeats, 1,
                                                 f"{name} whole model, {key}", args.quiet_threshold,
                                                 args.patience)}
        if not args.no_encoder_only and hasattr(sparse, "bert"):
            latency[key]["encoder_only"] = time_pair(
                sparse.bert.encoder, small.bert.encoder,
                lambda enc: capture_encoder_call(sparse if enc is sparse.bert.encoder else small, batch),
                repeats, 1, f"{name} encoder only, {key}", args.quiet_threshold, args.patience)
        for part, res in latency[key].items():
            if isinstance(res, dict):
                s = res["speedup"]["paired_median"]
                res["speedup_over_flops_ratio"] = s / flops_ratio
                common.log(f"   {part}: speedup {s:.3f} (FLOPs ratio {flops_ratio:.3f}, quotient {s / flops_ratio:.3f})")

    result = {
        "model": description,
        "selection": f"{args.fraction:.0%} of every layer's encoder FLOPs, uniform layout ("
                     f"{zeroed['zeroed_heads']}/{zeroed['total_heads']} heads, "
                     f"{zeroed['zeroed_neurons']}/{zeroed['total_neurons']} FFN neurons), "
                     + ("lowest L2 norm per layer and kind" if args.selection == "norm" else "seeded random"),
        "zeroed": zeroed,
        "dense_stats": dense_stats.to_dict(),
        "compressed_stats": small_stats.to_dict(),
        "encoder_flops_ratio_dense_over_compressed": flops_ratio,
        "total_params_ratio_dense_over_compressed": sparse_stats.total_params / small_stats.total_params,
        "compress_seconds": compress_times,
        "compress_median_s": statistics.median(compress_times),
        "logits_max_abs_diff": diff,
        "logits_check": f"{args.check_examples} " + (
            "random images" if "pixel_values" in check else
            f"SQuAD dev question/context pairs, truncated/padded to {seq_len} tokens") + f" (seed {args.seed + 1}), eval mode",
        "latency": latency,
    }
    del sparse, small, model
    gc.collect()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["minilm", "bert-base"], choices=MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--repeats-b1", type=int, default=10, help="repeats at batch 1")
    parser.add_argument("--repeats", type=int, default=5, help="repeats at larger batches")
    parser.add_argument("--bert-base-repeats", type=int, default=None,
                        help="repeats at larger batches for bert-base, if fewer are wanted (batch 32 x 384 takes "
                             "~25 s per dense+compressed round on 2 cores); default: --repeats")
    parser.add_argument("--no-encoder-only", action="store_true", help="skip the encoder-only latency")
    parser.add_argument("--fraction", type=float, default=0.5,
                        help="share of every layer's encoder FLOPs zeroed, uniform layout (default 0.5)")
    parser.add_argument("--selection", choices=["norm", "random"], default="norm")
    parser.add_argument("--compress-repeats", type=int, default=5)
    parser.add_argument("--check-examples", type=int, default=16)
    common.add_timing_arguments(parser, patience=45.0, out="benchmarks/results/p3.json")
    args = parser.parse_args(argv)

    common.setup_threads(args.threads)
    t_start = time.perf_counter()
    payload = common.result_header(
        "P3 real speedup of the compressed model", __file__, argv,
        "dense (group-sparse) and compressed interleaved, order alternating each repeat, 1 warm-up round; "
        "torch.no_grad, eval mode; speedup = dense / compressed (paired per-repeat ratios: median, IQR); a "
        f"repeat during which other processes used >= {args.quiet_threshold} cores is redone while "
        f"patience ({args.patience:.0f} s per block) lasts"
    )
    for name in args.models:
        payload["results"][name] = bench_model(name, args)
        common.write_json(args.out, payload)
    payload["wall_time_s"] = time.perf_counter() - t_start
    common.write_json(args.out, payload)

    common.log("\nP3 — speedup of the compressed model (dense / compressed; median of paired ratios [IQR])")
    common.log(f"{'model':<10} {'input':<11} {'part':<13} {'speedup [q1, q3]':<24} {'FLOPs ratio':>11} "
               f"{'speedup/FLOPs':>13}")
    for name, res in payload["results"].items():
        for key, parts in res["latency"].items():
            for part, r in parts.items():
                if not isinstance(r, dict):
                    continue
                s = r["speedup"]
                common.log(f"{name:<10} {key:<11} {part:<13} {s['paired_median']:.3f} [{s['paired_q1']:.3f}, "
                           f"{s['paired_q3']:.3f}]{'':<6} {res['encoder_flops_ratio_dense_over_compressed']:>11.3f} "
                           f"{r['speedup_over_flops_ratio']:>13.3f}")
        common.log(f"{name:<10} compress: median {res['compress_median_s']:.3f} s; max |Δ logits| "
                   f"{res['logits_max_abs_diff']['max']:.3g}")
    common.log(f"\nwrote {args.out} (wall time {payload['wall_time_s']:.0f} s)")


if __name__ == "__main__":
    main()
