"""SQuAD v1.1 exact match / F1 as a local `evaluate` metric.

Load it offline with ``evaluate.load(str(oto_hf.tasks.squad.squad_metric_path()))``.
Inputs and outputs are those of the Hub ``squad`` metric:

    predictions = [{"id": "56be4db0acb8001400a502ec", "prediction_text": "Denver Broncos"}]
    references = [{"id": "56be4db0acb8001400a502ec",
                   "answers": {"text": ["Denver Broncos"], "answer_start": [177]}}]
    -> {"exact_match": 100.0, "f1": 100.0}

The numbers come from ``oto_hf.tasks.squad`` (``squad_v1_metrics``, i.e. the official
normalisation, EM and F1), so there is a single copy of the metric code.

``evaluate`` copies this script into its modules cache (``~/.cache/huggingface/modules``)
and imports it from there, so ``oto_hf`` is not necessarily importable from the
copy's location.  If plain ``import oto_hf.tasks.squad`` fails, the repository that holds
the *original* script (recorded by evaluate in a ``.json`` file next to the copy)
is put on ``sys.path``.  The imports below are done through ``importlib`` on
purpose: evaluate scans ``import``/``from`` lines of a script and demands that the
modules named there are installed packages, which ``oto_hf`` may not be.
"""

import importlib
import json
import sys
from pathlib import Path

import datasets
import evaluate


def _import_oto_squad():
    """Import ``oto_hf.tasks.squad``, locating the repository if it is not on sys.path."""
    try:
        return importlib.import_module("oto_hf.tasks.squad")
    except ModuleNotFoundError as err:
        if err.name not in ("oto_hf", "oto_hf.tasks", "oto_hf.tasks.squad"):
            raise  # oto_hf was found but something it imports is missing
        first_error = err
    here = Path(__file__).resolve()
    scripts = [here]
    meta = here.with_suffix(".json")  # written by evaluate next to its copy
    try:
        scripts.insert(0, Path(json.loads(meta.read_text(encoding="utf-8"))["original file path"]).resolve())
    except (OSError, ValueError, KeyError):
        pass
    for script in scripts:
        # <repo>/oto_hf/metrics/squad_v1/squad_v1.py -> <repo>
        if len(script.parents) > 3 and (script.parents[3] / "oto_hf" / "tasks" / "squad.py").is_file():
            sys.path.insert(0, str(script.parents[3]))
            return importlib.import_module("oto_hf.tasks.squad")
    raise ImportError(
        "the squad_v1 metric needs the oto_hf package: install it or put the repository on PYTHONPATH"
    ) from first_error


_squad = _import_oto_squad()

_DESCRIPTION = """Official SQuAD v1.1 metric (exact match and token F1 in percent, maximum over the
gold answers of each question), computed by oto_hf.tasks.squad."""

_CITATION = """@inproceedings{rajpurkar-etal-2016-squad,
    title = "{SQ}u{AD}: 100,000+ Questions for Machine Comprehension of Text",
    author = "Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy",
    booktitle = "Proceedings of EMNLP 2016",
    year = "2016",
    pages = "2383--2392",
}"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of {"id": str, "prediction_text": str}.
    references: list of {"id": str, "answers": {"text": [str, ...], "answer_start": [int, ...]}}.
Returns:
    {"exact_match": float, "f1": float}, both in percent.
    As in the official script (and the Hub "squad" metric), a reference without a
    prediction scores 0; a prediction whose id is not among the references is an error.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SquadV1(evaluate.Metric):
    """SQuAD v1.1 exact match / F1, delegating to ``oto_hf.tasks.squad.squad_v1_metrics``."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")},
                    "references": {
                        "id": datasets.Value("string"),
                        "answers": datasets.Sequence(
                            {"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}
                        ),
                    },
                }
            ),
            codebase_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(self, predictions, references):
        preds = {p["id"]: p["prediction_text"] for p in predictions}
        golds = {r["id"]: list(r["answers"]["text"]) for r in references}
        scores = _squad.squad_v1_metrics(preds, golds, allow_unanswered=True)
        return {"exact_match": scores["exact_match"], "f1": scores["f1"]}
