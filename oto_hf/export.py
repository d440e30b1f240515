"""ONNX export of compressed (and dense) models, checked against PyTorch, with optional int8 dynamic quantization.

    python -m oto_hf.export MODEL_DIR OUT.onnx [--quantize int8] [--opset N] [--check] [--atol 1e-4]
                                               [--attention eager|model] [--tune-session 1x128|none]

    from oto_hf.export import export_onnx, check_onnx
    info = export_onnx("out/compressed", "model.onnx", quantize="int8")  # also writes model.int8.onnx
    check_onnx(model, "model.onnx")            # {"logits": max |Δ|}; raises OnnxMismatchError above atol
    check_onnx(model, info["int8_path"], atol=None)   # the int8 file's Δ, not held to a tolerance

What is exported: any model of a supported family (`oto_hf.architectures`), compressed or dense stock, with any
task head, in float32, as it computes in eval mode (layers left with no head or no FFN neuron included: their
zero-width projections export as empty tensors). A folder is loaded with the class its config names (the compressed
`OTO…` classes after `import oto_hf`, or the stock ones).

Attention is traced in its eager form by default (``attn_implementation="eager"``: softmax(QKᵀ/√d + mask)·V as
plain MatMul/Softmax nodes), whatever the model was loaded with; the model is switched back afterwards. Eager and
SDPA give the same outputs, but the SDPA trace carries guards for fully masked rows (IsNaN/Where over every
batch × head × query × key score) that onnxruntime runs as separate passes, so the eager file is faster on the CPU
(docs/deployment.md has the measurement). ``attn_implementation=None`` (``--attention model``) traces the model's own
implementation.

- Inputs are the model's own, in this order: ``input_ids``, ``attention_mask``, ``token_type_ids`` for text (only
  those its forward takes, chosen by `oto_hf.tasks.common.model_input_names`; ``token_type_ids`` also only where the
  model has more than one token type, so not for RoBERTa-likes, DeBERTa-v3, DistilBERT or ModernBERT),
  ``pixel_values`` for vision models. Feed a session the tokenizer's outputs that it lists in ``session.get_inputs()``.
- Axes ``batch`` and ``sequence`` are dynamic (``batch``, ``choices``, ``sequence`` for multiple choice; ``batch``
  only for images, whose size is fixed by the position embeddings). Sequences are limited to the model's
  ``max_position_embeddings``, as in PyTorch.
- Outputs are named after the model's output fields (``logits``; ``start_logits``, ``end_logits``;
  ``last_hidden_state``, ``pooler_output``; …), in the order of the model's output class: its tensor fields, so
  no cache (``use_cache=False`` where the forward takes it) and no tuples of hidden states or attentions.
- The default opset is 18, the exporter's own (no version conversion; run by onnxruntime 1.14 and later).
- Weights go into the .onnx file itself, or into an external data file beside it (``OUT.onnx.data``) when they
  exceed protobuf's 2 GB limit.

Exporter: ``torch.onnx.export(..., dynamo=True)``, torch's default and maintained exporter (torch.export, then
onnxscript). The legacy TorchScript exporter (``exporter="torchscript"``) gives the same outputs on every family
and exports faster, but torch deprecates it (every call warns that it is no longer the default
and will go); it is kept as a fallback for a model that torch.export cannot trace. optimum-onnx was not used: its
only release requires transformers < 4.58 and does not import with transformers 5 (docs/deployment.md has the
evidence).

int8 (``quantize="int8"``): onnxruntime's `quantize_dynamic` of the exported float32 file, written beside it as
``OUT.int8.onnx`` (``model.onnx`` -> ``model.int8.onnx``): int8 weights (QInt8) of every projection (MatMul/Gemm
with a weight) and of the embedding tables (Gather, one scale per table), activations quantized at run time; the
attention products themselves stay float. Projection weights are quantized per output channel by default
(``per_channel=True``; docs/deployment.md compares the two); ``per_channel=False`` gives one scale per tensor.
Projections with no rows or columns (layers left without a head or a neuron) stay float: there is nothing to
quantize and onnxruntime's per-channel quantizer fails on them. ``reduce_range`` is left off (onnxruntime's
default), which suits CPUs with VNNI; onnxruntime recommends it for AVX2/AVX-512 CPUs without VNNI.

Session settings: every onnxruntime session of oto_hf is made by `ort_session` (CPU, torch's thread count by
default), under one of the named `SESSION_SETTINGS` (onnxruntime's default "all_fusions", or
"no_skip_layernorm_fusion"). Which is faster depends on the file and the CPU, so the command line times them on each
file it writes (`fastest_session_settings`, at ``--tune-session`` batch × tokens, default 1x128; ``none`` skips it),
says which was fastest and records it beside the file (``OUT.session.json``, ``OUT.int8.session.json``);
`OnnxRuntimeModel` runs a file with the settings recorded beside it, unless told otherwise. A record is ignored,
with a warning, once onnxruntime's version differs from the one that measured it.

Needs the ``onnx`` extra: ``pip install 'oto-hf[onnx]'`` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import logging
import os
import platform
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from .timing import processor_name

__all__ = ["DEFAULT_OPSET", "SESSION_SETTINGS", "OnnxMismatchError", "OnnxRuntimeModel", "check_onnx", "export_onnx",
           "fastest_session_settings", "int8_path_for", "load_model", "onnx_input_names", "ort_session",
           "quantize_int8", "recorded_session_settings", "sample_inputs", "session_settings_path",
           "write_session_settings"]

DEFAULT_OPSET = 18
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The protobuf limit of one .onnx file, less a margin for the graph itself.
_EXTERNAL_DATA_BYTES = 1_900_000_000
_EXPORTERS = ("dynamo", "torchscript")


class OnnxMismatchError(ValueError):
    """The ONNX model's outputs differ from PyTorch's by more than the tolerance; `max_abs_diff` holds them."""

    def __init__(self, message: str, max_abs_diff: dict[str, float]):
        super().__init__(message)
        self.max_abs_diff = max_abs_diff


def _require_onnx():
    """Import onnx and onnxruntime, or say which extra to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"ONNX export needs onnx and onnxruntime ({error}): pip install 'oto-hf[onnx]'") from error
    return onnx, onnxruntime


