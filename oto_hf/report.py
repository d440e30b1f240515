"""The end-of-run report of the job scripts (`run_squad.py`, `run_glue.py`): report.json, report.md and PNG plots,
written atomically so that a report on disk always belongs to a finished run.

A report's "task" entry says how to show its quality figures: a title, the metric keys in order, whether they are
fractions (shown as percentages) and what one prediction is called; without one it is a SQuAD report."""

import json
import os
from pathlib import Path

from .latency import describe_speed_target
from .timing import describe_load
from .timing import latency_ratio  # noqa: F401  (re-exported: its home is timing.py)


SQUAD_TASK = {"title": "SQuAD v1.1, official EM/F1", "metrics": ["exact_match", "f1"], "fractions": False,
              "unit": "answers"}
METRIC_NAMES = {"exact_match": "EM", "f1": "F1", "accuracy": "accuracy", "matthews_correlation": "Matthews corr.",
                "pearson": "Pearson", "spearmanr": "Spearman"}


def write_report(output_dir: str | os.PathLike, report: dict, log_history: list[dict]) -> dict[str, Path]:
    """Write plots, report.md and report.json (last, via a temporary file and a rename)."""
    output_dir = Path(output_dir)
    plots = _plots(output_dir, report, log_history)
    report = dict(report, plots={k: str(p.relative_to(output_dir)) for k, p in plots.items()})
    _atomic_write(output_dir / "report.md", render_markdown(report))
    _atomic_write(output_dir / "report.json", json.dumps(report, indent=2, default=str))
    return {"report.json": output_dir / "report.json", "report.md": output_dir / "report.md", **plots}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _plots(output_dir: Path, report: dict, log_history: list[dict]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = output_dir / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}

    train_logs = [e for e in log_history if "loss" in e and "step" in e]
    fig, ax_loss = plt.subplots(figsize=(7, 4))
    steps = [e["step"] for e in train_logs]
    ax_loss.plot(steps, [e["loss"] for e in train_logs], color="tab:blue", marker=".", label="training loss")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("training loss", color="tab:blue")
    pruned = report.get("mode", "oto") == "oto"  # a dense run (--dense) has no sparsity and no layers to draw
    if pruned:
        ax_sparsity = ax_loss.twinx()
        ax_sparsity.plot(steps, [e.get("oto/group_sparsity", 0.0) for e in train_logs], color="tab:red", marker=".",
                         label="group sparsity")
        ax_sparsity.plot(steps, [1 - e.get("oto/encoder_flops_kept", 1.0) for e in train_logs], color="tab:orange",
                         linestyle="--", label="encoder FLOPs removed")
        ax_sparsity.set_ylabel("fraction", color="tab:red")
        ax_sparsity.set_ylim(0, 1)
    fig.legend(loc="upper center", ncol=3, fontsize=8)
    fig.tight_layout()
    paths["training"] = folder / "training.png"
    fig.savefig(paths["training"], dpi=120)
    plt.close(fig)
    if not pruned:
        return paths

    before, after = report["model"]["before"], report["model"]["after"]
    layers = list(range(len(after["heads_per_layer"])))
    fig, (ax_heads, ax_ffn) = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, title in ((ax_heads, "heads_per_layer", "attention heads"), (ax_ffn, "ffn_width_per_layer", "FFN width")):
        ax.bar(layers, before[key], color="lightgray", label="before")
        ax.bar(layers, after[key], color="tab:green", label="kept")
        ax.set_xlabel("layer")
        ax.set_title(title)
        ax.set_xticks(layers)
    ax_heads.legend(fontsize=8)
    fig.tight_layout()
    paths["layers"] = folder / "kept_per_layer.png"
    fig.savefig(paths["layers"], dpi=120)
    plt.close(fig)
    return paths


