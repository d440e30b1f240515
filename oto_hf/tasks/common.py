"""Helpers every task uses: where the repository's local data lives, which feature columns a model's forward takes,
a seeded sample of a split, and the checks of a model folder made before any data work (the folder exists, its weight
files are whole)."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping


if TYPE_CHECKING:  # importing datasets costs ~1 s
    import datasets

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
REPO_ROOT = Path(__file__).resolve().parents[2]  # oto_hf/tasks/ -> the repository


def find_shared_data_dir(name: str, env_var: str, error: type[Exception]) -> Path | None:
    """The folder of a data set kept beside the checkout, or None: `$env_var` if set (it must be a folder, else
    `error`: a set-but-wrong variable is a mistake worth seeing), else the first of <repo root>/../shared/data/<name>,
    ./shared/data/<name> and ../shared/data/<name> (from the current directory) that exists."""
    env = os.environ.get(env_var)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise error(f"{env_var}={env!r} is set but is not a folder")
        return path.resolve()
    for candidate in (REPO_ROOT.parent / "shared" / "data" / name, Path("shared") / "data" / name,
                      Path("..") / "shared" / "data" / name):
        if candidate.is_dir():
            return candidate.resolve()
    return None


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


def looks_like_folder(name: str) -> bool:
    """True where `name` can only be a folder, not a Hub id ('org/model' or 'model'): it starts with '.', '/' or '~',
    or has more than one '/' (or a '\\'). Such a name that does not exist is a mistyped folder, which the Hub would
    answer with "Repo id must be in the form …"."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or os.path.isabs(name)


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The weight files of a saved model `folder`: model.safetensors, the shards its index names, or
    pytorch_model.bin (or its shards); [] where there are none (from_pretrained then says so)."""
    folder = Path(folder)
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index_name).is_file():
            try:
                shards = json.loads((folder / index_name).read_text(encoding="utf-8"))["weight_map"].values()
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"cannot load weights from {folder / index_name}: not a shard index ({error})") \
                    from error
            return [folder / name for name in sorted(set(shards))]
    return []


def check_weight_files(folder: str | os.PathLike) -> None:
    """Raise ValueError "cannot load weights from FILE: …" where a weight file of `folder` is missing, truncated or
    not a weight file. Reads only the safetensors headers (which safetensors checks against the file's size) or a
    .bin's zip directory, so that a torn file is found in milliseconds, before any data work, and named."""
    import torch
    from safetensors import SafetensorError, safe_open

    for path in weight_files(folder):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    handle.keys()
            else:
                torch.load(path, map_location="meta", mmap=True, weights_only=True)
        except (SafetensorError, OSError, RuntimeError, ValueError) as error:
            raise ValueError(f"cannot load weights from {path}: {error}. Save the model again (save_pretrained), "
                             "or copy the whole file") from error


__all__ = ["TEXT_INPUTS", "check_weight_files", "keep_model_inputs", "looks_like_folder", "model_input_names",
           "sample_examples", "weight_files"]