def load_model(model_dir: str | os.PathLike) -> nn.Module:
    """The model saved in `model_dir` (compressed or stock), in float32 and eval mode, with the class its config
    names (`AutoModel` if it names none). A missing folder or one without a model config is a clear error."""
    import transformers

    import oto_hf  # noqa: F401  (registers the compressed model types with the Auto classes)
    from oto_hf import modeling_oto
    from oto_hf.tasks.common import check_weight_files

    path = Path(model_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give the folder of a saved model (save_pretrained)")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a saved model: a folder with config.json and the weights "
                         "(written by save_pretrained) is expected")
    try:
        config = transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path} is not a saved model: its config.json does not load ({error})") from error
    names = getattr(config, "architectures", None) or []
    cls = None
    for name in names:
        cls = getattr(modeling_oto, name, None) or getattr(transformers, name, None)
        if cls is not None:
            break
    if cls is None:
        cls = transformers.AutoModel
    check_weight_files(path)  # a torn weight file: "cannot load weights from FILE: …", not safetensors' bare error
    try:
        model = cls.from_pretrained(path, dtype=torch.float32)
    except OSError as error:
        raise ValueError(f"{path} has a config but no weights that load: {error}") from error
    return model.eval()


def _as_model(model_or_dir) -> nn.Module:
    return model_or_dir if isinstance(model_or_dir, nn.Module) else load_model(model_or_dir)


def _is_vision(model: nn.Module) -> bool:
    return getattr(model, "main_input_name", "input_ids") == "pixel_values"


