"""benchmarks/quality.py and its table benchmarks/p1.yaml: committed results reproduce from their descriptions, the
table's references hold, paired differences, scoring of saved predictions, and one tiny run of each kind."""

import dataclasses
import json
import shlex
import sys
from pathlib import Path

import pytest
import yaml

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path[:0] = [str(BENCH), str(BENCH.parent)]  # quality.py's folder; the repository root for run_squad.py

import quality  # noqa: E402
import run_squad  # noqa: E402
from oto_hf import runner  # noqa: E402
from oto_hf.tasks import get_task  # noqa: E402

SQUAD = get_task("squad")
# Options added to run_squad.py after some runs: absent from their record, they behaved as these values do.
BEFORE_THEY_EXISTED = {"oto_layer_floor": 0.0, "oto_saliency_zero_init": False, "oto_hold_lr_through_window": False}
# Retired options (runner.RETIRED_OPTIONS): what today's code does in their stead, when a description does not give
# them (a description that gives one describes a run that only runs at runner.RETIRED_AT).
RETIRED_TODAY = {"oto_saliency_zero_init": True, "oto_hold_lr_through_window": False, "distillation_hidden_weight": 0.0}


def _committed_results():
    table = quality.load_table()
    return [(suite, path) for suite, spec in table["suites"].items()
            for path in sorted((quality.REPO_ROOT / spec["results"]).glob("*/result.json"))]


def _settings(argv: list[str]) -> dict:
    """Every field run_squad.py's parser gives for `argv`, with the model folders named from the results folder
    (where a run's fine-tuned model lies) or by their folder name (a pretrained model), and no output folder; a
    retired option has the value `argv` gives it, else what today's code does in its stead."""
    fields = dict(RETIRED_TODAY)
    for args in runner.parse_arguments(SQUAD, [argv[0], *quality.without_retired(argv[1:])]):
        fields.update(args.to_dict() if hasattr(args, "to_dict") else dataclasses.asdict(args))
    for i, arg in enumerate(argv[:-1]):
        if arg.startswith("--") and arg[2:] in runner.RETIRED_OPTIONS:
            fields[arg[2:]] = yaml.safe_load(argv[i + 1])
    for key in ("model_name_or_path", "teacher_model_name_or_path"):
        if fields[key]:
            fields[key] = fields[key].split("benchmarks/results/")[-1] if "benchmarks/results/" in fields[key] \
                else Path(fields[key]).name
    fields.pop("output_dir")
    return fields


def _pretrained(result: dict) -> str | None:
    """The pretrained model the recorded command named (full scale ran with a local copy of MiniLM)."""
    words = shlex.split(result["command"])
    return words[words.index("--model_name_or_path") + 1] if "--model_name_or_path" in words else None


def mismatches(bench: quality.Bench, result: dict) -> dict:
    """{setting: (what the run used, what its description builds today)} for a committed result."""
    run, training = bench.run(result["method"]), result["training"]
    if run.spec["kind"] == "peer":
        model_args, data_args, settings = bench.adamw_settings(run, Path("unused"))
        followed = bench.result(bench.follows(run))
        distillation = training.get("distillation") or {}  # not recorded before distilled peers existed
        pairs = {"seed": (training["seed"], settings.seed), "learning_rate": (training["learning_rate"],
                 settings.learning_rate), "num_train_epochs": (training["num_train_epochs"], settings.num_train_epochs),
                 "matched_to": (result["matched_to"], bench.follows(run)),
                 "max_steps": (training["max_steps"], followed["training"]["steps"]),
                 "target_flops_kept": (result["target_flops_kept"], followed["kept"]["encoder_flops"]),
                 "pruned_from": (result.get("pruned_from", bench.ref(run, run.spec["start"])),
                                 bench.ref(run, run.spec["start"])),
                 "teacher": (bool(distillation), run.spec["teacher"] != "none")}
        if distillation:
            pairs |= {"alpha": (distillation["alpha"], model_args.distillation_alpha),
                      "temperature": (distillation["temperature"], model_args.distillation_temperature),
                      "hidden_weight": (distillation.get("hidden_weight", 0.0), run.spec.get("hidden_weight", 0.0))}
        return {k: v for k, v in pairs.items() if v[0] != v[1]}
    # dense and OTO: the recorded command line against today's, both parsed by run_squad.py; where the run recorded
    # the value it used (its lr, seed, epochs, oto_* and distillation settings), that value wins over the command
    # read with today's config and defaults.
    if run.spec["kind"] == "oto":
        recorded_argv = shlex.split(result["run_squad_command"])[2:]
    else:
        recorded_argv = [result["config"], *result["overrides"], "--seed", str(training["seed"])]
    recorded = _settings([str(quality.REPO_ROOT / recorded_argv[0]), *recorded_argv[1:]])
    recorded |= {k: training[k] for k in ("learning_rate", "seed", "num_train_epochs")}
    if run.spec["kind"] == "oto":
        recorded |= {**BEFORE_THEY_EXISTED, **training["oto_settings"]}
    else:  # the oto_* options do not apply to a dense run
        recorded = {k: v for k, v in recorded.items() if not k.startswith("oto_")}
    if distillation := training.get("distillation"):
        recorded |= {"distillation_alpha": distillation["alpha"],
                     "distillation_temperature": distillation["temperature"],
                     "distillation_hidden_weight": distillation.get("hidden_weight", 0.0)}
    today = _settings(bench.oto_argv(run, Path("unused")) if run.spec["kind"] == "oto"
                      else bench.argv(run) + ["--output_dir", "unused"])
    return {k: (v, today[k]) for k, v in recorded.items() if today[k] != v}