def render_markdown(report: dict) -> str:
    if report.get("mode", "oto") == "dense":
        return render_dense_markdown(report)
    q = report["quality"]
    before, after = report["model"]["before"], report["model"]["after"]

    def kept(key):
        return f"{after[key] / before[key]:.1%}" if before[key] else "n/a"

    unit, examples = report.get("task", SQUAD_TASK)["unit"], q.get("examples", q.get("questions"))
    lines = [
        *_report_head(report, "OTO run report"),
        _quality_row(report, "group-sparse (trained, full size)", q["group_sparse"]),
        _quality_row(report, "compressed", q["compressed"]),
        "",
        ("The compressed model gives **identical predictions** to the group-sparse model "
         f"({q['identical_predictions_count']} of {examples} {unit} equal)." if q["identical_predictions"] else
         f"**Warning:** {examples - q['identical_predictions_count']} {unit} differ between the group-sparse and "
         "the compressed model."),
        "",
        "## Size",
        "",
        "| | before | after | kept |",
        "|---|---|---|---|",
        f"| parameters | {before['total_params']:,} | {after['total_params']:,} | {kept('total_params')} |",
        f"| encoder parameters | {before['encoder_params']:,} | {after['encoder_params']:,} | {kept('encoder_params')} |",
        f"| encoder FLOPs / example ({after['seq_len']} tokens) | {before['encoder_flops']:,} | {after['encoder_flops']:,} | {kept('encoder_flops')} |",
        *([f"| hidden width | {before['hidden_size']:,} | {after['hidden_size']:,} | {kept('hidden_size')} |"]
          if before.get("hidden_size") != after.get("hidden_size") else []),
        "",
        "Encoder FLOPs are the layers' matrix products (projections, attention scores and context, at 2 per "
        "multiply-add); embeddings are lookups, and norms, activations and residual adds are elementwise, none "
        "counted. Encoder parameters are the layers'; parameters, the whole model's (embeddings and task head "
        "included; a parameter target with the hidden width pruned counts these).",
        "",
        "| layer | heads | FFN width |",
        "|---|---|---|",
    ]
    for i, (h0, h1, w0, w1) in enumerate(zip(before["heads_per_layer"], after["heads_per_layer"],
                                             before["ffn_width_per_layer"], after["ffn_width_per_layer"])):
        lines.append(f"| {i} | {h1} / {h0} | {w1} / {w0} |")
    lat = report.get("latency")
    lines += ["", "## Speed", ""]
    if report.get("speed_target"):
        lines += [describe_speed_target(report["speed_target"]), ""]
    if lat:
        lines.append((
            f"Measured inference speedup of the compressed model: **{lat['speedup']:.2f}×** at batch "
            f"{lat['batch_size']} × {lat['seq_len']} tokens ({lat['repeats']} interleaved repeats, medians, "
            f"{lat['threads']} threads), against an encoder FLOPs ratio of {lat['encoder_flops_ratio']:.2f}× at that "
            + ("length (the embeddings, norms and task head narrowed with the hidden width; residual adds, "
               "activations and per-operator costs do not scale with FLOPs). "
               if before.get("hidden_size") != after.get("hidden_size") else
               "length (embeddings, LayerNorms and the task head are not pruned). ")
            + describe_load(lat)).rstrip()
        )
    else:
        lines.append("Latency was not measured (--report_latency_repeats 0).")
    lines += _onnx_lines(report)
    lines += [
        "",
        f"Training time: {report['training']['train_runtime_s']:.0f} s for {report['training']['steps']} steps.",
        "",
        "![training](plots/training.png)",
        "",
        "![kept per layer](plots/kept_per_layer.png)",
        "",
    ]
    return "\n".join(lines)


