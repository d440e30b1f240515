"""How much memory a latency table holds while it is measured, and whether timing it in memory-bounded groups (each
later group scaled by the full model timed beside it) changes what it predicts.

    python benchmarks/table_memory.py table MODEL --reserve R [--runtime onnxruntime] [--shape 32x128]
                                      [--repeats 5] [--max-seconds 400] [--patience 10] --out FILE.json
    python benchmarks/table_memory.py measured MODEL [--runtime onnxruntime] [--shape 32x128] [--patience 10]
                                      --out FILE.json
    python benchmarks/table_memory.py summary TABLE.json ... --measured FILE.json

`table` measures MODEL's latency table (`oto_hf.latency.measure_latency_table`, never from a cache) with
`memory_reserve` R: 0 holds a whole width's models at once (unless the machine is truly short), a larger share of
the machine's memory kept free splits them into groups. It records the process's peak resident
memory (run each `table` in its own process: the peak is the process's), the groups the log announced, the repeats,
the build time, the load, and the predicted speedups of the uniform layouts below. `measured` times those layouts
against the full model (`latency.measure_speedup`, interleaved, 5 repeats): what the predictions should say.
`summary` prints both as a markdown table, with each prediction's error against the measured speedup.

Models are random-weight BertForSequenceClassification of the configs below (time and memory do not depend on the
weights' values); figures are only worth publishing from an idle machine (docs/benchmarks.md, "Machines and noise").
"""

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from oto_hf import latency

MODELS = {
    "bert-base": {},
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "tiny": dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
                 max_position_embeddings=64),  # the smoke test's
}
KEPT = (0.75, 0.5, 0.25)  # uniform layouts: this share of every layer's heads and FFN neurons


def model_of(name: str) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**MODELS[name])).eval()


def layouts(model) -> dict[str, tuple[int, int]]:
    heads, width = model.config.num_attention_heads, model.config.intermediate_size
    return {f"{share:.0%}": (round(heads * share), round(width * share)) for share in KEPT}


def table(args) -> dict:
    model = model_of(args.model)
    layers = model.config.num_hidden_layers
    lines: list[str] = []
    spec = latency.LatencySpec.of(args.runtime, args.shape)
    with tempfile.TemporaryDirectory() as cache:
        measured = latency.measure_latency_table(
            model, spec, repeats=args.repeats, max_seconds=args.max_seconds, patience_s=args.patience,
            refresh=True, directory=cache, memory_reserve=args.reserve, log=lines.append)
    return {"model": args.model, "runtime": args.runtime, "shape": args.shape, "reserve": args.reserve,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "groups": 1 + sum("memory is short" in line for line in lines), "repeats": measured.repeats,
            "build_seconds": measured.build_seconds, "load": measured.load, "log": lines,
            "predicted": {name: measured.speedup([h] * layers, [w] * layers)
                          for name, (h, w) in layouts(model).items()}}


def measured(args) -> dict:
    model = model_of(args.model)
    spec = latency.LatencySpec.of(args.runtime, args.shape)
    result = {"model": args.model, "runtime": args.runtime, "shape": args.shape, "measured": {}, "load": {}}
    for name, (h, w) in layouts(model).items():
        timing = latency.measure_speedup(model, latency.sized_model(model, h, w), spec, repeats=5,
                                         patience_s=args.patience)
        result["measured"][name] = timing["speedup"]
        result["load"][name] = {"busy": timing["busy"], "max_foreign_load_cores": timing["max_foreign_load_cores"]}
    return result


def summary(tables: list[dict], truth: dict) -> str:
    names = list(truth["measured"])
    rows = ["| model | memory reserve | groups | repeats | peak memory | built in | "
            + " | ".join(f"{n} kept: predicted (error)" for n in names) + " | busy |",
            "|" + "---|" * (7 + len(names))]
    for t in tables:
        cells = [f"{t['predicted'][n]:.2f}× ({t['predicted'][n] / truth['measured'][n] - 1:+.1%})" for n in names]
        rows.append(f"| {t['model']} | {t['reserve']:.0%} | {t['groups']} | {t['repeats']} | "
                    f"{t['peak_rss_gb']:.1f} GB | {t['build_seconds']:.0f} s | " + " | ".join(cells)
                    + f" | {'yes' if t['load']['busy'] else 'no'} ({t['load']['max_foreign_load_cores']:.2f}) |")
    rows.append(f"| measured (`measure_speedup`) | | | 5 | | | "
                + " | ".join(f"{truth['measured'][n]:.2f}×" for n in names)
                + f" | {'yes' if any(v['busy'] for v in truth['load'].values()) else 'no'} |")
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("table", "measured"):
        p = sub.add_parser(command)
        p.add_argument("model", choices=sorted(MODELS))
        p.add_argument("--runtime", default="onnxruntime", choices=latency.RUNTIMES)
        p.add_argument("--shape", default="32x128", help="batch × tokens (default 32x128)")
        p.add_argument("--out", required=True, type=Path)
        p.add_argument("--patience", type=float, default=10.0,
                       help="seconds busy repeats (other processes on the CPU) are waited out and redone")
        if command == "table":
            p.add_argument("--reserve", type=float, required=True,
                           help="memory_reserve of the table: the share of memory it leaves free")
            p.add_argument("--repeats", type=int, default=5)
            p.add_argument("--max-seconds", type=float, default=400.0)
    p = sub.add_parser("summary")
    p.add_argument("tables", nargs="+", type=Path)
    p.add_argument("--measured", required=True, type=Path)
    args = parser.parse_args(argv)
    if args.command == "summary":
        print(summary([json.loads(t.read_text()) for t in args.tables], json.loads(args.measured.read_text())))
        return
    result = table(args) if args.command == "table" else measured(args)
    result["command"] = "python benchmarks/table_memory.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("log", "load")}, indent=1))


if __name__ == "__main__":
    main()