def test_every_committed_result_is_what_its_description_runs_today():
    checked = 0
    for suite, path in _committed_results():
        result = json.loads(path.read_text())
        bench = quality.Bench(suite, pretrained=_pretrained(result))
        assert result["method"] == path.parent.name in bench.runs, f"{path}: no run of that name in the table"
        assert not (differ := mismatches(bench, result)), f"{suite}/{path.parent.name}: {differ}"
        checked += 1
    assert checked >= 75


def test_every_committed_glue_result_is_a_run_of_its_table_and_scores_what_it_records():
    """P4 and P7 (benchmarks/p4.yaml, p7.yaml, GLUE): each committed run names a run of its table, was trained with the
    table's task, seed and hidden-width setting, and its saved predictions give the accuracy its result.json records,
    on every dev example."""
    checked = 0
    tables = [(BENCH / name, suite) for name in ("p4.yaml", "p7.yaml") for suite in quality.load_table(BENCH / name)["suites"]]
    for table, suite in tables:
        bench = quality.Bench(suite, table=table)
        golds = quality.golds(bench, full_dev=False)
        for path in sorted(bench.results.glob("*/result.json")):
            result, name = json.loads(path.read_text()), path.parent.name
            assert result["method"] == name in bench.runs, f"{path}: no run of that name in {table.name}"
            assert result["training"]["seed"] == bench.runs[name].seed
            command = result["run_glue_command"] if "run_glue_command" in result else " ".join(result["overrides"])
            assert f"--task_name {bench.suite['options']['task_name']}" in command, name
            spec = bench.runs[name].spec
            if spec["kind"] == "oto":
                goal = f"--oto_speedup {spec['speedup']}" if "speedup" in spec else f"--oto_target {spec['target']}"
                assert goal in command, name
                assert ("--oto_prune_hidden true" in command) == bool(spec.get("hidden")), name
            if spec["kind"] == "peer":
                assert result["pruning"].get("hidden", False) == bool(spec.get("hidden")), name
            scores = quality.scores_of(bench, name, golds, full_dev=False)
            assert len(scores) == len(golds) and 100 * sum(scores) / len(scores) == pytest.approx(
                100 * result["quality"]["accuracy"], abs=1e-9), name
            checked += 1
    assert checked >= 15


def test_a_changed_description_no_longer_matches_its_result(tmp_path):
    table = yaml.safe_load(quality.TABLE.read_text())
    table["runs"]["oto50"]["options"] = {**table["runs"]["oto50"]["options"], "oto_layer_floor": 0.25}
    table["runs"]["tp50kd"]["follows_at_seed"] = {}
    (tmp_path / "p1.yaml").write_text(yaml.safe_dump(table))
    bench = quality.Bench("p1", table=tmp_path / "p1.yaml")
    oto50, tp50kd = (json.loads((bench.results / n / "result.json").read_text()) for n in ("oto50", "tp50kdseed1"))
    assert mismatches(bench, oto50) == {"oto_layer_floor": (0.0, 0.25)}
    assert mismatches(bench, tp50kd)["matched_to"] == ("oto50zerouniformkdseed1", "oto50zerouniformfromdensekdseed1")