def _onnx_lines(report: dict) -> list[str]:
    """The ONNX Runtime section (--export_onnx): the files, their agreement with PyTorch, their latency against the
    full-size model's export, and the int8 file's quality beside the compressed model's."""
    onnx = report.get("onnx")
    if not onnx:
        return []
    diff = max(onnx["max_abs_diff"].values())
    lines = ["", "## ONNX Runtime", "",
             f"`{onnx['path']}` ({onnx['bytes'] / 1e6:.1f} MB, opset {onnx['opset']}): onnxruntime's outputs differ "
             f"from PyTorch's by at most {diff:.1e} on padded test batches."]
    int8, lat = onnx.get("int8"), onnx.get("latency")
    if int8:
        lines.append(f"`{int8['path']}` (int8 dynamic quantization, {int8['bytes'] / 1e6:.1f} MB).")
    if lat:
        lines += ["", f"Latency in onnxruntime against the full-size model's own export, batch {lat['batch_size']} × "
                  f"{lat['seq_len']} tokens ({lat['repeats']} interleaved repeats, medians, {lat['threads']} threads):", "",
                  "| file | median (s) | speedup over full size, float32 |", "|---|---|---|",
                  f"| full size, float32 | {lat['dense_median_s']:.4f} | 1.00× |",
                  f"| compressed, float32 | {lat['compressed_median_s']:.4f} | {lat['speedup']:.2f}× |"]
        if int8 and int8.get("latency"):
            lines.append(f"| compressed, int8 | {int8['latency']['compressed_median_s']:.4f} | "
                         f"{int8['latency']['speedup']:.2f}× |")
        if describe_load(lat):
            lines += ["", describe_load(lat)]
    if int8:
        lines += ["", "Quality of the int8 file:", "", *_report_head(report, "")[-2:],
                  _quality_row(report, "compressed, float32 (PyTorch)", report["quality"]["compressed"]),
                  _quality_row(report, "compressed, int8 (onnxruntime)", int8["quality"])]
    return lines


def render_dense_markdown(report: dict) -> str:
    """The report of a job's `--dense` run: fine-tuning without pruning, the start and teacher of a pruning run."""
    q, stats = report["quality"], report["model"]["after"]
    saved = report["model"]["saved_to"]
    return "\n".join([
        *_report_head(report, "Dense fine-tuning report",
                      f" (full size, no pruning; optimizer `{report['training']['optimizer']}`)"),
        _quality_row(report, "dense", q["dense"]),
        "",
        f"Parameters: {stats['total_params']:,} ({stats['encoder_params']:,} in the encoder); encoder FLOPs / example "
        f"({stats['seq_len']} tokens): {stats['encoder_flops']:,}.",
        "",
        f"Training time: {report['training']['train_runtime_s']:.0f} s for {report['training']['steps']} steps.",
        "",
        "## Next: prune it",
        "",
        f"Start OTO from this model and distil from it: `python {report.get('script', 'run_squad.py')} <config> "
        f"--model_name_or_path {saved} "
        f"--teacher_model_name_or_path {saved} --output_dir <new folder>`.",
        "",
        "![training](plots/training.png)",
        "",
    ])


def _report_head(report: dict, title: str, model_note: str = "") -> list[str]:
    """Title, model, data and the head of the quality table: the same in both kinds of report."""
    task, data = report.get("task", SQUAD_TASK), report["data"]
    described = data.get("summary") or (f"{data['train_questions']} training questions ({data['train_features']} "
                                        f"features), {data['eval_questions']} evaluation questions.")
    return [
        f"# {title}",
        "",
        f"Model: `{report['model']['name_or_path']}` → `{report['model']['saved_to']}`{model_note}",
        f"Data: {described}",
        "",
        f"## Quality ({task['title']})",
        "",
        "| model | " + " | ".join(METRIC_NAMES.get(m, m) for m in task["metrics"]) + " |",
        "|---|" + "---|" * len(task["metrics"]),
    ]


def _quality_row(report: dict, name: str, metrics: dict) -> str:
    task = report.get("task", SQUAD_TASK)
    scale = 100 if task["fractions"] else 1
    return f"| {name} | " + " | ".join(f"{scale * metrics[m]:.2f}" for m in task["metrics"]) + " |"
