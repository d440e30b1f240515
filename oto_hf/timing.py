"""Interleaved, load-aware timing: the one way oto-hf measures how fast some variants of the same work are against
each other (the jobs' report through `report.latency_ratio`, and every benchmark: P2, P3, P5 on CPU and GPU).

Only ratios measured side by side mean much on a shared or noisy machine. So every variant runs once per repeat, in
an order rotated every repeat (A B C, B C A, C A B, …: drifts and the cost of coming first or after a given variant
hit every variant alike), after untimed warm-up rounds; results are per-variant medians and the per-repeat (paired)
ratios. What the other processes on the machine did meanwhile is measured (from /proc/stat) and recorded beside the
times, so that a figure taken on a busy machine says so; given a patience, a repeat during which they used too much
is waited out and redone.
"""

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

BUSY_CORES = 0.25
"""Other processes using this many cores or more during a repeat make it a busy repeat (the default
`quiet_threshold`). A quarter of a core already moves a 2-thread CPU timing by several percent; raise it on a machine
with many more cores than the timed work uses."""


class ForeignLoad:
    """CPU time used by everything but this process, in cores (busy jiffies of /proc/stat minus this process's own
    user+system time), between `start()` and `stop()`. A noise indicator: ~0 on an otherwise idle machine. `stop()`
    returns None where /proc is not readable (not Linux)."""

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._t0 = None

    @staticmethod
    def _busy() -> int:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        return user + nice + system + irq + softirq

    @staticmethod
    def _own() -> int:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime

    def start(self) -> None:
        try:
            self._t0, self._b0, self._o0 = time.perf_counter(), self._busy(), self._own()
        except (OSError, ValueError):
            self._t0 = None

    def stop(self) -> float | None:
        if self._t0 is None:
            return None
        try:
            busy, own = self._busy() - self._b0, self._own() - self._o0
        except (OSError, ValueError):
            return None
        wall = time.perf_counter() - self._t0
        return max(0.0, (busy - own) / self.tick / wall) if wall > 0 else None


def wait_for_quiet(threshold: float, max_wait: float, probe: float = 1.0) -> tuple[float, float | None]:
    """Sleep in `probe`-second windows until other processes use less than `threshold` cores, at most `max_wait`
    seconds (the last window is shortened to fit). Returns (seconds waited, last load seen)."""
    meter, waited, load = ForeignLoad(), 0.0, None
    while waited < max_wait:
        window = min(probe, max_wait - waited)
        meter.start()
        time.sleep(window)
        load = meter.stop()
        waited += window
        if load is None or load < threshold:
            break
    return waited, load


def quantiles(values: list[float]) -> dict:
    """Median, quartiles (inclusive method), min and max of `values`."""
    v = sorted(values)
    if len(v) == 1:
        return {"median": v[0], "q1": v[0], "q3": v[0], "min": v[0], "max": v[0]}
    q = statistics.quantiles(v, n=4, method="inclusive")
    return {"median": statistics.median(v), "q1": q[0], "q3": q[2], "min": v[0], "max": v[-1]}


def ratio_summary(numerator: list[float], denominator: list[float]) -> dict:
    """Ratio of the medians, and the median, quartiles and range of the per-repeat (paired) ratios."""
    pairs = [a / b for a, b in zip(numerator, denominator)]
    q = quantiles(pairs)
    return {
        "ratio_of_medians": statistics.median(numerator) / statistics.median(denominator),
        "paired_median": q["median"],
        "paired_q1": q["q1"],
        "paired_q3": q["q3"],
        "paired_min": q["min"],
        "paired_max": q["max"],
        "n": len(pairs),
    }