def _table(runs: dict, **suites) -> dict:
    return {"task": "squad", "config": "configs/minilm_squad_p1.yaml", "baseline": "dense",
            "suites": {"p1": {"results": "r", **suites}}, "runs": runs}


DENSE = {"kind": "dense", "seeds": [0, 1], "about": "dense"}
OTO = {"kind": "oto", "target": 0.5, "seeds": [0, 1], "about": "oto"}
PEER = {"kind": "peer", "target": 0.5, "start": "dense", "follows": "oto50", "seeds": [0, 1], "about": "peer"}


@pytest.mark.parametrize("runs, suite, error", [
    ({"dense": DENSE, "oto50": {**OTO, "taget": 0.5}}, {}, r"run 'oto50': unknown key 'taget'"),
    ({"dense": DENSE, "oto50": OTO, "tp50": {**PEER, "follows": "oto70"}}, {}, r"run 'tp50': follows: 'oto70' is not"),
    ({"dense": DENSE, "oto50": OTO, "tp50": {**PEER, "seeds": [0, 2]}}, {}, r"run 'tp50': start: 'dense' has no seed 2"),
    ({"dense": DENSE, "oto50": {**OTO, "teacher": "dense", "seeds": [3]}}, {}, r"'oto50': teacher: 'dense' has no seed 3"),
    ({"dense": DENSE, "oto50": OTO, "oto50seed1": {**OTO, "seeds": [0]}}, {}, r"defined twice: oto50seed1"),
    ({"dense": DENSE, "oto50": {**OTO, "alpha": 0.9}}, {}, r"'oto50': alpha and hidden_weight need a teacher"),
    ({"dense": DENSE, "oto50": OTO, "tp50": PEER}, {"follows": {"tp50": "oto30"}}, r"suite 'p1'.*'oto30' is not"),
    ({"dense": DENSE, "oto50": OTO}, {"full_dev": True, "fulldev": True}, r"suite 'p1': unknown key 'fulldev'"),
    ({"dense": DENSE, "fast": {**OTO, "speedup": 2}}, {}, r"'fast': oto and peer runs have one target"),
    ({"dense": DENSE, "oto50": OTO, "tp": {**PEER, "target": None, "speedup": 2}}, {}, r"'tp': oto and peer runs"),
    ({"dense": DENSE, "oto50": OTO, "tp": {**PEER, "speedup": 2}}, {}, r"'tp': oto and peer runs have one target"),
    ({"dense": {**DENSE, "hidden": True}}, {}, r"'dense': hidden .* is for oto and peer runs"),
    ({"dense": DENSE, "oto50": {**OTO, "hidden": "yes"}}, {}, r"'oto50': hidden .* is for oto and peer runs"),
])
def test_the_table_refuses_what_it_cannot_run(runs, suite, error):
    with pytest.raises(quality.TableError, match=error):
        quality.check_table(_table(runs, **suite), "p1.yaml")


def test_a_speed_target_run_passes_its_speedup_to_the_job(tmp_path):
    table = _table({"dense": DENSE, "fast": {**OTO, "target": None, "speedup": 2.5,
                                              "latency": {"runtime": "onnxruntime", "batch_size": 1}}})
    del table["runs"]["fast"]["target"]
    quality.check_table(table, "p1.yaml")
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({**table, "latency": {"batch_size": 4, "seq_len": 64, "repeats": 1},
                                                      "peer_calibration_batches": 1, "smoke": {}}))
    bench = quality.Bench(table=tmp_path / "t.yaml")
    argv = bench.argv(bench.run("fast"))
    assert argv[argv.index("--oto_speedup") + 1] == "2.5" and "--oto_target" not in argv