def _is_multiple_choice(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForMultipleChoice")


def onnx_input_names(model: nn.Module) -> list[str]:
    """The inputs the exported model takes (see the module docstring): ``pixel_values`` for vision models; for text,
    those of ``input_ids``, ``attention_mask``, ``token_type_ids`` that the forward takes
    (`oto_hf.tasks.common.model_input_names`), without ``token_type_ids`` where the model has at most one token type."""
    from .tasks.common import model_input_names

    if _is_vision(model):
        return ["pixel_values"]
    available = list(TEXT_INPUTS)
    if getattr(model.config, "type_vocab_size", 2) <= 1:
        available.remove("token_type_ids")
    return model_input_names(model, available)


def _axes(model: nn.Module, name: str) -> tuple[str, ...]:
    """The names of the axes of input `name`."""
    if name == "pixel_values":
        return ("batch", "channels", "height", "width")
    return ("batch", "choices", "sequence") if _is_multiple_choice(model) else ("batch", "sequence")


def _dynamic_axes(model: nn.Module, name: str) -> dict[int, str]:
    return {i: axis for i, axis in enumerate(_axes(model, name)) if axis in ("batch", "choices", "sequence")}


def sample_inputs(model: nn.Module, batch: int = 2, length: int = 8, seed: int = 0, choices: int = 3,
                  names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Random inputs for `model` (on its device): `batch` rows of `length` tokens, where row r > 0 is padded after
    ``length - 3·r`` tokens (at least one is kept): ids set to the pad token and attention_mask to 0 there;
    token_type_ids 0 on the first half of each row, 1 on the rest. Vision models get random pixels of the
    config's size; a multiple-choice model gets (batch, `choices`, length)."""
    names = names or onnx_input_names(model)
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    if names == ["pixel_values"]:
        size = config.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return {"pixel_values": torch.randn(batch, config.num_channels, *size, generator=generator).to(device)}
    vocab = config.vocab_size
    lead = (batch, choices) if _is_multiple_choice(model) else (batch,)
    ids = torch.randint(min(5, vocab - 1), vocab, (*lead, length), generator=generator)
    mask = torch.ones_like(ids)
    for row in range(1, batch):
        mask[row, ..., max(1, length - 3 * row):] = 0
    pad = getattr(config, "pad_token_id", None)
    ids = ids.masked_fill(mask == 0, pad if pad is not None and 0 <= pad < vocab else 0)
    types = torch.zeros_like(ids)
    types[..., length // 2:] = 1
    values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: values[name].to(device) for name in names}


def _forward_kwargs(model: nn.Module) -> dict:
    """Keyword arguments that keep the forward's outputs to tensors: a dict-like output, no cache."""
    kwargs = {"return_dict": True}
    if "use_cache" in inspect.signature(model.forward).parameters:
        kwargs["use_cache"] = False
    return kwargs


class _TensorOutputs(nn.Module):
    """`model` called with its inputs given positionally in `names` order, returning the tensors of its output
    fields `outputs` as a tuple (what the exporters trace)."""

    def __init__(self, model: nn.Module, names: list[str], outputs: list[str]):
        super().__init__()
        self.model, self.names, self.outputs = model, names, outputs
        self.extra = _forward_kwargs(model)

    def forward(self, *tensors):
        result = self.model(**dict(zip(self.names, tensors)), **self.extra)
        return tuple(result[name] for name in self.outputs)


def _output_names(model: nn.Module, inputs: dict) -> list[str]:
    with torch.no_grad():
        result = model(**inputs, **_forward_kwargs(model))
    return [name for name, value in result.items() if isinstance(value, torch.Tensor)]


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporters' progress lines (printed to stdout), their info logs and their warnings (operators of
    torchvision, which is not installed, not registered; the legacy exporter's deprecation notice; tracer warnings):
    errors still raise, and `check_onnx` is what says whether an export is right."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export",
                                                     "torch.fx.experimental.symbolic_shapes", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def int8_path_for(onnx_path: str | os.PathLike) -> Path:
    """Where the int8 file of `onnx_path` goes: ``model.onnx`` -> ``model.int8.onnx``."""
    path = Path(onnx_path)
    return path.with_name(path.stem + ".int8" + (path.suffix or ".onnx"))


@torch.no_grad()
def export_onnx(model_or_dir, out_path: str | os.PathLike, opset: int = DEFAULT_OPSET, quantize: str | None = None,
                exporter: str = "dynamo", per_channel: bool = True, attn_implementation: str | None = "eager") -> dict:
    """Export a model (an `nn.Module`, or the folder of a saved one) to ONNX at `out_path`; see the module
    docstring for the inputs, axes and outputs. The model is traced in eval mode in float32 and left in the mode it
    was in.

    `opset`: the ONNX opset (default 18). `quantize`: None, or "int8" to also write the dynamically quantized file
    ``OUT.int8.onnx`` (`int8_path_for`), per channel unless `per_channel` is False. `exporter`: "dynamo" (default,
    torch.onnx.export with dynamo=True) or "torchscript" (the deprecated legacy exporter). `attn_implementation`:
    the attention traced (default "eager", see the module docstring; None: the model's own); the model is left with
    the implementation it had.

    Returns {"path", "bytes", "input_names", "output_names", "opset", "exporter", "attn_implementation",
    "external_data", "int8_path", "int8_bytes"} (the int8 entries None without `quantize`); bytes count the external
    data file too.
    """
    onnx, _ = _require_onnx()
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', not {quantize!r}")
    if exporter not in _EXPORTERS:
        raise ValueError(f"exporter must be one of {_EXPORTERS}, not {exporter!r}")
    model = _as_model(model_or_dir)
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes - {torch.float32}:
        raise ValueError(f"export_onnx exports float32 models; this one has {sorted(map(str, dtypes))} weights: "
                         "pass model.float() (int8 comes from quantize='int8')")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in (out, Path(str(out) + ".data"), session_settings_path(out)):
        stale.unlink(missing_ok=True)
    names = onnx_input_names(model)
    was_training = model.training
    own_attention = getattr(model.config, "_attn_implementation", None)
    traced = attn_implementation or own_attention
    model.eval()
    try:
        if traced != own_attention:
            model.set_attn_implementation(traced)
            if model.config._attn_implementation != traced:  # transformers only warns when a class cannot switch
                raise ValueError(f"{type(model).__name__} cannot switch its attention to {traced!r}: export it with "
                                 "attn_implementation=None (its own attention) instead")
        sample = sample_inputs(model, names=names)
        outputs = _output_names(model, sample)
        wrapper = _TensorOutputs(model, names, outputs).eval()
        external = sum(p.numel() * p.element_size() for p in model.parameters()) > _EXTERNAL_DATA_BYTES
        with _quiet_exporter():
            if exporter == "dynamo":
                _export_dynamo(wrapper, model, sample, out, names, outputs, opset, external)
            else:
                _export_torchscript(wrapper, model, sample, out, names, outputs, opset)
    finally:
        if traced != own_attention:
            model.set_attn_implementation(own_attention)
        model.train(was_training)
    graph = _strip_node_metadata(out).graph
    got = [i.name for i in graph.input]
    if got != names:
        raise RuntimeError(f"the exported graph takes {got}, not the model's inputs {names}")
    info = {"path": str(out), "bytes": _size(out), "input_names": names, "output_names": outputs, "opset": opset,
            "exporter": exporter, "attn_implementation": traced, "external_data": Path(str(out) + ".data").exists(),
            "int8_path": None, "int8_bytes": None}
    if quantize == "int8":
        target = quantize_int8(out, per_channel=per_channel)
        info.update(int8_path=str(target), int8_bytes=_size(target))
    return info


def _export_dynamo(wrapper, model, sample, out, names, outputs, opset, external) -> None:
    from torch.export import Dim

    dims = {}
    shapes = []
    for name in names:
        shapes.append({i: dims.setdefault(axis, Dim(axis)) for i, axis in _dynamic_axes(model, name).items()})
    torch.onnx.export(wrapper, tuple(sample.values()), str(out), input_names=names, output_names=outputs,
                      opset_version=opset, dynamo=True, dynamic_shapes={"tensors": tuple(shapes)}, external_data=external,
                      optimize=True, verbose=False)


def _export_torchscript(wrapper, model, sample, out, names, outputs, opset) -> None:
    """The legacy exporter needs the outputs' dynamic axes too: an axis is dynamic where the outputs' size changes
    between two sample sizes, named after the input axis it follows."""
    other = sample_inputs(model, batch=3, length=9, choices=4, names=names)
    sizes = {"batch": (2, 3), "choices": (3, 4), "sequence": (8, 9)}
    first, second = wrapper(*sample.values()), wrapper(*other.values())
    axes = {name: _dynamic_axes(model, name) for name in names}
    for name, a, b in zip(outputs, first, second):
        axes[name] = {}
        for i, (x, y) in enumerate(zip(a.shape, b.shape)):
            if x != y:
                axes[name][i] = next((axis for axis, s in sizes.items() if s == (x, y)), f"{name}_{i}")
    torch.onnx.export(wrapper, tuple(sample.values()), str(out), input_names=names, output_names=outputs,
                      opset_version=opset, dynamo=False, dynamic_axes=axes)


def _strip_node_metadata(path: Path):
    """Drop the per-node metadata the dynamo exporter records (source stack traces with the exporting machine's
    file paths, FX node text, module names): a deployment file carries the graph and the weights only. The weights
    stay where they are (in the file, or in its external data file). Returns the graph-only ModelProto."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    touched = False
    for node in model.graph.node:
        touched |= len(node.metadata_props) > 0
        del node.metadata_props[:]
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        touched |= len(value.metadata_props) > 0
        del value.metadata_props[:]
    if touched:
        onnx.save(model, str(path))
    return model


def _size(path: Path) -> int:
    data = Path(str(path) + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def quantize_int8(onnx_path: str | os.PathLike, out_path: str | os.PathLike | None = None,
                  per_channel: bool = True) -> Path:
    """Dynamic int8 quantization of the float32 file `onnx_path` (see the module docstring), written to `out_path`
    (default `int8_path_for(onnx_path)`); returns that path."""
    onnx, _ = _require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = Path(onnx_path)
    target = Path(out_path) if out_path is not None else int8_path_for(source)
    target.unlink(missing_ok=True)
    session_settings_path(target).unlink(missing_ok=True)  # measured on the file this one replaces
    model = onnx.load(str(source), load_external_data=False)
    empty = {t.name for t in model.graph.initializer if 0 in t.dims}
    skip = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and empty.intersection(n.input)]
    external = Path(str(source) + ".data").exists()
    with warnings.catch_warnings(), _quiet_logging("root"):
        warnings.simplefilter("ignore")
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel,
                         nodes_to_exclude=skip, use_external_data_format=external)
    return target


@contextlib.contextmanager
def _quiet_logging(name: str):
    logger = logging.getLogger(None if name == "root" else name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@torch.no_grad()
def check_onnx(model, onnx_path: str | os.PathLike, batch_sizes=(1, 3), seq_lens=(7, 33),
               atol: float | None = 1e-4, seed: int = 0, session_settings: str = "all_fusions") -> dict[str, float]:
    """Run the ONNX file `onnx_path` with onnxruntime (`ort_session` with `session_settings`, default
    "all_fusions") and `model` (an `nn.Module` or a folder) in PyTorch on the same inputs, and return the largest
    absolute difference of each output, by name.

    Inputs: every batch size × sequence length (for vision models, every batch size), from `sample_inputs`: rows
    after the first padded at the end (attention_mask 0 there). Every position is compared, padded ones included.
    Raises `OnnxMismatchError` if a difference exceeds `atol` (pass None to only measure, e.g. an int8 file), and
    ValueError if the file does not take the model's inputs or give its outputs.
    """
    import numpy as np

    model = _as_model(model)
    was_training = model.training
    model.eval()
    session = ort_session(onnx_path, settings=session_settings)
    names = onnx_input_names(model)
    got = [i.name for i in session.get_inputs()]
    if got != names:
        raise ValueError(f"{onnx_path} takes inputs {got}, the model {names}")
    outputs = [o.name for o in session.get_outputs()]
    lengths = (None,) if _is_vision(model) else tuple(seq_lens)
    diffs: dict[str, float] = {name: 0.0 for name in outputs}
    try:
        for batch in batch_sizes:
            for length in lengths:
                inputs = sample_inputs(model, batch=batch, length=length or 8, seed=seed, names=names)
                expected = model(**inputs, **_forward_kwargs(model))
                missing = [name for name in outputs if not isinstance(expected.get(name), torch.Tensor)]
                if missing:
                    raise ValueError(f"{onnx_path} gives outputs {missing} that the model does not")
                results = session.run(outputs, {k: v.cpu().numpy() for k, v in inputs.items()})
                for name, value in zip(outputs, results):
                    reference = expected[name].float().cpu().numpy()
                    if value.shape != reference.shape:
                        raise ValueError(f"output {name}: ONNX shape {value.shape}, PyTorch {reference.shape} "
                                         f"(batch {batch}, length {length})")
                    diffs[name] = max(diffs[name], float(np.abs(value.astype(np.float32) - reference).max(initial=0)))
    finally:
        model.train(was_training)
    if atol is not None and any(d > atol for d in diffs.values()):
        worst = ", ".join(f"{k} {v:.3g}" for k, v in diffs.items())
        raise OnnxMismatchError(f"{onnx_path} differs from PyTorch by more than {atol:g}: max |Δ| {worst}", diffs)
    return diffs


# ---------------------------------------------------------------------------------------------------------------
# Session settings: how onnxruntime runs a file. Which candidate is fastest depends on the file and the CPU, so it is
# measured (`fastest_session_settings`), recorded beside the file (`OUT.session.json`) and read back when the file is
# served (`OnnxRuntimeModel`), never assumed. docs/deployment.md ("Session settings") has the evidence.

SESSION_SETTINGS: dict[str, dict] = {
    # onnxruntime's default (ORT_ENABLE_ALL, every fusion): the reference, and what is used when nothing was measured.
    "all_fusions": {"disabled_optimizers": ()},
    # The same without fusing Add + LayerNormalization into SkipLayerNormalization, which ran slower on some CPUs.
    "no_skip_layernorm_fusion": {"disabled_optimizers": ("SkipLayerNormFusion",)},
}
"""The candidate session settings, by name, in the order they are tried: keyword arguments of `ort_session` beyond
the defaults (graph optimisation level ORT_ENABLE_ALL, CPU execution provider)."""

# The number of choices a multiple-choice file is timed with (its `choices` axis is dynamic).
_TIMED_CHOICES = 4


def _check_settings_name(settings: str) -> None:
    if settings not in SESSION_SETTINGS:
        raise ValueError(f"unknown session settings {settings!r}: choose one of {', '.join(SESSION_SETTINGS)}")


def ort_session(path: str | os.PathLike, threads: int | None = None, settings: str = "all_fusions",
                spinning: bool = True):
    """The onnxruntime `InferenceSession` of the file `path`, as oto_hf runs every file: CPU execution provider,
    `threads` intra-op threads (default: torch's, `torch.get_num_threads()`), warnings and info logs off, every graph
    optimisation except those the named `settings` (a key of `SESSION_SETTINGS`, default "all_fusions":
    onnxruntime's own default) disable. Pass the name `fastest_session_settings` found, or the one
    `recorded_session_settings` reads beside the file, to run the file as fast as this machine runs it.
    `spinning=False` turns off the intra-op threads' busy-waiting after each run: for sessions timed side by side,
    where one session's idle threads would otherwise spin on the cores the next one runs on (a served session, alone,
    keeps onnxruntime's default)."""
    _check_settings_name(settings)
    _, ort = _require_onnx()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads or torch.get_num_threads()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    disabled = list(SESSION_SETTINGS[settings]["disabled_optimizers"])
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)


def _vocab_size(path: Path) -> int:
    """The number of rows of the embedding table that the file's `input_ids` index (to draw valid token ids)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    tables = {t.name: list(t.dims) for t in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == "input_ids":
            name = node.input[0]
            for _ in range(4):  # through a DequantizeLinear / Cast in front of the table
                if name in tables or name not in producers:
                    break
                name = producers[name].input[0]
            if name in tables and tables[name]:
                return int(tables[name][0])
    raise ValueError(f"{path}: no embedding table indexed by input_ids was found, so valid token ids are unknown")


def _timing_feed(session, path: Path, batch_size: int, seq_len: int, seed: int = 0) -> dict:
    """Random inputs of `batch_size` × `seq_len` for every input the session takes: token ids below the file's
    vocabulary size, an all-ones attention mask, zero token types; for images, random pixels of the file's size."""
    import numpy as np

    rng = np.random.default_rng(seed)
    axes = {"batch": batch_size, "sequence": seq_len, "choices": _TIMED_CHOICES}
    feed = {}
    for value in session.get_inputs():
        shape = []
        for dim in value.shape:
            if isinstance(dim, int):
                shape.append(dim)
            elif dim in axes:
                shape.append(axes[dim])
            else:
                raise ValueError(f"{path}: input {value.name} has an axis {dim!r} that is not batch, choices or "
                                 "sequence, so fastest_session_settings cannot fill it")
        if value.name == "input_ids":
            feed[value.name] = rng.integers(0, _vocab_size(path), size=shape, dtype=np.int64)
        elif value.name == "attention_mask":
            feed[value.name] = np.ones(shape, dtype=np.int64)
        elif value.name == "token_type_ids":
            feed[value.name] = np.zeros(shape, dtype=np.int64)
        elif value.name == "pixel_values":
            feed[value.name] = rng.standard_normal(shape, dtype=np.float32)
        else:
            raise ValueError(f"{path}: fastest_session_settings does not know how to fill input {value.name!r} "
                             f"(it fills {', '.join(TEXT_INPUTS)} and pixel_values)")
    return feed


def fastest_session_settings(path: str | os.PathLike, batch_size: int, seq_len: int, threads: int | None = None,
                             repeats: int = 5, candidates=None) -> dict:
    """Time the file `path` under every candidate of `SESSION_SETTINGS` (or the names in `candidates`) on one
    random batch of `batch_size` × `seq_len` (see below), and say which ran fastest. The sessions are built by
    `ort_session` with `threads` (default: torch's) and timed by `oto_hf.timing.interleaved`: one warm-up round,
    calls per timing calibrated so that the fastest lasts about 0.05 s, `repeats` repeats in a rotating order, medians;
    other processes' load is recorded, not waited out. The answer holds for this machine, thread count and shape.

    The batch: token ids drawn below the file's vocabulary size, attention mask all ones, token types zero (a
    multiple-choice file gets 4 choices); for an image file, random pixels of its fixed size (`seq_len` unused).

    Returns {"settings": the fastest name, "seconds": {name: median seconds per call}, "batch_size", "seq_len",
    "threads", "onnxruntime": its version, "repeats", "inner": calls per timing, and the load record of
    `Timings.load()` (foreign_load_cores, max_foreign_load_cores, busy, busy_threshold_cores)}."""
    from functools import partial

    from .timing import interleaved

    names = list(SESSION_SETTINGS) if candidates is None else list(candidates)
    if not names:
        raise ValueError("fastest_session_settings needs at least one candidate")
    for name in names:
        _check_settings_name(name)
    for label, value in (("batch_size", batch_size), ("seq_len", seq_len), ("repeats", repeats)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive whole number, got {value!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: give an .onnx file")
    _, ort = _require_onnx()
    threads = threads or torch.get_num_threads()
    sessions = {name: ort_session(path, threads, name, spinning=False) for name in names}
    feed = _timing_feed(sessions[names[0]], path, batch_size, seq_len)
    timings = interleaved({name: partial(session.run, None, feed) for name, session in sessions.items()}, repeats,
                          warmup=1, min_timing_s=0.05)
    seconds = timings.medians()
    return {"settings": min(names, key=seconds.__getitem__), "seconds": seconds, "batch_size": batch_size,
            "seq_len": seq_len, "threads": threads, "onnxruntime": ort.__version__, "repeats": timings.repeats,
            "inner": timings.inner, **timings.load()}


def session_settings_path(onnx_path: str | os.PathLike) -> Path:
    """Where the session settings measured for `onnx_path` are recorded: ``model.onnx`` -> ``model.session.json``
    (``model.int8.onnx`` -> ``model.int8.session.json``)."""
    path = Path(onnx_path)
    return path.with_name((path.stem if path.suffix == ".onnx" else path.name) + ".session.json")


def write_session_settings(onnx_path: str | os.PathLike, measured: dict) -> Path:
    """Record `measured` (a `fastest_session_settings` result) beside `onnx_path` (`session_settings_path`), with
    the file's name, the CPU model and the platform, for `OnnxRuntimeModel` to read; returns the path written."""
    target = session_settings_path(onnx_path)
    record = {"file": Path(onnx_path).name, **measured, "cpu_model": processor_name(), "platform": platform.platform()}
    partial_path = target.with_name(target.name + ".partial")
    partial_path.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial_path, target)
    return target


def recorded_session_settings(onnx_path: str | os.PathLike) -> str | None:
    """The name of the session settings recorded beside `onnx_path` (`write_session_settings`), or None where none
    is. A record made with another onnxruntime version, or naming settings this version of oto_hf does not have, or
    unreadable, is ignored with a warning (None): measure again (`python -m oto_hf.export`, or
    `fastest_session_settings` and `write_session_settings`)."""
    path = session_settings_path(onnx_path)
    if not path.is_file():
        return None
    _, ort = _require_onnx()
    try:
        record = json.loads(path.read_text())
        name, version = record["settings"], record["onnxruntime"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        warnings.warn(f"{path} is not a session settings record ({error!r}); ignored, running with all_fusions",
                      stacklevel=2)
        return None
    if version != ort.__version__:
        warnings.warn(f"{path} was measured with onnxruntime {version}, this is {ort.__version__}: ignored, running "
                      "with all_fusions; measure again for this version", stacklevel=2)
        return None
    if name not in SESSION_SETTINGS:
        warnings.warn(f"{path} names session settings {name!r}, which are not among {', '.join(SESSION_SETTINGS)}: "
                      "ignored, running with all_fusions", stacklevel=2)
        return None
    return name


class OnnxRuntimeModel(nn.Module):
    """An exported file run by onnxruntime on the CPU, called like the PyTorch model it came from: `model(**inputs)`
    takes the tokenizer's tensors (those the file does not take are dropped; missing token_type_ids are zeros, as in
    PyTorch) and returns a `ModelOutput` of torch
    tensors named as the file's outputs (`logits`, `start_logits`, …). So evaluation loops and latency measurements
    written for PyTorch models run it unchanged. `threads` (default: torch's) sets onnxruntime's intra-op threads.

    `session_settings`: None (default) runs the file with the settings recorded beside it (`OUT.session.json`,
    written by ``python -m oto_hf.export``; see `recorded_session_settings`), or "all_fusions" where none are; a
    name of `SESSION_SETTINGS` forces those. `self.session_settings` holds the name used. `spinning`: as
    `ort_session`'s (False for a file timed beside other sessions)."""

    def __init__(self, onnx_path: str | os.PathLike, threads: int | None = None, session_settings: str | None = None,
                 spinning: bool = True):
        super().__init__()
        if session_settings is not None:
            _check_settings_name(session_settings)
        self.path = str(onnx_path)
        if session_settings is None:
            session_settings = recorded_session_settings(self.path) or "all_fusions"
        self.session_settings = session_settings
        self.session = ort_session(self.path, threads, session_settings, spinning=spinning)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        # Callers find the device through the parameters; onnxruntime runs on the CPU.
        self.device_marker = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, pixel_values=None, **_):
        from transformers.utils import ModelOutput

        if token_type_ids is None and input_ids is not None:  # as the PyTorch models do: all one segment
            token_type_ids = torch.zeros_like(input_ids)
        given = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                     pixel_values=pixel_values)
        missing = [name for name in self.input_names if given.get(name) is None]
        if missing:
            raise ValueError(f"{self.path} needs the inputs {missing}")
        feed = {name: given[name].detach().cpu().numpy() for name in self.input_names}
        results = self.session.run(self.output_names, feed)
        return ModelOutput({name: torch.from_numpy(value) for name, value in zip(self.output_names, results)})


def _format(diffs: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2e}" for name, value in diffs.items())


def _longest_input(model: nn.Module) -> int | None:
    """The most tokens a text model takes: the rows of its position embedding table, less those before the first
    position where positions start after the padding index (RoBERTa-likes); else the config's
    `max_position_embeddings` (None where it has none)."""
    for name, module in model.named_modules():
        if name.endswith("position_embeddings") and isinstance(module, nn.Embedding):
            pad = module.padding_idx
            return module.num_embeddings - (pad + 1 if pad is not None else 0)
    return getattr(model.config, "max_position_embeddings", None)


def _tuning_shape(model: nn.Module, shape: tuple[int, int] | None, explicit: bool) -> tuple[int, int] | None:
    """The batch × tokens the command line tunes the session at: `shape`, except that a text model's longest input
    bounds it (the default is shortened to it; a longer shape asked for is an error)."""
    longest = None if _is_vision(model) else _longest_input(model)
    if shape is None or longest is None or shape[1] <= longest:
        return shape
    if explicit:
        raise ValueError(f"--tune-session {shape[0]}x{shape[1]} is longer than the {longest} tokens the model takes: "
                         f"give at most {shape[0]}x{longest}")
    return shape[0], longest


def _describe_tuning(path: str, measured: dict, sidecar: Path) -> str:
    """One line: which session settings ran `path` fastest, by how much, and where that holds."""
    best = measured["settings"]
    seconds = measured["seconds"]
    others = "; ".join(f"{name} {seconds[name] * 1e3:.3g} ms, {seconds[name] / seconds[best]:.2f}x slower"
                       for name in sorted(seconds, key=seconds.__getitem__) if name != best)
    line = (f"session settings of {path}: {best} ran fastest ({seconds[best] * 1e3:.3g} ms a call"
            + (f"; {others}" if others else "") + f") at {measured['batch_size']}x{measured['seq_len']} with "
            f"{measured['threads']} threads, onnxruntime {measured['onnxruntime']}: this holds for this machine, "
            f"thread count and shape; recorded in {sidecar}")
    if measured.get("busy"):
        line += (f" (measured while other processes used up to {measured['max_foreign_load_cores']:.2f} cores: "
                 "noisy, measure again on a quiet machine)")
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m oto_hf.export",
        description="Export a saved (compressed or dense) model to ONNX, optionally int8-quantized and checked "
                    "against PyTorch with onnxruntime.")
    parser.add_argument("model_dir", help="folder of a model saved with save_pretrained")
    parser.add_argument("out", help="the .onnx file to write (int8: OUT.int8.onnx beside it)")
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="also write the dynamically int8-quantized model")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--check", action="store_true",
                        help="compare onnxruntime's outputs (under the session settings --tune-session found) with "
                             "PyTorch's on padded batches; exit 1 if the float32 file differs by more than --atol (the "
                             "int8 file's difference is printed only)")
    parser.add_argument("--atol", type=float, default=1e-4, help="tolerance of --check (default 1e-4)")
    parser.add_argument("--exporter", choices=_EXPORTERS, default="dynamo",
                        help="torch.onnx exporter (default dynamo; torchscript is torch's deprecated one)")
    parser.add_argument("--per-tensor", action="store_true", help="int8: one scale per tensor, not per channel")
    parser.add_argument("--attention", choices=["eager", "model"], default="eager",
                        help="attention traced: eager (default; onnxruntime runs it faster than the SDPA trace, same "
                             "outputs) or the implementation the model loads with")
    parser.add_argument("--tune-session", default=None, metavar="BATCHxTOKENS",
                        help="time every onnxruntime session setting (SESSION_SETTINGS) on each written file at this "
                             "batch x tokens, the shape you serve, and record the fastest beside the file "
                             "(OUT.session.json), which OnnxRuntimeModel then uses; default 1x128 (or the model's "
                             "longest input, if shorter); 'none' to skip")
    args = parser.parse_args(argv)
    from .timing import parse_shape

    try:
        tune = None if (args.tune_session or "").strip().lower() == "none" else \
            parse_shape(args.tune_session or "1x128", "--tune-session")
        model = load_model(args.model_dir)
        tune = _tuning_shape(model, tune, explicit=args.tune_session is not None)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    info = export_onnx(model, args.out, opset=args.opset, quantize=args.quantize, exporter=args.exporter,
                       per_channel=not args.per_tensor,
                       attn_implementation=None if args.attention == "model" else args.attention)
    print(f"wrote {info['path']} ({info['bytes'] / 1e6:.1f} MB): inputs {info['input_names']}, "
          f"outputs {info['output_names']}, opset {info['opset']}, {info['exporter']} exporter, "
          f"{info['attn_implementation']} attention")
    if info["int8_path"]:
        print(f"wrote {info['int8_path']} ({info['int8_bytes'] / 1e6:.1f} MB, int8 dynamic quantization)")
    settings = {}
    for key in ("path", "int8_path"):
        settings[key] = "all_fusions"
        if info[key] and tune is not None:
            measured = fastest_session_settings(info[key], *tune)
            sidecar = write_session_settings(info[key], measured)
            settings[key] = measured["settings"]
            print(_describe_tuning(info[key], measured, sidecar))
    info["session_settings"] = settings["path"] if tune is not None else None
    info["int8_session_settings"] = settings["int8_path"] if tune is not None and info["int8_path"] else None
    status = 0
    if args.check:
        diffs = check_onnx(model, info["path"], atol=None, session_settings=settings["path"])
        ok = all(d <= args.atol for d in diffs.values())
        print(f"check {info['path']}: max |Δ| {_format(diffs)} (tolerance {args.atol:g}): "
              f"{'ok' if ok else 'FAILED'}")
        info["max_abs_diff"] = diffs
        status = 0 if ok else 1
        if info["int8_path"]:
            int8 = check_onnx(model, info["int8_path"], atol=None, session_settings=settings["int8_path"])
            print(f"check {info['int8_path']}: max |Δ| {_format(int8)} (int8, not held to the tolerance)")
            info["int8_max_abs_diff"] = int8
    print(json.dumps(info))
    return status


if __name__ == "__main__":
    sys.exit(main())
