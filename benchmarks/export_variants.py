"""The evidence of docs/deployment.md's exporter and int8 tables: which torch exporter, and int8 per channel or per
tensor, on the real compressed all-MiniLM-L6-v2.

The model is the one of `tests/test_export.py::test_command_line_on_the_real_minilm_compressed`: with
torch.manual_seed(0), the packaged all-MiniLM-L6-v2 loaded with `AutoModel` (SDPA attention, transformers' default),
about 30% of its groups zeroed at random plus every head of layer 1 and every FFN neuron of layer 2, then cut out
by `oto_hf.compress`.

1. Exporters: `export_onnx` with `exporter="dynamo"` and `"torchscript"`, each `--repeats` times in alternating order
   (`oto_hf.timing.interleaved` without warm-up: wall time of the whole call, the first call of each also paying its
   imports; other processes' CPU load recorded under "export_timing_load"), then `check_onnx`
   of each file: max |Δ| of `last_hidden_state` and `pooler_output` against PyTorch at batches 1, 3, 8 × lengths
   7, 33, 128, rows after the first padded, every position compared.
2. int8: the dynamo file quantized with `quantize_int8`, per channel (the default) and per tensor. The float32 file
   and both int8 files run (onnxruntime, CPUExecutionProvider) on the same 8 rows of 64 random tokens
   (`sample_inputs`, seed 0: row r padded after 64 - 3r tokens) and on the three sentences of the test (MiniLM
   tokenizer, padded); for each: file size, max and mean |Δ| of `last_hidden_state` against PyTorch (every
   position, padded ones included, as check_onnx; also over real tokens only), and the cosines of the mean-pooled
   (attention-mask-weighted) embeddings to PyTorch's.

Writes the JSON (versions, `common.machine_info()`, every figure) to `--out` and prints the two tables in markdown.
The files go to a temporary folder deleted at the end. Times are wall times on whatever else the machine is doing.

    python benchmarks/export_variants.py                       # -> benchmarks/results/export_variants.json
    python benchmarks/export_variants.py --repeats 1 --out /tmp/export_variants.json
"""

import argparse
import sys
import tempfile
from functools import partial
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets the offline environment before transformers is imported)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import oto_hf  # noqa: E402
from oto_hf import timing  # noqa: E402
from oto_hf.export import check_onnx, export_onnx, quantize_int8, sample_inputs  # noqa: E402
from oto_hf.groups import HEAD, NEURON  # noqa: E402

SENTENCES = ["Which NFL team represented the AFC at Super Bowl 50?", "Where is the Eiffel Tower?",
             "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France."]


def compressed_minilm():
    torch.manual_seed(0)
    dense = transformers.AutoModel.from_pretrained(common.minilm_path()).eval()
    groups = oto_hf.zero_invariant_groups(dense)
    groups.zero_((torch.rand(groups.num_groups) < 0.3) | ((groups.layers == 1) & (groups.kinds == HEAD))
                 | ((groups.layers == 2) & (groups.kinds == NEURON)))
    return oto_hf.compress(dense).eval()


def pooled(hidden, mask):
    vectors = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def compare(session, model, inputs) -> dict:
    """last_hidden_state of the ONNX session against PyTorch's on `inputs` (torch tensors)."""
    with torch.no_grad():
        reference = model(**inputs).last_hidden_state.numpy()
    hidden = session.run(["last_hidden_state"], {k: v.numpy() for k, v in inputs.items()})[0]
    mask = inputs["attention_mask"].numpy().astype(np.float32)
    diff = np.abs(hidden - reference)
    cosines = (pooled(hidden, mask) * pooled(reference, mask)).sum(1)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "max_abs_diff_real_tokens": float(diff[mask > 0].max()),
            "mean_abs_diff_real_tokens": float(diff[mask > 0].mean()),
            "reference_abs_max": float(np.abs(reference).max()),
            "min_cosine": float(cosines.min()), "cosines": cosines.round(6).tolist()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="exports per exporter (default 2)")
    parser.add_argument("--out", default=str(common.REPO_ROOT / "benchmarks/results/export_variants.json"))
    args = parser.parse_args(argv)
    common.setup_threads()
    transformers.utils.logging.disable_progress_bar()
    result = {"benchmark": "export_variants", "command": common.command_line(__file__, argv),
              "versions": {name: version(name) for name in ("torch", "transformers", "onnx", "onnxruntime",
                                                            "onnxscript")},
              "machine": common.machine_info()}
    model = compressed_minilm()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        exporters = {"dynamo": {}, "torchscript": {}}

        def export_with(name):
            exporters[name]["bytes"] = export_onnx(model, Path(tmp) / f"{name}.onnx", exporter=name)["bytes"]

        times = timing.interleaved({name: partial(export_with, name) for name in exporters}, args.repeats, warmup=0)
        for name, entry in exporters.items():
            entry["seconds"] = [round(s, 2) for s in times.seconds[name]]
        result["export_timing_load"] = times.load()
        for name, entry in exporters.items():
            entry["max_abs_diff"] = check_onnx(model, Path(tmp) / f"{name}.onnx", batch_sizes=(1, 3, 8),
                                               seq_lens=(7, 33, 128), atol=None)
        files = {"float32": Path(tmp) / "dynamo.onnx",
                 "int8, per channel (default)": quantize_int8(Path(tmp) / "dynamo.onnx", Path(tmp) / "pc.onnx"),
                 "int8, per tensor": quantize_int8(Path(tmp) / "dynamo.onnx", Path(tmp) / "pt.onnx",
                                                   per_channel=False)}
        random_rows = sample_inputs(model, batch=8, length=64, seed=0)
        batch = transformers.AutoTokenizer.from_pretrained(common.minilm_path())(SENTENCES, padding=True,
                                                                                 return_tensors="pt")
        sentences = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        int8 = {}
        for label, path in files.items():
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            int8[label] = {"bytes": path.stat().st_size, "random_8x64": compare(session, model, random_rows),
                           "sentences": compare(session, model, sentences)}
    result["exporters"], result["int8"] = exporters, int8
    common.write_json(args.out, result)

    print("| exporter | max \\|Δ\\| last_hidden_state | max \\|Δ\\| pooler_output | seconds per export | size |")
    print("|---|---|---|---|---|")
    for name, entry in exporters.items():
        diffs = entry["max_abs_diff"]
        print(f"| {name} | {diffs['last_hidden_state']:.1e} | {diffs['pooler_output']:.1e} | "
              f"{', '.join(f'{s:.1f}' for s in entry['seconds'])} | {entry['bytes'] / 1e6:.1f} MB |")
    print("\n| file | size | max \\|Δ\\| last_hidden_state | mean \\|Δ\\| | min cosine (8×64 random) | "
          "cosines (3 sentences) |")
    print("|---|---|---|---|---|---|")
    for label, entry in int8.items():
        rows, text = entry["random_8x64"], entry["sentences"]
        print(f"| {label} | {entry['bytes'] / 1e6:.1f} MB | {rows['max_abs_diff']:.2g} | {rows['mean_abs_diff']:.2g} | "
              f"{rows['min_cosine']:.4f} | {', '.join(f'{c:.4f}' for c in text['cosines'])} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