def test_hidden_runs_prune_the_stream_in_the_job_and_in_the_peer():
    """P7's table: an OTO run with `hidden` passes --oto_prune_hidden true to the job, the one without does not; its
    peer follows it (its FLOPs and steps) from the same seed's dense run, which is also every run's teacher."""
    bench = quality.Bench("sst2", table=BENCH / "p7.yaml")
    hidden, plain = bench.argv(bench.run("oto75hseed1")), bench.argv(bench.run("oto75seed1"))
    assert hidden[hidden.index("--oto_prune_hidden") + 1] == "true" and "--oto_prune_hidden" not in plain
    for argv in (hidden, plain):
        assert argv[argv.index("--max_steps") + 1] == "600"
        assert argv[argv.index("--model_name_or_path") + 1].endswith("p7_sst2/denseseed1/model")
        assert argv[argv.index("--teacher_model_name_or_path") + 1].endswith("p7_sst2/denseseed1/model")
    peer = bench.run("tp75hseed1")
    assert peer.spec["hidden"] and bench.follows(peer) == "oto75hseed1"
    assert ("oto75hseed1", "oto75seed1") in quality.comparison_pairs(bench, ["oto75hseed1", "oto75seed1"])


def test_the_table_refuses_a_key_given_twice(tmp_path):
    (tmp_path / "t.yaml").write_text(quality.TABLE.read_text().replace("  oto50x2:\n", "  oto50:\n", 1))
    with pytest.raises(quality.TableError, match=r"line \d+: \['oto50'\] given twice"):
        quality.load_table(tmp_path / "t.yaml")


def test_paired_difference_and_its_interval():
    same = quality.paired_difference([0.5, 1.0, 0.0], [0.5, 1.0, 0.0])
    assert same["difference"] == 0 and same["ci95"] == (0.0, 0.0) and same["a_better"] == same["b_better"] == 0
    shifted = quality.paired_difference([0.6] * 50, [0.5] * 50)  # +10 F1 points on every question
    assert shifted["difference"] == pytest.approx(10.0) and shifted["ci95"] == pytest.approx((10.0, 10.0))
    split = quality.paired_difference([1.0, 0.0] * 500, [0.0, 1.0] * 500)  # a wins half, loses half
    assert split["difference"] == 0 and split["ci95"][0] < -3 and split["ci95"][1] > 3
    assert (split["a_better"], split["b_better"], split["questions"]) == (500, 500, 1000)


def test_paired_difference_pooled_over_seeds_holds_the_run_to_run_spread():
    steady = quality.paired_difference([[0.6] * 50, [0.6] * 50], [[0.5] * 50, [0.5] * 50])
    assert steady["difference"] == pytest.approx(10.0) and steady["ci95"] == pytest.approx((10.0, 10.0))
    # seed 0: a wins by 10 points on every question; seed 1: a tie. Questions alone would say exactly +5 (every
    # question's seed mean is +5); resampling the seeds as well puts both runs' outcomes inside the interval.
    spread = quality.paired_difference([[0.6] * 50, [0.5] * 50], [[0.5] * 50, [0.5] * 50])
    assert spread["difference"] == pytest.approx(5.0) and spread["ci95"] == pytest.approx((0.0, 10.0))
    assert (spread["a_better"], spread["b_better"], spread["questions"]) == (50, 0, 50)
    one_seed = quality.paired_difference([[1.0, 0.0] * 500], [[0.0, 1.0] * 500])  # one row: questions only
    assert one_seed["difference"] == 0 and one_seed["ci95"][0] < -3 and one_seed["ci95"][1] > 3


def test_saved_predictions_score_what_the_results_say_and_compare_across_suites(squad_dir):
    bench = quality.Bench("p1")
    for full_dev, key in ((False, "quality"), (True, "quality_full_dev")):
        golds = quality.golds(bench, full_dev)
        assert len(golds) == (10570 if full_dev else 1000)
        f1 = quality.scores_of(bench, "oto50zerouniform", golds, full_dev)  # what the run scored, question by question
        assert 100 * sum(f1) / len(f1) == pytest.approx(bench.result("oto50zerouniform")[key]["f1"], abs=1e-9)
    d = quality.compare(bench, "oto50zerouniform", "tp50", full_dev=True)
    assert d["questions"] == 10570 and d["a_better"] + d["b_better"] <= 10570
    lr = quality.compare(bench, "p1_lr4e-4/oto50", "oto50")  # the same run at two learning rates
    back = quality.compare(bench, "p1/oto50", "p1_lr4e-4/oto50")
    assert lr["difference"] == pytest.approx(-back["difference"]) and lr["questions"] == 1000
    with pytest.raises(SystemExit, match="answers other questions"):  # full scale scored every dev question
        quality.compare(bench, "p1_full/dense", "dense")
    with pytest.raises(SystemExit, match="predictions_full_dev.json.gz not found.*full_dev oto50floor --suite p1"):
        quality.compare(bench, "oto50floor", "oto50", full_dev=True)
    quality.full_dev(bench, ["oto50zerouniform"])  # scored already: nothing to do, and no model is needed
    with pytest.raises(SystemExit, match="oto50floor: no finished run with a saved model"):
        quality.full_dev(bench, ["oto50floor"])


