"""What hidden-width pruning's LayerNorm decision costs (issue 45): oto_hf trains the stream's norms over the live
channels (`oto_hf.live_norm`) so that the compressed model keeps stock, narrower LayerNorms. The alternative keeps
the original width in the compressed model's statistics (a norm dividing by the original width: a custom module in
every deployed model). Measured here:

* serving: the same compressed model (heads, neurons and stream channels cut by HSPG's policy as its last period
  would, magnitude saliency, no training) with stock LayerNorms ("stock") and with every stream norm replaced by the
  original-width one ("original-width statistics"), timed interleaved in PyTorch and in onnxruntime (float32, each
  file exported as `oto_hf.export` does, intra-op spinning off), at each batch × tokens;
* training: one forward + backward of the full-width model with half of the stream's channels zero and its norms
  live ("live norms") against the same model with no channel zero (the stock forward runs), interleaved.

    python benchmarks/hidden_norm_cost.py              # MiniLM (real weights), 75% of FLOPs removed; ~4 min
    python benchmarks/hidden_norm_cost.py --config tiny --shapes 2x16 --repeats 1 --train-shape 2x16 \\
        --exporter torchscript --min-timing-s 0.005 --patience 0 --out /tmp/hidden_norm.json   # the smoke run
"""

import argparse
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets the offline environment before transformers is imported)

from oto_hf import compress, export, timing, zero_invariant_groups  # noqa: E402
from oto_hf.architectures import get_submodule, stream_modules  # noqa: E402
from oto_hf.groups import HIDDEN  # noqa: E402
from oto_hf.selection import Goal, Pools, StreamCosts  # noqa: E402
from oto_hf.settings import OTOSettings  # noqa: E402


class OriginalWidthLayerNorm(nn.Module):
    """The alternative decision: a LayerNorm over the kept channels whose mean and variance count the `width`
    channels of the original stream (the cut ones as zeros), as a full-width norm over a zero-padded input would."""

    def __init__(self, norm: nn.LayerNorm, width: int):
        super().__init__()
        self.weight, self.bias, self.eps, self.width = norm.weight, norm.bias, norm.eps, width

    def forward(self, x):
        mean = x.sum(-1, keepdim=True) / self.width
        variance = x.square().sum(-1, keepdim=True) / self.width - mean.square()
        out = (x - mean) * torch.rsqrt(variance + self.eps)
        out = out * self.weight if self.weight is not None else out
        return out + self.bias if self.bias is not None else out


def _shape(text: str) -> tuple[int, int]:
    try:
        return timing.parse_shape(text, "--shapes")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def pruned(model, target: float, seq_len: int) -> torch.Tensor:
    """Zero, in `model`, the groups HSPG's last period would choose for `target` of the FLOPs with hidden channels
    (uniform layout, magnitude saliency); returns the zero mask."""
    groups = zero_invariant_groups(model, prune_hidden=True)
    settings = OTOSettings(target=target, seq_len=seq_len, prune_steps=1, saliency="magnitude")
    goal = Goal(target=target, period=0, num_periods=1, total_cost=groups.total_cost("flops", seq_len),
                stream=StreamCosts(groups, "flops", seq_len))
    sq = groups.sq_norms()
    zero = settings.selection_policy().choose(torch.zeros_like(sq, dtype=torch.bool), sq,
                                              {"taylor": torch.zeros_like(sq)},
                                              Pools.of(groups, groups.costs("flops", seq_len), sq.device), goal)
    groups.zero_(zero)
    groups.track_live_width()
    return zero


def with_original_width_norms(small, width: int):
    """A copy of the compressed `small` whose stream norms divide by the original `width`."""
    import copy

    other = copy.deepcopy(small)
    family = zero_invariant_groups(other).family
    for role, root, path in stream_modules(family, other, other.base_model):
        if role == "norm":
            parent, _, name = path.rpartition(".")
            owner = get_submodule(root, parent) if parent else root
            setattr(owner, name, OriginalWidthLayerNorm(get_submodule(root, path), width))
    return other