@dataclass
class Timings:
    """What `interleaved` measured. `seconds[name]` holds one time per kept repeat (seconds per call: the mean of
    `inner` back-to-back calls); `orders[r]` the order the variants ran in during kept repeat r;
    `foreign_load_cores[r]` the cores other processes used during it (None where not measurable); `discarded` the
    busy repeats that were redone (patience); `waited_s` the time spent waiting for quiet; `truncated_by_deadline`
    whether the deadline stopped it before `requested_repeats`."""

    seconds: dict[str, list[float]]
    orders: list[tuple[str, ...]] = field(default_factory=list)
    foreign_load_cores: list[float | None] = field(default_factory=list)
    discarded: list[dict] = field(default_factory=list)
    waited_s: float = 0.0
    inner: int = 1
    requested_repeats: int = 0
    truncated_by_deadline: bool = False
    quiet_threshold: float | None = BUSY_CORES

    @property
    def repeats(self) -> int:
        return len(self.orders)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def medians(self) -> dict[str, float]:
        return {name: self.median(name) for name in self.seconds}

    def ratio(self, numerator: str, denominator: str) -> dict:
        """`ratio_summary` of variant `numerator`'s times over `denominator`'s (> 1: the denominator is faster)."""
        return ratio_summary(self.seconds[numerator], self.seconds[denominator])

    def load(self) -> dict:
        """The load record that goes beside a figure: other processes' cores in every kept repeat, the largest, and
        `busy` (the largest reached `quiet_threshold`; None where the load could not be measured)."""
        measured = [x for x in self.foreign_load_cores if x is not None]
        threshold = BUSY_CORES if self.quiet_threshold is None else self.quiet_threshold
        peak = max(measured) if measured else None
        return {"foreign_load_cores": list(self.foreign_load_cores), "max_foreign_load_cores": peak,
                "busy": None if peak is None else peak >= threshold, "busy_threshold_cores": threshold}


def describe_load(record: dict) -> str:
    """A sentence on the machine's load for a figure's caption, from a record with `Timings.load()`'s keys (a
    `latency_ratio` result has them): empty for a record without them (an older report)."""
    if "busy" not in record:
        return ""
    if record["busy"] is None:
        return "Other processes' load was not measured (no /proc/stat)."
    peak = record["max_foreign_load_cores"]
    if record["busy"]:
        return (f"Measured on a busy machine: other processes used up to {peak:.2f} cores meanwhile, so this figure "
                "is noisy; measure again on an idle machine before relying on it.")
    return f"Measured on a quiet machine (other processes used at most {peak:.2f} cores meanwhile)."


def _time_calls(call: Callable[[], object], inner: int, synchronize: Callable[[], None] | None) -> float:
    """Seconds per call: the mean of `inner` back-to-back calls, bracketed by `synchronize` (CUDA: work queued on
    the device is finished before the clock starts and before it stops)."""
    if synchronize is not None:
        synchronize()
    start = time.perf_counter()
    for _ in range(inner):
        call()
    if synchronize is not None:
        synchronize()
    return (time.perf_counter() - start) / inner


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, *, warmup: int = 1, inner: int = 1,
                min_timing_s: float | None = None, max_inner: int = 100, deadline: float | None = None,
                min_repeats: int = 1,
                synchronize: Callable[[], None] | None = None, quiet_threshold: float | None = BUSY_CORES,
                patience_s: float = 0.0, log: Callable[[str], None] | None = None) -> Timings:
    """Time every variant (a callable without arguments) `repeats` times, interleaved: in repeat r the variants run in
    their order rotated by r. First `warmup` untimed rounds (one call of each variant, also rotated).

    One timing is the mean of `inner` back-to-back calls (default 1). With `min_timing_s`, `inner` is instead chosen
    after the warm-up from one timed call of each variant, so that a timing of the fastest lasts about that long (at
    most `max_inner` calls): for calls too short for the clock or dominated by launch overhead (GPU, onnxruntime).
    `synchronize` (e.g. `torch.cuda.synchronize`) is called before and after each timing. `deadline`, a
    `time.perf_counter()` value: no repeat starts after it (the first `min_repeats` always run), and the result says
    it was cut.

    Load: the cores other processes use during each round are measured and recorded. With `patience_s` > 0, before
    each round it waits (while patience lasts) until they use less than `quiet_threshold` cores, and a repeat during
    which they used more is redone (kept under `discarded`); once patience is spent, repeats are taken as they come.
    The default (no patience) only records. `log`, if given, gets one line per round."""
    if not variants:
        raise ValueError("interleaved() needs at least one variant to time")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    names = list(variants)
    result = Timings(seconds={name: [] for name in names}, requested_repeats=repeats, quiet_threshold=quiet_threshold)
    meter = ForeignLoad()
    patience = patience_s
    r = -warmup
    while r < repeats:
        if r == 0 and min_timing_s is not None and not result.orders and not result.discarded:
            fastest = min(_time_calls(variants[name], 1, synchronize) for name in names)
            inner = max(1, min(max_inner, math.ceil(min_timing_s / max(fastest, 1e-9))))
        if r >= max(1, min_repeats) and deadline is not None and time.perf_counter() > deadline:
            result.truncated_by_deadline = True
            break
        if patience > 0 and quiet_threshold is not None:
            waited, _ = wait_for_quiet(quiet_threshold, patience)
            patience -= waited
            result.waited_s += waited
        shift = r % len(names)
        order = tuple(names[shift:] + names[:shift])
        round_times = {}
        t_round = time.perf_counter()
        meter.start()
        for name in order:
            round_times[name] = _time_calls(variants[name], 1 if r < 0 else inner, synchronize)
        load = meter.stop()
        round_wall = time.perf_counter() - t_round
        busy = quiet_threshold is not None and load is not None and load >= quiet_threshold
        if r >= 0 and busy and patience >= round_wall:
            patience -= round_wall
            result.discarded.append({"repeat": r, "foreign_load_cores": load, "seconds": round_times})
            if log is not None:
                log(f"  repeat {r + 1}/{repeats} discarded (other processes: {load:.2f} cores), redoing")
            continue
        if r >= 0:
            for name in names:
                result.seconds[name].append(round_times[name])
            result.orders.append(order)
            result.foreign_load_cores.append(load)
        if log is not None:
            label = "warm-up" if r < 0 else f"repeat {r + 1}/{repeats}"
            shown = ", ".join(f"{n} {round_times[n]:.4f}s" for n in names) if r >= 0 else "done"
            log(f"  {label}: {shown}" + (f"  (other processes: {load:.2f} cores)" if load is not None else ""))
        r += 1
    result.inner = inner
    return result


