"""Trainer checkpoints that are whole, and clear words when one cannot be written.

A run killed while it writes `checkpoint-N/` (SIGTERM, a full disk, a lost node) leaves a folder that
`transformers`' `get_last_checkpoint` still picks, and every rerun then fails on it. `last_complete_checkpoint` skips
such folders and says why; `write_failure` turns the bare errors a full disk gives (torch's "basic_ios::clear:
iostream error", safetensors' I/O errors) into one that names the disk and its free space.

A resumed run continues the checkpoint's pruning (its zero groups, its window), whatever the new command asks: each
checkpoint records what identifies its run (`RUN_FILE`: the OTO settings, the model, the training data, the seed), and
`run_differences` lists what a resume would silently ignore.
"""

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging


logger = logging.get_logger(__name__)

TRAINER_STATE = "trainer_state.json"  # the Trainer writes it last: without it a checkpoint is unfinished
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
OPTIMIZER = "optimizer.pt"
RUN_FILE = "oto_run.json"
# Below this much free space, a failed write is taken to be the disk's fault.
LOW_DISK_BYTES = 256 * 2**20

class ResumeError(ValueError):
    """A checkpoint that cannot or must not be resumed from (torn, missing, or written by a run with other settings),
    refused before any training step; the message says what to do instead."""


_STEP = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_problem(path: str | os.PathLike, needs_optimizer: bool = True) -> str | None:
    """Why the checkpoint folder `path` cannot be resumed from (None if it can): a missing or unreadable trainer
    state, no model weights, or (with `needs_optimizer`) no optimizer state."""
    path = Path(path)
    state = path / TRAINER_STATE
    if not state.is_file():
        return f"it has no {TRAINER_STATE} (its writing was interrupted)"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"its {TRAINER_STATE} cannot be read ({error})"
    if not any((path / name).is_file() for name in WEIGHTS):
        return "it holds no model weights"
    if needs_optimizer and not (path / OPTIMIZER).is_file():
        return f"it holds no optimizer state ({OPTIMIZER})"
    return None


def last_complete_checkpoint(folder: str | os.PathLike, needs_optimizer: bool = True) -> str | None:
    """The `checkpoint-N` folder in `folder` with the highest N that can be resumed from, or None. Each newer one that
    cannot (see `checkpoint_problem`) is skipped with a warning that names it and says why."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    steps = sorted(((int(m[1]), child) for child in folder.iterdir()
                    if child.is_dir() and (m := _STEP.match(child.name))), reverse=True)
    for _, path in steps:
        problem = checkpoint_problem(path, needs_optimizer)
        if problem is None:
            return str(path)
        logger.warning(f"Skipping {path}: {problem}; resuming from an earlier checkpoint instead.")
    return None


def write_failure(error: BaseException, path: str | os.PathLike) -> OSError | None:
    """An `OSError` that says the disk is full, for a failed write of `path` when the disk holding it is full or nearly
    so (errno ENOSPC anywhere in the error's chain, or under `LOW_DISK_BYTES` free); None when the disk is not to
    blame, so that the original error stands."""
    chain, cause = [], error
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    full = any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in chain)
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        free = None
    if not full and (free is None or free >= LOW_DISK_BYTES):
        return None
    amount = f"{free / 2**20:.0f} MiB free" if free is not None else "no free space"
    return OSError(errno.ENOSPC, f"No space left on the disk holding {path} ({amount}) while writing it: free some "
                                 f"space or choose an --output_dir on another disk ({type(error).__name__}: {error})")


def run_identity(args, model, train_dataset, distillation: dict | None = None) -> dict:
    """What a checkpoint's run is (`args`: its `OTOTrainingArguments`): its `oto_*` settings, the model it started
    from, its training data (size and a fingerprint of a few examples), its seed, and its distillation settings."""
    return {"oto_settings": args.oto_options(),
            "model": getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__,
            "train_data": data_fingerprint(train_dataset), "seed": args.seed, "distillation": distillation}


def data_fingerprint(dataset) -> dict | None:
    """The size of `dataset` and a hash of four of its examples (first, last, two between): the same data gives the
    same fingerprint in any process; other data almost surely another."""
    if dataset is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        return None
    n = len(dataset)
    rows = [dataset[i] for i in sorted({0, n // 3, 2 * n // 3, n - 1})] if n else []
    text = json.dumps(rows, sort_keys=True, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))
    return {"examples": n, "sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}


def run_differences(checkpoint: str | os.PathLike, identity: dict) -> list[str]:
    """What differs between the run that wrote `checkpoint` and `identity` (the run about to resume it), one line
    each; empty when nothing does, or when the checkpoint predates this record."""
    path = Path(checkpoint) / RUN_FILE
    if not path.is_file():
        return []
    recorded = json.loads(path.read_text(encoding="utf-8"))
    differences = []
    for key in identity:
        old, new = recorded.get(key), json.loads(json.dumps(identity[key], default=str))
        if key == "oto_settings":
            differences += [f"{name}: {old.get(name)!r} in the checkpoint, {value!r} now"
                            for name, value in new.items() if old.get(name) != value]
        elif old != new:
            differences.append(f"{key.replace('_', ' ')}: {old!r} in the checkpoint, {new!r} now")
    return differences


def write_run_identity(folder: str | os.PathLike, identity: dict) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / RUN_FILE).write_text(json.dumps(identity, indent=1, sort_keys=True, default=str) + "\n")