def time_serving(small, alternative, config, shapes, args, workdir: Path) -> dict:
    paths = {}
    for label, model in (("stock", small), ("original-width statistics", alternative)):
        paths[label] = workdir / f"{label.split()[0]}.onnx"
        export.export_onnx(model, paths[label], exporter=args.exporter)
        export.check_onnx(model, paths[label], atol=args.atol)
    sessions = {label: export.ort_session(path, args.threads, spinning=False) for label, path in paths.items()}
    out = {}
    for batch, tokens in shapes:
        inputs = common.random_batch(config, batch, tokens, "cpu", args.seed)
        variants = {}
        for label, model in (("stock", small), ("original-width statistics", alternative)):
            variants[f"torch {label}"] = partial(torch.no_grad()(model), **inputs)
            feed = {i.name: inputs[i.name].numpy() for i in sessions[label].get_inputs()}
            variants[f"onnxruntime {label}"] = partial(sessions[label].run, None, feed)
        times = timing.interleaved(variants, args.repeats, warmup=1, min_timing_s=args.min_timing_s,
                                   max_inner=args.max_inner, quiet_threshold=args.quiet_threshold,
                                   patience_s=args.patience, log=common.log)
        key = f"{batch}x{tokens}"
        out[key] = {"median_ms": {k: 1e3 * v for k, v in times.medians().items()},
                    "alternative_over_stock": {rt: times.ratio(f"{rt} original-width statistics", f"{rt} stock")
                                               for rt in ("torch", "onnxruntime")},
                    "repeats": times.repeats, "inner": times.inner, "seconds": times.seconds, **times.load()}
        common.log(f"{key}: " + ", ".join(f"{k} {v:.3g} ms" for k, v in out[key]["median_ms"].items())
                   + "; alternative / stock: " + ", ".join(f"{rt} {r['paired_median']:.3f}" for rt, r in
                                                          out[key]["alternative_over_stock"].items())
                   + "; " + timing.describe_load(out[key]))
    return out


def time_training(dense_factory, args) -> dict:
    """One forward + backward at --train-shape: half of the stream's channels zero with live norms, against no
    channel zero (the stock norms' path)."""
    batch, tokens = args.train_shape
    live, stock = dense_factory().train(), dense_factory().train()
    groups = zero_invariant_groups(live, prune_hidden=True)
    channels = torch.nonzero(groups.kinds == HIDDEN).flatten()
    groups.zero_(channels[: len(channels) // 2])
    groups.track_live_width()
    inputs = common.random_batch(live.config, batch, tokens, "cpu", args.seed)
    positions = torch.zeros(batch, dtype=torch.long)

    def step(model):
        model.zero_grad(set_to_none=True)
        model(**inputs, start_positions=positions, end_positions=positions).loss.backward()

    times = timing.interleaved({"live norms": partial(step, live), "stock norms": partial(step, stock)},
                               args.repeats, warmup=1, min_timing_s=args.min_timing_s, max_inner=args.max_inner,
                               quiet_threshold=args.quiet_threshold, patience_s=args.patience, log=common.log)
    result = {"shape": f"{batch}x{tokens}", "median_ms": {k: 1e3 * v for k, v in times.medians().items()},
              "live_over_stock": times.ratio("live norms", "stock norms"), "repeats": times.repeats,
              "inner": times.inner, "seconds": times.seconds, **times.load()}
    common.log(f"training step {batch}x{tokens}: live / stock {result['live_over_stock']['paired_median']:.3f}; "
               + timing.describe_load(result))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="minilm", choices=common.MODELS)
    parser.add_argument("--target", type=float, default=0.75, help="share of the FLOPs removed (default 0.75)")
    parser.add_argument("--shapes", nargs="+", type=_shape, default=[(1, 128), (32, 128)])
    parser.add_argument("--train-shape", type=_shape, default=(32, 128))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--min-timing-s", type=float, default=0.2)
    parser.add_argument("--max-inner", type=int, default=100)
    parser.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    parser.add_argument("--atol", type=float, default=1e-4)
    common.add_timing_arguments(parser, patience=120.0, out="benchmarks/results/hidden_norm_cost.json")
    args = parser.parse_args(argv)
    common.setup_threads(args.threads)
    import onnxruntime

    payload = common.result_header(
        "hidden-width pruning: stock narrower LayerNorms (oto_hf's choice) against original-width statistics, "
        "serving in PyTorch and onnxruntime; live norms' training-step cost", __file__, argv,
        "interleaved in a rotating order, one warm-up round, calls per timing calibrated on the fastest, busy repeats "
        "redone while patience lasts; medians and paired ratios")
    payload["machine"]["onnxruntime_version"] = onnxruntime.__version__
    dense, description = common.build_model(args.config, args.seed, attn_implementation="sdpa")
    seq_len = max(tokens for _, tokens in args.shapes)
    zero = pruned(dense, args.target, seq_len)
    small = compress(dense).eval()
    width = small.config.compressed_hidden_size
    alternative = with_original_width_norms(small, dense.config.hidden_size)
    padded = {"stream_kept": width, "stream_original": dense.config.hidden_size,
              "heads_per_layer": small.config.num_attention_heads_per_layer,
              "ffn_width_per_layer": small.config.intermediate_size_per_layer, "groups_zeroed": int(zero.sum())}
    common.log(f"{description}: {args.target:.0%} of FLOPs removed, stream {dense.config.hidden_size} -> {width}")
    with tempfile.TemporaryDirectory() as tmp:
        serving = time_serving(small, alternative, dense.config, args.shapes, args, Path(tmp))
    training = time_training(lambda: common.build_model(args.config, args.seed)[0], args)
    payload["results"][args.config] = {"model": description, "target": args.target, "threads": args.threads,
                                       "compressed": padded, "serving": serving, "training": training}
    common.write_json(args.out, payload)
    common.log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