def processor_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows, else "unknown": what a timing holds for."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def parse_shape(text: str, option: str = "the shape") -> tuple[int, int]:
    """"1x128" -> (1, 128): a batch × tokens shape as a command-line option spells it (case and spaces around the
    numbers ignored). Anything else, or a number below 1, is a ValueError naming `option` (e.g. "--tune-session")."""
    batch, sep, tokens = str(text).strip().lower().partition("x")
    try:
        shape = (int(batch), int(tokens)) if sep else None
    except ValueError:
        shape = None
    if shape is None or min(shape) < 1:
        raise ValueError(f"{option} takes BATCHxTOKENS, two positive whole numbers such as 1x128, got {text!r}")
    return shape


def latency_ratio(dense, compressed, batch_size: int, seq_len: int, repeats: int = 5, vocab_size: int = 1000) -> dict:
    """Inference latency of `dense` and `compressed` (models called as `model(input_ids=…, attention_mask=…)`: PyTorch
    models or `export.OnnxRuntimeModel`s) on the same random batch (token ids drawn from `vocab_size` with seed 0),
    `interleaved`: one warm-up round, `repeats` repeats, medians; CUDA-synchronised on a CUDA device.

    Returns batch_size, seq_len, repeats, threads, both medians (seconds), speedup = dense / compressed, and the
    load record (`Timings.load()`: foreign_load_cores, max_foreign_load_cores, busy, busy_threshold_cores), so that
    a speedup measured on a busy machine says so (`describe_load` words it)."""
    generator = torch.Generator().manual_seed(0)
    device = next(dense.parameters()).device
    inputs = {
        "input_ids": torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator).to(device),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long, device=device),
    }
    models = {"dense": dense.eval(), "compressed": compressed.eval()}
    synchronize = torch.cuda.synchronize if device.type == "cuda" else None
    with torch.no_grad():
        timings = interleaved({name: (lambda model=model: model(**inputs)) for name, model in models.items()},
                              repeats, warmup=1, synchronize=synchronize)
    dense_s, small_s = timings.median("dense"), timings.median("compressed")
    return {"batch_size": batch_size, "seq_len": seq_len, "repeats": repeats, "threads": torch.get_num_threads(),
            "dense_median_s": dense_s, "compressed_median_s": small_s, "speedup": dense_s / small_s,
            **timings.load()}
