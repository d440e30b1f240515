"""Helpers every task uses: which feature columns a model's forward takes, and a seeded sample of a split."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Mapping


if TYPE_CHECKING:  # importing datasets costs ~1 s
    import datasets

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_input_names(model, available) -> list[str]:
    """The feature columns among `available` that `model`'s forward takes (no token_type_ids for models without
    them, such as DistilBERT and ModernBERT)."""
    accepted = inspect.signature(model.forward).parameters
    return [n for n in TEXT_INPUTS if n in available and n in accepted]


def keep_model_inputs(features: dict, model, extra: tuple[str, ...] = ("labels",)) -> dict:
    """{split: features} without the tokenizer's outputs `model`'s forward does not take (token_type_ids for
    DistilBERT, ModernBERT…); the `extra` columns (the labels) are kept."""
    keep = set(model_input_names(model, next(iter(features.values())).column_names)) | set(extra)
    return {split: ds.remove_columns([c for c in ds.column_names if c not in keep]) for split, ds in features.items()}


def sample_examples(dataset: "datasets.Dataset", n: int | None, seed: int = 0) -> "datasets.Dataset":
    """A deterministic random sample of `n` examples (rows) of `dataset`.

    `n=None` or `n >= len(dataset)` returns the dataset unchanged (all examples, in their original order). The same
    `seed` always gives the same examples: `shuffle` draws a permutation from `np.random.default_rng(seed)`.
    """
    if isinstance(dataset, Mapping):  # a DatasetDict is a dict; a Dataset is not
        raise TypeError("sample_examples takes one split (a Dataset), e.g. dsd['validation']")
    if n is None or n >= len(dataset):
        return dataset
    if n < 0:
        raise ValueError(f"n must be >= 0 or None, got {n}")
    return dataset.shuffle(seed=seed).select(range(n))


__all__ = ["TEXT_INPUTS", "keep_model_inputs", "model_input_names", "sample_examples"]
