"""Trainer checkpoints that are whole, and clear words when one cannot be written.

A run killed while it writes `checkpoint-N/` (SIGTERM, a full disk, a lost node) leaves a folder that
`transformers`' `get_last_checkpoint` still picks, and every rerun then fails on it. `last_complete_checkpoint` skips
such folders and says why; `write_failure` turns the bare errors a full disk gives (torch's "basic_ios::clear:
iostream error", safetensors' I/O errors) into one that names the disk and its free space.
"""

import errno
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
# Below this much free space, a failed write is taken to be the disk's fault.
LOW_DISK_BYTES = 256 * 2**20

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
