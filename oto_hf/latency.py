"""Speed targets: a latency model of the user's runtime, measured on this machine and cached, that predicts how fast
a model with any number of heads and FFN neurons per layer runs; and the measured speedup of a compressed model.

`--oto_speedup 3 --oto_latency_runtime onnxruntime --oto_latency_shape 1x128` asks for a model whose forward pass
runs 3× faster than the dense one on that runtime, at that batch × tokens, on the threads the process uses. FLOPs
do not predict that (per-operator overhead, the LayerNorms and embeddings that pruning does not touch), so before
training the time is *measured*, in the way of Kwon et al. (2022)'s per-layer lookup tables:

* Models of the user's own class and depth, with every layer at the same size, are timed interleaved (`timing`):
  every layer with h heads and no FFN neuron for h on a grid, every layer with w neurons and no head for w on a
  grid, every block empty, and the full size. They are cut from the user's model itself (its first heads and
  neurons), so that nothing about the values (denormal numbers, say) can make them run otherwise than it.
* One layer's time is then additive in its two blocks: `attention_seconds(h)` + `ffn_seconds(w)` above the time of
  an empty layer, each interpolated linearly between grid points and made non-decreasing (a block never gets
  faster by growing; noise could say otherwise). A model's predicted time is the time with every block empty (the
  embeddings, LayerNorms, residual adds and the task head, which pruning does not touch) plus its layers' blocks.
* One factor scales the blocks so that the prediction of the full-size model equals its measured time (what the two
  blocks do to each other's caches is not additive; this keeps the prediction exact at both ends).
* With the hidden width pruned too (`stream_points`), the same curves are measured again with the residual stream
  cut to a few narrower widths (its first channels); a model's time at a stream width between two of them is
  interpolated linearly between the two predictions (below the narrowest, the narrowest's: never faster than
  measured).

The table is cached on disk (`cache_dir()`: ``$OTO_HF_CACHE`` or ``~/.cache/oto_hf``, under ``latency/``) keyed by
everything it depends on: the model's config and class, the runtime and its version (and onnxruntime's session
settings), the shape, the threads and the CPU (or GPU) model. A cached table is used as it is, and the log says so.

Runtimes: "torch" (the CPU, `torch.get_num_threads()` threads unless told), "onnxruntime" (CPU; each grid model is
exported by `oto_hf.export` as the user would export it, and timed with every candidate session setting of
`export.SESSION_SETTINGS`, keeping the fastest per file, as `python -m oto_hf.export` picks it), "cuda" (the model in
float32 on the current GPU, CUDA-synchronised).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .timing import Timings, interleaved, parse_shape, processor_name

logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnxruntime", "cuda")
# With the hidden width pruned: the stream widths measured are the full one and STREAM_POINTS - 1 narrower ones
# spread evenly below it (MiniLM: 96, 192, 288 and 384 channels).
STREAM_POINTS = 4
TABLE_FORMAT = 1  # bumped when what a table holds or how it is measured changes: older cached tables are not used


# ---- what a speed target holds for ----


def runtime_problem(runtime: str) -> str | None:
    """Why `runtime` cannot be measured here (None when it can)."""
    if runtime not in RUNTIMES:
        return f"must be one of {RUNTIMES}, got {runtime!r}"
    if runtime == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            return ("'onnxruntime' needs onnxruntime and onnxscript, which are not installed: "
                    "pip install 'oto-hf[onnx]'")
    if runtime == "cuda" and not torch.cuda.is_available():
        return "'cuda' needs a CUDA GPU, and torch sees none here: measure on the machine you serve from"
    return None


@dataclass(frozen=True)
class LatencySpec:
    """Where a speed target holds: `runtime` ("torch", "onnxruntime", "cuda"), a batch of `batch_size` × `seq_len`
    tokens, `threads` CPU threads (torch's intra-op threads, or onnxruntime's)."""

    runtime: str
    batch_size: int
    seq_len: int
    threads: int

    @classmethod
    def of(cls, runtime: str, shape: str, threads: int | None = None) -> "LatencySpec":
        """The spec of `--oto_latency_runtime` and `--oto_latency_shape` ("BxT"), on `threads` (default: torch's)."""
        problem = runtime_problem(runtime)
        if problem:
            raise ValueError(f"--oto_latency_runtime {problem}")
        batch, tokens = parse_shape(shape, "--oto_latency_shape")
        return cls(runtime, batch, tokens, threads or torch.get_num_threads())

    @property
    def shape(self) -> str:
        return f"{self.batch_size}x{self.seq_len}"

    def describe(self) -> str:
        where = "GPU" if self.runtime == "cuda" else f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        return f"{self.runtime}, {self.shape} (batch × tokens), {where}"


# ---- the table ----


@dataclass
class LatencyTable:
    """Measured forward times (seconds, medians) of models of one class with every layer at one size, and what the
    prediction makes of them. `heads_seconds[i]`: every layer with `heads_grid[i]` heads and no FFN neuron;
    `width_seconds[i]`: every layer with `width_grid[i]` neurons and no head (both grids start at 0: every block
    empty); `full_seconds`: the full-size model. See the module docstring for the prediction."""

    spec: dict
    model_type: str
    model_class: str
    num_layers: int
    heads_grid: list[int]
    heads_seconds: list[float]
    width_grid: list[int]
    width_seconds: list[float]
    full_heads: int
    full_width: int
    full_seconds: float
    # With stream widths (`measure_latency_table(..., stream_points=...)`): the same curves and full size with the
    # residual stream cut to each width of `stream_grid` (ascending, below `full_stream`).
    stream_grid: list[int] = field(default_factory=list)
    stream_heads_seconds: list[list[float]] = field(default_factory=list)
    stream_width_seconds: list[list[float]] = field(default_factory=list)
    stream_full_seconds: list[float] = field(default_factory=list)
    full_stream: int = 0
    key: str = ""
    key_fields: dict = field(default_factory=dict)
    build_seconds: float = 0.0
    measured_at: str = ""
    repeats: int = 0
    load: dict = field(default_factory=dict)
    session_settings: dict = field(default_factory=dict)
    format: int = TABLE_FORMAT
    path: str | None = None  # where it is cached (not saved)
    cached: bool = False  # read from the cache rather than measured now (not saved)

    # ---- the prediction ----

    @property
    def empty_seconds(self) -> float:
        """The model with every block empty: what pruning heads and neurons never removes."""
        return self.heads_seconds[0]

    @staticmethod
    def _monotone(values: list[float]) -> torch.Tensor:
        """Time above the first grid point, never decreasing along the grid."""
        curve = torch.tensor(values, dtype=torch.float64) - values[0]
        return torch.cummax(curve.clamp_min(0), 0).values

    @property
    def calibration(self) -> float:
        """The factor that makes the full-size prediction equal its measured time (1 when the blocks add up)."""
        blocks = (float(self._monotone(self.heads_seconds)[-1]) + float(self._monotone(self.width_seconds)[-1]))
        measured = self.full_seconds - self.empty_seconds
        return measured / blocks if blocks > 0 and measured > 0 else 1.0

    def _curve(self, block: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(counts, one layer's block seconds) at the grid points of `block` ("heads" or "width"), on the CPU;
        computed once per table (the measurements are not changed after it is built)."""
        cache = self.__dict__.setdefault("_curves", {})
        if block not in cache:
            grid, seconds = getattr(self, f"{block}_grid"), getattr(self, f"{block}_seconds")
            cache[block] = (torch.tensor(grid, dtype=torch.float64),
                            self._monotone(seconds) * self.calibration / self.num_layers)
        return cache[block]

    def _per_layer(self, block: str, counts) -> torch.Tensor:
        # Interpolated on the CPU, returned where the counts are (HSPG counts groups on the parameters' device).
        device = torch.as_tensor(counts).device
        counts = torch.as_tensor(counts).to("cpu", torch.float64)
        x, y = self._curve(block)
        counts = counts.clamp(0, float(x[-1]))
        index = torch.searchsorted(x, counts, right=True).clamp(1, len(x) - 1)
        x0, x1, y0, y1 = x[index - 1], x[index], y[index - 1], y[index]
        return (y0 + (y1 - y0) * (counts - x0) / (x1 - x0)).to(device)

    def attention_seconds(self, heads) -> torch.Tensor:
        """One layer's attention block with `heads` heads (a number or a tensor of them), above an empty block."""
        return self._per_layer("heads", heads)

    def ffn_seconds(self, width) -> torch.Tensor:
        """One layer's FFN block with `width` neurons (a number or a tensor of them), above an empty block."""
        return self._per_layer("width", width)

    def predict(self, heads_per_layer: list[int], widths_per_layer: list[int], stream: int | None = None) -> float:
        """Predicted forward time (seconds) of a model of this class with these sizes per layer, and with the
        residual stream `stream` channels wide (None: its full width; a table with stream widths only)."""
        if len(heads_per_layer) != self.num_layers or len(widths_per_layer) != self.num_layers:
            raise ValueError(f"this latency table is for {self.num_layers} layers, got {len(heads_per_layer)} head "
                             f"counts and {len(widths_per_layer)} widths")
        return sum(weight * (table.empty_seconds + float(table.attention_seconds(heads_per_layer).sum())
                             + float(table.ffn_seconds(widths_per_layer).sum()))
                   for weight, table in self.at_stream(stream))

    def speedup(self, heads_per_layer: list[int], widths_per_layer: list[int],
                dense: tuple[list[int], list[int]] | None = None, stream: int | None = None) -> float:
        """Predicted speedup of these sizes (and stream width) over `dense` (default: every layer at full size)."""
        dense = dense or ([self.full_heads] * self.num_layers, [self.full_width] * self.num_layers)
        return self.predict(*dense) / self.predict(heads_per_layer, widths_per_layer, stream)

    def at_stream(self, stream: int | None) -> list[tuple[float, "LatencyTable"]]:
        """[(weight, table of one measured stream width)] whose weighted sum predicts at `stream` channels: this
        table at the full width (None), the two measured widths around it (linear weights), the narrowest below
        it."""
        if stream is None or (self.full_stream and stream >= self.full_stream):
            return [(1.0, self)]
        if not self.stream_grid:
            raise ValueError(f"this latency table was measured at the full hidden width only, not at {stream} "
                             "channels: measure it with stream_points (a run with --oto_prune_hidden does)")
        tables = self.__dict__.setdefault("_stream_tables", {})
        if not tables:
            for i, width in enumerate(self.stream_grid):
                tables[width] = replace(self, heads_seconds=self.stream_heads_seconds[i],
                                        width_seconds=self.stream_width_seconds[i],
                                        full_seconds=self.stream_full_seconds[i], stream_grid=[])
            tables[self.full_stream] = self
        widths = [*self.stream_grid, self.full_stream]
        if stream <= widths[0]:
            return [(1.0, tables[widths[0]])]
        upper = next(w for w in widths if w >= stream)
        lower = widths[widths.index(upper) - 1]
        t = (stream - lower) / (upper - lower)
        return [(1.0 - t, tables[lower]), (t, tables[upper])]

    def budget(self, groups, speedup: float):
        """The `selection.TimeBudget` of a speed target of `speedup` for the model whose `groups` these are: its
        blocks' times from this table, a kind that is not grouped counted at its size."""
        from .groups import HEAD
        from .selection import TimeBudget

        heads, widths = groups.heads_per_layer, groups.neurons_per_layer

        def terms(stream: int | None):
            """(fixed seconds, block seconds) with the stream `stream` channels wide."""
            parts = self.at_stream(stream)
            fixed = 0.0
            for weight, table in parts:
                fixed += weight * table.empty_seconds
                if not groups.prune_heads:
                    fixed += weight * float(table.attention_seconds(heads).sum())
                if not groups.prune_neurons:
                    fixed += weight * float(table.ffn_seconds(widths).sum())

            def block_seconds(kind: int, kept: torch.Tensor) -> torch.Tensor:
                return sum(weight * (table.attention_seconds(kept) if kind == HEAD else table.ffn_seconds(kept))
                           for weight, table in parts)

            return fixed, block_seconds

        fixed, block_seconds = terms(None)
        dense = self.predict(heads, widths)
        if groups.prune_hidden:
            self.at_stream(0)  # a table without stream widths is refused now, not in the middle of training
        return TimeBudget(block_seconds=block_seconds, fixed_seconds=fixed, dense_seconds=dense,
                          target_seconds=dense / speedup, at_width=terms if groups.prune_hidden else None)

    # ---- storage ----

    def to_dict(self) -> dict:
        values = asdict(self)
        values.pop("path")
        values.pop("cached")
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "LatencyTable":
        return cls(**values)

    def describe(self) -> str:
        return (f"latency table of {self.model_class} ({self.num_layers} layers) on {LatencySpec(**self.spec).describe()}:"
                f" full size {self.full_seconds * 1e3:.2f} ms, every block empty {self.empty_seconds * 1e3:.2f} ms "
                f"(largest speedup {self.full_seconds / self.empty_seconds:.2f}×), additivity factor "
                f"{self.calibration:.3f}")


def cache_dir() -> Path:
    """Where latency tables are cached: ``$OTO_HF_CACHE/latency`` (default ``~/.cache/oto_hf/latency``)."""
    root = os.environ.get("OTO_HF_CACHE") or Path.home() / ".cache" / "oto_hf"
    return Path(root) / "latency"


def runtime_version(runtime: str) -> dict:
    """The versions a table on `runtime` depends on."""
    versions = {"torch": torch.__version__}
    if runtime == "onnxruntime":
        import onnxruntime

        from .export import SESSION_SETTINGS

        versions.update(onnxruntime=onnxruntime.__version__, session_settings=sorted(SESSION_SETTINGS))
    if runtime == "cuda":
        versions.update(cuda=torch.version.cuda, device=torch.cuda.get_device_name())
    return versions


def table_key(model: nn.Module, spec: LatencySpec, heads_grid: list[int], width_grid: list[int],
              stream_grid: list[int] | None = None) -> tuple[str, dict]:
    """(hash, fields): everything a latency table depends on."""
    config = model.config.to_dict()
    for name in ("_name_or_path", "transformers_version", "architectures", "id2label", "label2id", "oto_pruning_info",
                 "num_attention_heads_per_layer", "intermediate_size_per_layer", "torch_dtype", "dtype"):
        config.pop(name, None)
    config["num_labels"] = getattr(model.config, "num_labels", None)
    config["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    fields = {"format": TABLE_FORMAT, "model_class": type(model).__name__, "config": config, "spec": asdict(spec),
              "versions": runtime_version(spec.runtime), "machine": processor_name(), "heads_grid": heads_grid,
              "width_grid": width_grid, **({"stream_grid": stream_grid} if stream_grid else {})}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
    return digest, fields


# ---- measuring ----


def count_grid(full: int, points: int) -> list[int]:
    """0, 1 and about `points` − 2 more counts spread evenly up to `full` (every count when that is fewer)."""
    if full <= points:
        return list(range(full + 1))
    spread = {round(full * i / (points - 2)) for i in range(1, points - 1)}
    return sorted({0, 1, *spread, full})


def timing_inputs(model: nn.Module, spec: LatencySpec, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A batch of `spec`'s shape for `model`: random token ids, every token attended, one segment (vision models:
    random pixels of the config's size, the batch from `spec`)."""
    from .export import onnx_input_names, sample_inputs

    names = onnx_input_names(model)
    if names == ["pixel_values"]:
        return {k: v.to(device) for k, v in sample_inputs(model, batch=spec.batch_size, names=names).items()}
    inputs = sample_inputs(model, batch=spec.batch_size, length=spec.seq_len, names=names)
    inputs = {name: value.cpu() for name, value in inputs.items()}
    if "attention_mask" in inputs:
        inputs["attention_mask"] = torch.ones_like(inputs["attention_mask"])
    if "token_type_ids" in inputs:
        inputs["token_type_ids"] = torch.zeros_like(inputs["token_type_ids"])
    if "input_ids" in inputs:
        generator = torch.Generator().manual_seed(0)
        inputs["input_ids"] = torch.randint(min(5, model.config.vocab_size - 1), model.config.vocab_size,
                                            inputs["input_ids"].shape, generator=generator)
    return {name: value.to(device) for name, value in inputs.items()}


def sized_model(model: nn.Module, heads: int, width: int, stream: int | None = None) -> nn.Module:
    """`model` cut to `heads` heads and `width` FFN neurons in every layer (its first ones, with their trained
    weights), and with `stream` its residual stream to its first `stream` channels, as its compressed class (same
    task head), float32, eval mode. `model` is left untouched."""
    from .compress import compress
    from .groups import HEAD, HIDDEN, zero_invariant_groups

    groups = zero_invariant_groups(model, prune_hidden=stream is not None)
    count = torch.where(groups.kinds == HEAD, heads, torch.where(groups.kinds == HIDDEN, stream or 0, width))
    return compress(model, keep=groups.index < count).float().eval()


class _Runner:
    """Calls of each variant's forward pass on one runtime, and their timing. Used as a context: inside it torch runs
    on the spec's threads, and the exported files and sessions live until it closes."""

    def __init__(self, spec: LatencySpec):
        self.spec = spec
        self.device = torch.device("cuda" if spec.runtime == "cuda" else "cpu")
        self.synchronize = torch.cuda.synchronize if spec.runtime == "cuda" else None
        self._tmp = tempfile.TemporaryDirectory(prefix="oto_latency_") if spec.runtime == "onnxruntime" else None
        self._threads_before = None

    def __enter__(self) -> "_Runner":
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(self.spec.threads)
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
        torch.set_num_threads(self._threads_before)

    def time(self, variants: dict[str, Callable[[], object]], repeats: int, patience_s: float,
             deadline: float | None = None, warmup: int = 1,
             min_repeats: int = 1) -> tuple[dict[str, float], dict[str, str], Timings]:
        """Time `variants` interleaved (`warmup` untimed rounds, calls per timing calibrated to about 0.05 s, medians
        as `repeat_relative_medians`, at least `min_repeats` repeats whatever the deadline): each model's fastest
        time, the session setting that gave it (onnxruntime), and the timings themselves."""
        timings = interleaved(variants, repeats, warmup=warmup, min_timing_s=0.05, synchronize=self.synchronize,
                              deadline=deadline, patience_s=patience_s, min_repeats=min_repeats)
        best, settings = _fastest_per_model(repeat_relative_medians(timings))
        return best, settings, timings

    def calls(self, name: str, model: nn.Module, inputs: dict) -> dict[str, Callable[[], object]]:
        """{variant name: a call of `model` on `inputs`} (onnxruntime: one per session setting)."""
        if self.spec.runtime != "onnxruntime":
            model = model.to(self.device)
            feed = {k: v.to(self.device) for k, v in inputs.items()}

            def call(model=model, feed=feed):
                with torch.inference_mode():
                    return model(**feed)
            return {name: call}
        from .export import SESSION_SETTINGS, export_onnx, ort_session

        path = Path(self._tmp.name) / f"{name}.onnx"
        export_onnx(model, path)
        calls = {}
        for setting in SESSION_SETTINGS:
            session = ort_session(path, threads=self.spec.threads, settings=setting, spinning=False)
            feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
            calls[f"{name}|{setting}"] = (lambda session=session, feed=feed: session.run(None, feed))
        path.unlink()  # the sessions hold the weights: the file is not read again (a table's files take GBs of disk)
        return calls


def measure_latency_table(model: nn.Module, spec: LatencySpec, *, head_points: int = 9, width_points: int = 10,
                          repeats: int = 10, max_seconds: float = 600.0, patience_s: float = 30.0,
                          refresh: bool = False, directory: str | os.PathLike | None = None,
                          stream_points: int = 0, memory_reserve: float | None = None,
                          log: Callable[[str], None] = logger.info) -> LatencyTable:
    """The latency table of `model`'s class on `spec` (see the module docstring), from the cache when there is one.

    `head_points` / `width_points`: grid points of each block (0 and 1 always among them). `repeats`: interleaved
    repeats of every grid model (medians kept); `max_seconds` bounds the timing (fewer repeats, never fewer
    than `MIN_REPEATS` per group, and the table says so); `patience_s`: how long busy repeats (other processes using
    the CPU) are waited out and redone. `refresh` measures again even when a cached table exists. `directory`: the
    cache (default `cache_dir()`).
    `stream_points` (for a run that prunes the hidden width too; 0: the full width only): the same curves are also
    measured with the residual stream cut to `stream_points` − 1 narrower widths spread evenly below the full one
    (`STREAM_POINTS` when the trainer asks).
    It times about 20 models, each `repeats` times (about 20 × `stream_points` with stream widths):
    docs/benchmarks.md (P6) gives the times it took. Models are timed in groups, let go before the next group is
    built: one group per stream width, split further where the machine's memory would not hold a whole width's
    models (onnxruntime keeps a session with its own weights and buffers per model and session setting). A group
    takes models while one more as large as the full model, measured as it was built, would leave `memory_reserve`
    (a share; default `MEMORY_RESERVE`) of the memory free (Linux's, or the GPU's with cuda; elsewhere a width is one
    group). Every group after the first times the full model again, and its times are scaled by that model's time in
    the first group, so that all times are on one scale. Each model runs once as it is built (its warm-up). The
    exported files (onnxruntime) are deleted once their sessions are made."""
    from .groups import zero_invariant_groups

    groups = zero_invariant_groups(model)
    full_heads = max(getattr(model.config, "num_attention_heads_per_layer", None) or [model.config.num_attention_heads])
    full_width = max(getattr(model.config, "intermediate_size_per_layer", None) or groups.neurons_per_layer)
    heads_grid, width_grid = count_grid(full_heads, head_points), count_grid(full_width, width_points)
    full_stream = groups.hidden_size  # a compressed model's, where its stream was cut
    stream_grid = sorted({round(full_stream * i / stream_points) for i in range(1, stream_points)} - {0, full_stream}) \
        if stream_points > 1 else []
    key, fields = table_key(model, spec, heads_grid, width_grid, stream_grid)
    folder = Path(directory) if directory is not None else cache_dir()
    path = folder / f"{model.config.model_type}-{spec.runtime}-{spec.shape}-{spec.threads}t-{key[:16]}.json"
    if path.is_file() and not refresh:
        try:
            table = LatencyTable.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError) as error:
            log(f"the cached latency table {path} is unreadable ({error}); measuring it again")
        else:
            if table.key == key:
                table.path, table.cached = str(path), True
                log(f"using the cached latency table {path} (measured {table.measured_at} in "
                    f"{table.build_seconds:.0f} s); delete it or pass refresh to measure again")
                return table
    started = time.perf_counter()
    sizes = [(f"h{h}", h, 0) for h in heads_grid] + [(f"w{w}", 0, w) for w in width_grid if w > 0]
    sizes.insert(0, ("full", full_heads, full_width))  # first: the largest, whose memory bounds every group
    log(f"measuring the latency table of {type(model).__name__} on {spec.describe()}: "
        f"{len(sizes) * (1 + len(stream_grid))} models of {model.config.num_hidden_layers} layers"
        + (f" (stream widths {stream_grid} and {full_stream})" if stream_grid else "")
        + f", at most {max_seconds:.0f} s")
    best: dict[str, float] = {}
    settings: dict[str, str] = {}
    runs = []
    widths = [None, *stream_grid]
    total = len(sizes) * len(widths)
    largest = 0  # the most memory one grid model took when it was built (the full model, built first)
    on_gpu = spec.runtime == "cuda"  # the grid models live on the GPU there: its memory bounds the groups
    reserve = MEMORY_RESERVE if memory_reserve is None else memory_reserve
    with _Runner(spec) as runner:
        inputs = timing_inputs(model, spec)

        def build(name: str, heads: int, width: int, stream: int | None) -> dict[str, Callable[[], object]]:
            # Each call runs once as it is built: its warm-up, and so that its memory (onnxruntime allocates a
            # session's buffers on its first run) is taken before the next model's is measured.
            nonlocal largest
            before = available_memory(on_gpu)
            calls = runner.calls(name, sized_model(model, heads, width, stream), inputs)
            for call in calls.values():
                call()
            if before is not None:
                largest = max(largest, before - (available_memory(on_gpu) or before))
            return calls

        for i, stream in enumerate(widths):
            prefix = f"s{stream}" if stream is not None else ""
            pending = list(sizes)
            while pending:
                # A group: the models of one stream width timed together, as many as memory holds. Every group but
                # the first (whose "full" sets the scale) also times the full model again, its anchor, and its
                # times are scaled by full / anchor, so that every group's times are on one scale.
                variants: dict[str, Callable[[], object]] = {}
                anchor = f"{prefix}anchor{len(runs)}" if runs else None
                if anchor:
                    variants.update(build(anchor, full_heads, full_width, None))
                members = 0
                while pending and (members == 0 or room_for(largest, reserve, on_gpu)):
                    name, heads, width = pending.pop(0)
                    variants.update(build(prefix + name, heads, width, stream))
                    members += 1
                if pending:
                    log(f"  memory is short: timing {members} grid models as one group; {len(pending)} more of "
                        "this width follow in further groups, each timed beside the full model")
                done = len(sizes) * (i + 1) - len(pending)
                group_best, group_settings, timings = runner.time(  # each group its share of the time limit
                    variants, repeats, patience_s, deadline=started + max_seconds * done / total, warmup=0,
                    min_repeats=min(MIN_REPEATS, repeats))
                if anchor:
                    scale = best["full"] / group_best.pop(anchor)
                    group_best = {name: seconds * scale for name, seconds in group_best.items()}
                    group_settings.pop(anchor, None)
                best.update(group_best)
                settings.update(group_settings)
                runs.append(timings)
                del variants  # this group's models and sessions go before the next group's are built
    table = LatencyTable(
        spec=asdict(spec), model_type=model.config.model_type, model_class=type(model).__name__,
        num_layers=model.config.num_hidden_layers, heads_grid=heads_grid,
        heads_seconds=[best[f"h{h}"] for h in heads_grid], width_grid=width_grid,
        width_seconds=[best["h0"] if w == 0 else best[f"w{w}"] for w in width_grid], full_heads=full_heads,
        full_width=full_width, full_seconds=best["full"], stream_grid=stream_grid,
        stream_heads_seconds=[[best[f"s{s}h{h}"] for h in heads_grid] for s in stream_grid],
        stream_width_seconds=[[best[f"s{s}h0"] if w == 0 else best[f"s{s}w{w}"] for w in width_grid]
                              for s in stream_grid],
        stream_full_seconds=[best[f"s{s}full"] for s in stream_grid], full_stream=full_stream,
        key=key, key_fields=fields,
        build_seconds=time.perf_counter() - started, measured_at=time.strftime("%Y-%m-%d %H:%M:%S"),
        repeats=min(t.repeats for t in runs), load=merged_load(runs), session_settings=settings)
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(table.to_dict(), indent=1))
    partial.replace(path)
    table.path = str(path)
    log(f"measured the {table.describe()} in {table.build_seconds:.0f} s ({table.repeats} repeats"
        f"{', cut short by the time limit' if any(t.truncated_by_deadline for t in runs) else ''}); cached in {path}")
    if table.load.get("busy"):
        log(f"the machine was busy while the latency table was measured (other processes used up to "
            f"{table.load['max_foreign_load_cores']:.2f} cores): predictions may be off; measure again on a quiet "
            "machine (refresh)")
    return table


# Repeats every group of a latency table gets even past `max_seconds` (fewer only if fewer are asked): one repeat's
# reading drifts with the machine's speed, and a group scaled by one reading of its anchor carries that drift into
# every model in it (docs/benchmarks.md, P6).
MIN_REPEATS = 3
# The share of the machine's memory a latency table leaves free while it holds its grid models.
MEMORY_RESERVE = 0.15


def _meminfo_bytes(field: str) -> int | None:
    """A field of Linux's /proc/meminfo ("MemAvailable", "MemTotal") in bytes; None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory(cuda: bool = False) -> int | None:
    """Bytes of memory the machine can still give (Linux's MemAvailable, or what is left under this process's cgroup
    v2 limit if that is less; with `cuda`, the current GPU's free memory); None where neither is known (then a table
    holds all of a width's models at once)."""
    if cuda:
        return torch.cuda.mem_get_info()[0]
    available = _meminfo_bytes("MemAvailable")
    if available is None:
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def total_memory(cuda: bool = False) -> int | None:
    """Bytes of memory the machine has (Linux's MemTotal; with `cuda`, the current GPU's), None where unknown."""
    return torch.cuda.mem_get_info()[1] if cuda else _meminfo_bytes("MemTotal")


def room_for(model_bytes: int, reserve: float = MEMORY_RESERVE, cuda: bool = False) -> bool:
    """Whether one more grid model of `model_bytes` still leaves `reserve` (a share) of the machine's (`cuda`: the
    GPU's) memory free (with half as much again for what the estimate misses). True where the memory is not known."""
    available, total = available_memory(cuda), total_memory(cuda)
    if available is None or total is None:
        return True
    return available - 1.5 * model_bytes > reserve * total


def merged_load(runs: list[Timings]) -> dict:
    """One load record for several timing runs: `timing.Timings.load()` over all their kept repeats."""
    return Timings(seconds={}, foreign_load_cores=[x for t in runs for x in t.foreign_load_cores],
                   quiet_threshold=runs[0].quiet_threshold).load()


def repeat_relative_medians(timings) -> dict[str, float]:
    """Each variant's time as a share of its repeat's total (all variants of one repeat run within seconds of each
    other), median over the repeats, times the median total: medians that a change of the machine's speed lasting a
    repeat or longer (other tenants of a cloud host, frequency) moves all alike, so that the times' ratios, which are
    all a latency table is used for, keep their meaning. Plain medians of a single repeat."""
    names = list(timings.seconds)
    totals = [sum(timings.seconds[name][r] for name in names) for r in range(timings.repeats)]
    scale = statistics.median(totals)
    return {name: statistics.median(t / total for t, total in zip(timings.seconds[name], totals)) * scale
            for name in names}


# ---- the speedup measured after compression ----


def measure_speedup(dense: nn.Module, compressed: nn.Module, spec: LatencySpec, repeats: int = 10,
                    patience_s: float = 30.0) -> dict:
    """The measured speedup of `compressed` over `dense` on `spec`: interleaved medians of both forward passes on the
    same batch (onnxruntime: both exported as `oto_hf.export` exports them, each run with its fastest session
    setting; cuda: float32 copies on the GPU; medians as `repeat_relative_medians`), waiting out busy repeats while
    `patience_s` lasts. Both models are left as they were. Returns runtime, shape, threads, repeats, both medians,
    speedup, the session settings used (onnxruntime) and the load record (`timing.Timings.load()`)."""
    models = {"dense": dense, "compressed": compressed}
    # Before any .eval() below: a model timed in place (torch on the CPU) is put in eval mode for the timing.
    was_training = {name: {m: m.training for m in model.modules()} for name, model in models.items()}
    with _Runner(spec) as runner:
        try:
            inputs = timing_inputs(dense, spec)
            variants = {}
            for name, model in models.items():
                on_cpu = next(model.parameters()).device.type == "cpu"
                timed = model if (spec.runtime == "torch" and on_cpu) else copy.deepcopy(model).cpu().float()
                variants.update(runner.calls(name, timed.eval(), inputs))
            best, settings, timings = runner.time(variants, repeats, patience_s)
        finally:
            for modes in was_training.values():
                for module, training in modes.items():
                    module.training = training
    return {"runtime": spec.runtime, "shape": spec.shape, "batch_size": spec.batch_size, "seq_len": spec.seq_len,
            "threads": spec.threads, "repeats": timings.repeats, "dense_median_s": best["dense"],
            "compressed_median_s": best["compressed"], "speedup": best["dense"] / best["compressed"],
            "session_settings": settings or None, **timings.load()}


def _fastest_per_model(medians: dict[str, float]) -> tuple[dict[str, float], dict[str, str]]:
    """From medians of "name|setting" variants: each name's fastest time, and the setting that gave it."""
    best: dict[str, float] = {}
    settings: dict[str, str] = {}
    for variant, seconds in medians.items():
        name, _, setting = variant.partition("|")
        if name not in best or seconds < best[name]:
            best[name] = seconds
            if setting:
                settings[name] = setting
    return best, settings


DRIFT = 0.10
"""A dense model whose time moved more than this fraction from the latency table's is said to have drifted."""

SHORTFALL = 0.10
"""A measured speedup more than this fraction below the asked one is reported as missing the target."""


def speed_target_report(table: LatencyTable, asked: float, dense: nn.Module, compressed: nn.Module,
                        spec: LatencySpec, repeats: int = 10, patience_s: float = 30.0) -> dict:
    """What a run with a speed target states (report, log, model card): asked, predicted (by `table`, for the
    compressed model's sizes against `dense`'s) and measured (`measure_speedup` on `spec`) speedups, the layout
    (sizes per layer, emptied blocks), the latency table's provenance, and `shortfall`: a sentence when the
    measured speedup is more than `SHORTFALL` below the asked one (None otherwise). `patience_s`: as
    `measure_speedup`'s."""
    from .groups import zero_invariant_groups

    groups = zero_invariant_groups(dense)
    heads = list(compressed.config.num_attention_heads_per_layer)
    widths = list(compressed.config.intermediate_size_per_layer)
    stream = getattr(compressed.config, "compressed_hidden_size", None)  # where the hidden width was cut
    predicted = table.speedup(heads, widths, dense=(groups.heads_per_layer, groups.neurons_per_layer), stream=stream)
    measurement = measure_speedup(dense, compressed, spec, repeats=repeats, patience_s=patience_s)
    measured = measurement["speedup"]
    # The dense model's time now over the table's prediction of it: 1 when the machine runs as it did when the
    # table was measured. Cloud machines change speed with their neighbours, and the ratios with it.
    drift = measurement["dense_median_s"] / table.predict(groups.heads_per_layer, groups.neurons_per_layer)
    shortfall = None
    if measured < (1 - SHORTFALL) * asked:
        shortfall = (f"The measured speedup {measured:.2f}× is {1 - measured / asked:.0%} below the asked {asked:g}× "
                     f"on {spec.describe()} (predicted {predicted:.2f}×)"
                     + (": the machine was busy while it was measured, so measure again on an idle machine"
                        if measurement.get("busy") else
                        ": the latency table's prediction was off for this layout; measure the table again "
                        "(delete it from the cache) on an idle machine, or ask for more"))
        if abs(drift - 1) > DRIFT:
            shortfall += (" (the machine's speed changed since the table was measured: the dense model now takes "
                          f"{drift:.2f}× as long)")
    return {
        "asked": asked, "predicted": predicted, "measured": measured, "runtime": spec.runtime, "shape": spec.shape,
        "threads": spec.threads, "shortfall": shortfall, "measurement": measurement, "dense_now_over_table": drift,
        "layout": {"heads_per_layer": heads, "ffn_width_per_layer": widths, "hidden_size": stream or groups.hidden_size,
                   "emptied_attention_layers": [i for i, h in enumerate(heads) if h == 0],
                   "emptied_ffn_layers": [i for i, w in enumerate(widths) if w == 0]},
        "latency_table": {"path": table.path, "cached": table.cached, "build_seconds": table.build_seconds,
                          "measured_at": table.measured_at, "busy": table.load.get("busy"),
                          "full_ms": table.full_seconds * 1e3, "empty_ms": table.empty_seconds * 1e3,
                          "session_settings": table.session_settings or None},
    }


def describe_speed_target(entry: dict) -> str:
    """One paragraph on a `speed_target_report` entry, for the report, the log and the model card."""
    from .timing import describe_load

    layout = entry["layout"]
    emptied = [f"attention of layer {i}" for i in layout["emptied_attention_layers"]] + [
        f"FFN of layer {i}" for i in layout["emptied_ffn_layers"]]
    text = (f"Speed target: asked {entry['asked']:g}× on {entry['runtime']} at {entry['shape']} (batch × tokens, "
            f"{entry['threads']} threads): predicted {entry['predicted']:.2f}×, measured **{entry['measured']:.2f}×** "
            f"({entry['measurement']['repeats']} interleaved repeats, medians). "
            + (f"Emptied blocks: {', '.join(emptied)}. " if emptied else "No block was emptied. ")
            + ("The latency table came from the cache. " if entry["latency_table"]["cached"] else
               f"The latency table took {entry['latency_table']['build_seconds']:.0f} s to measure. ")
            + describe_load(entry["measurement"]))
    drift = entry.get("dense_now_over_table")
    if drift is not None and abs(drift - 1) > DRIFT:
        text += (f" The dense model ran {drift:.2f}× as long as when the latency table was measured: the machine's "
                 "speed changed in between, and the prediction holds for the machine as it was then.")
    if entry["shortfall"]:
        text += f" **{entry['shortfall']}.**"
    return text.strip()


__all__ = ["LatencySpec", "LatencyTable", "RUNTIMES", "SHORTFALL", "STREAM_POINTS", "cache_dir", "count_grid",
           "describe_speed_target", "measure_latency_table", "measure_speedup", "runtime_problem", "sized_model",
           "speed_target_report", "table_key", "timing_inputs"]
