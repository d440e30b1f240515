"""Markdown tables from the JSON that the benchmark scripts write (for docs/benchmarks.md).

    python benchmarks/tables.py benchmarks/results/p2_run5.json benchmarks/results/p3_run4.json
"""

import json
import sys


def _iqr(r: dict) -> str:
    return f"{r['paired_median']:.3f} [{r['paired_q1']:.3f}–{r['paired_q3']:.3f}]"


def _load(foreign: list) -> str:
    vals = [x for x in foreign if x is not None]
    return f"{max(vals):.2f}" if vals else "n/a"


def machine(payload: dict) -> str:
    m = payload["machine"]
    return (f"- command: `{payload['command']}`\n- machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, "
            f"torch {m['torch_version']} ({m['torch_threads']} threads), transformers {m['transformers_version']}, "
            f"Python {m['python_version']}\n- date (UTC): {m['date_utc']}; commit `{m['git_commit']}`"
            + (f" (oto_hf files modified in the working tree: {', '.join(m['oto_hf_modified_vs_commit'])})"
               if m.get("oto_hf_modified_vs_commit") else "")
            + (f"; wall time {payload['wall_time_s'] / 60:.1f} min" if "wall_time_s" in payload else ""))


def p2(payload: dict) -> str:
    names = {"hspg_target": "HSPG target mode, in the pruning window", "hspg_lambda": "HSPG λ-only, stage 2",
             "adamw_control": "A/A control: a 2nd AdamW copy"}
    rows = ["| model | batch × tokens | measure | HSPG variant | HSPG / AdamW: paired median [IQR] | ratio of medians "
            "| repeats (noisy redone) | max other-process load (cores) |", "|---|---|---|---|---|---|---|---|"]
    rows[0] = rows[0].replace("HSPG variant", "optimizer").replace("HSPG / AdamW", "optimizer / AdamW")
    for model, res in payload["results"].items():
        for key, r in res["ratios"].items():
            measure, kind = key.split("/")
            block = res[measure]
            redone = block["discarded_noisy_repeats"]
            redone = len(redone) if isinstance(redone, list) else redone
            rows.append(f"| {model} | {res['batch_size']} × {res['seq_len']} | "
                        f"{'full step (fwd+bwd+step+zero_grad)' if measure == 'full_step' else 'opt.step() alone'} | "
                        f"{names[kind]} | {_iqr(r)} | {r['ratio_of_medians']:.3f} | {r['n']} ({redone}) | "
                        f"{_load(block['foreign_load_cores'])} |")
    shares = "; ".join(f"{m}: {res['adamw_step_share_of_full_step']:.1%}" for m, res in payload["results"].items())
    return "\n".join(rows) + f"\n\nAdamW's `opt.step()` as a share of its full step (medians): {shares}."


def p3(payload: dict) -> str:
    rows = ["| model | batch × tokens | timed part | speedup dense/compressed: paired median [IQR] | encoder FLOPs ratio "
            "| speedup / FLOPs ratio | repeats (noisy redone) | max other-process load (cores) |",
            "|---|---|---|---|---|---|---|---|"]
    extra = ["| model | max abs Δ logits (sparse vs compressed) | `compress` time, median (runs) "
             "| params dense → compressed | encoder FLOPs / example dense → compressed (tokens) |", "|---|---|---|---|---|"]
    for model, res in payload["results"].items():
        for key, parts in res["latency"].items():
            for part, r in parts.items():
                if not isinstance(r, dict):
                    continue
                rows.append(f"| {model} | {key.replace('batch', '').replace('x', ' × ')} | "
                            f"{'whole model' if part == 'whole_model' else 'encoder only'} | {_iqr(r['speedup'])} | "
                            f"{res['encoder_flops_ratio_dense_over_compressed']:.3f} | "
                            f"{r['speedup_over_flops_ratio']:.3f} | {len(r['seconds']['dense'])} "
                            f"({len(r['discarded_noisy_repeats'])}) | {_load(r['foreign_load_cores'])} |")
        d, c = res["dense_stats"], res["compressed_stats"]
        diff = res["logits_max_abs_diff"]
        extra.append(f"| {model} | {diff['max']:.2e} | "
                     f"{res['compress_median_s']:.3f} s ({len(res['compress_seconds'])}) | "
                     f"{d['total_params'] / 1e6:.1f} M → {res['compressed_stats']['total_params'] / 1e6:.1f} M | "
                     f"{d['encoder_flops'] / 1e9:.2f} G → {c['encoder_flops'] / 1e9:.2f} G ({c['seq_len']}) |")
    return "\n".join(rows) + "\n\n" + "\n".join(extra)


def main() -> None:
    for path in sys.argv[1:]:
        with open(path) as f:
            payload = json.load(f)
        print(f"## {payload['benchmark']} ({path})\n")
        print(machine(payload) + "\n")
        print(p2(payload) if "P2" in payload["benchmark"] else p3(payload))
        print()


if __name__ == "__main__":
    main()