def test_a_dense_an_oto_and_a_peer_run_end_to_end(tmp_path, squad_dir):
    bench = quality.Bench("p1", smoke=True, results=tmp_path)
    # oto50 (and tp50, which follows it) used the retired saliency start: refused before any work, naming the commit
    with pytest.raises(SystemExit, match=r"oto50: .*retired option\(s\) --oto_saliency_zero_init.*9a312b9"):
        quality.run(bench, ["dense", "oto50"])
    assert not (tmp_path / "dense").exists() and not (tmp_path / "oto50").exists()  # nothing ran
    quality.run(bench, ["dense", "oto30zerouniform", "tp30"])
    results = {n: bench.result(n) for n in ("dense", "oto30zerouniform", "tp30")}
    for name, result in results.items():
        golds = quality.golds(bench, False)
        f1 = quality.scores_of(bench, name, golds, False)
        assert len(golds) == 24 and 100 * sum(f1) / len(f1) == pytest.approx(result["quality"]["f1"])
        assert result["command"] == f"python benchmarks/quality.py run {name} --suite p1 --smoke"
        assert result["training"]["loss_log"] and result["latency"]["speedup"] > 0
    oto, peer = results["oto30zerouniform"], results["tp30"]
    assert "--oto_target 0.3" in oto["run_squad_command"] and oto["kept"]["encoder_flops"] < 0.8
    assert (peer["matched_to"], peer["pruned_from"]) == ("oto30zerouniform", "dense")
    assert peer["training"]["max_steps"] == peer["training"]["steps"] == oto["training"]["steps"]
    assert peer["kept"]["encoder_flops"] == pytest.approx(oto["kept"]["encoder_flops"], abs=0.01)
    quality.run(bench, ["dense"])  # finished: skipped
    assert bench.result("dense") == results["dense"]
    # `run_squad.py --dense --optim adamw_torch` with the same settings trains the same dense model
    cli = run_squad.main(bench.argv(bench.run("dense")) + ["--dense", "--optim", "adamw_torch", "--output_dir",
                                                           str(tmp_path / "cli"), "--report_latency_repeats", "0"])
    assert cli["training"]["train_loss"] == results["dense"]["training"]["train_loss"]
    assert json.loads((tmp_path / "cli" / "eval_predictions.json").read_text()) == \
        quality.read_predictions(tmp_path / "dense" / quality.PREDICTIONS)
    quality.summarize(bench)
    summary = (tmp_path / "summary.md").read_text()
    assert all(f"| {a} | {b} | " in summary for a, b in (("oto30zerouniform", "dense"), ("tp30", "dense"),
                                                                ("oto30zerouniform", "tp30")))
    assert (tmp_path / "f1_vs_flops.png").exists() and (tmp_path / "f1_vs_flops_full_dev.png").exists()
    assert quality.loss_table(bench, ["oto30zerouniform"], [oto["training"]["loss_log"][0]["step"]])[2].startswith("| oto30zerouniform | ")
    quality.onnx_quality(bench, ["oto30zerouniform"])  # its saved model exported, in onnxruntime: fp32 and int8
    onnx = bench.result("oto30zerouniform")["onnx"]
    fp32, int8 = onnx["files"]["fp32"], onnx["files"]["int8"]
    assert max(fp32["max_abs_diff"].values()) <= 1e-4 and fp32["same_answer_as_pytorch"] >= 0.95
    assert fp32["quality"]["f1"] == pytest.approx(oto["quality"]["f1"], abs=100 * (1 - fp32["same_answer_as_pytorch"]))
    assert int8["bytes"] < fp32["bytes"] / 2 and int8["vs_pytorch"]["questions"] == 24
    assert quality.read_predictions(tmp_path / "oto30zerouniform" / "predictions_onnx_int8.json.gz").keys() == golds.keys()
    with pytest.raises(SystemExit, match="dense: predictions_full_dev.json.gz not found"):
        quality.onnx_quality(bench, ["dense"], full_dev=True)
