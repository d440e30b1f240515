"""SQuAD v1.1 for extractive question answering, fully offline.

This module gathers everything the pruning experiments need around SQuAD v1.1:

* **Loading** (:func:`load_squad`): either the Hub ``squad`` dataset (only when a
  ``dataset_name`` is given, which needs the network) or local files in the
  *official* nested SQuAD JSON format (``.json`` or ``.json.gz``), flattened into
  exactly the Hub ``squad`` schema (``id, title, context, question,
  answers={"text": [...], "answer_start": [...]}``).  Local files are parsed and
  validated *before* anything is returned, so that a broken file fails in a second
  with a message naming the file and the problem, not an hour into training.
* **Finding the local copy** (:func:`find_local_squad_dir`,
  :func:`local_squad_files`).
* **Pre-processing** for ``Dataset.map(batched=True)``
  (:func:`prepare_train_features`, :func:`prepare_validation_features`,
  :func:`tokenize_squad`): long contexts are split into overlapping windows
  ("features"), as in Hugging Face's ``examples/pytorch/question-answering/run_qa.py``.
* **Post-processing** (:func:`postprocess_predictions`): from start/end logits of
  all windows of a question back to an answer string, vectorised with numpy.
* **The official SQuAD v1.1 metric** (:func:`normalize_answer`,
  :func:`exact_match_score`, :func:`f1_score`, :func:`squad_v1_metrics`; per question:
  :func:`squad_v1_scores`), and an
  ``evaluate`` wrapper around the same functions in ``oto_hf/metrics/squad_v1``
  (:func:`squad_metric_path`), so there is one copy of the metric code.
* **A tiny QA "pipeline"** (:func:`answer_question`), replacing the
  ``pipeline("question-answering")`` that recent ``transformers`` no longer ship,
  built on the same pre-/post-processing code path.

Heavy libraries (``datasets``, ``torch``) are imported inside the functions that
need them, so ``import oto_hf.tasks.squad`` stays cheap (only numpy and the standard
library are imported at module level).
"""

from __future__ import annotations

import bisect
import dataclasses
import collections
import gzip
import hashlib
import json
import os
import re
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from .common import REPO_ROOT, find_shared_data_dir, model_input_names, sample_examples

if TYPE_CHECKING:  # only for type checkers; importing datasets costs ~1 s
    import datasets

__all__ = [
    "SquadDataError",
    "SquadFileNotFoundError",
    "SQUAD_DEV_FILE",
    "SQUAD_TRAIN_GENUINE_FILE",
    "SQUAD_TRAIN_RECONSTRUCTED_FILE",
    "SQUAD_DIR_ENV",
    "OFFSET_SENTINEL",
    "squad_features",
    "find_local_squad_dir",
    "local_squad_files",
    "load_squad",
    "check_window_params",
    "prepare_train_features",
    "prepare_validation_features",
    "tokenize_squad",
    "postprocess_predictions",
    "normalize_answer",
    "exact_match_score",
    "f1_score",
    "metric_max_over_ground_truths",
    "squad_v1_scores",
    "squad_v1_metrics",
    "squad_metric_path",
    "answer_question",
    "predict_logits",
    "evaluate_squad",
    "SquadDataArguments",
    "SquadData",
    "SquadTask",
]

# --------------------------------------------------------------------------------------
# Errors, constants, locations
# --------------------------------------------------------------------------------------


class SquadDataError(ValueError):
    """A SQuAD file (or dataset) is missing, unreadable or not in SQuAD v1.1 format."""


class SquadFileNotFoundError(SquadDataError, FileNotFoundError):
    """A SQuAD file or folder does not exist.

    It is both a :class:`SquadDataError` (catch all data problems at once) and a
    :class:`FileNotFoundError` (what callers usually expect for a missing path).
    """


#: File names of the local SQuAD v1.1 copy (see ``shared/data/squad-v1.1/SOURCE.md``).
SQUAD_DEV_FILE = "dev-v1.1.json.gz"  # genuine official dev set, 10,570 questions
SQUAD_TRAIN_GENUINE_FILE = "train-v1.1.genuine-first11.json.gz"  # genuine first 11 articles, 3,807 q.
#: Full train text (83,380 questions after a held-out part); ids of most articles are
#: synthetic and answer_start is the first occurrence of the answer text.
SQUAD_TRAIN_RECONSTRUCTED_FILE = "train-v1.1.reconstructed.json.gz"

#: Environment variable that overrides where the local SQuAD files are looked for.
SQUAD_DIR_ENV = "OTO_SQUAD_DIR"

#: Offset stored for tokens that are not part of the context in validation features.
#: Hugging Face's utils_qa uses ``None``; a fixed pair keeps the column a plain
#: ``list<list<int64>>`` in Arrow, so a whole split converts to one numpy array.
OFFSET_SENTINEL = (-1, -1)

# Bump when the flattening code changes: it is part of the datasets cache key.
_LOCAL_CACHE_VERSION = "oto_hf.squad/1"

_TRAIN_FILE_CHOICES = {
    "reconstructed": SQUAD_TRAIN_RECONSTRUCTED_FILE,
    "genuine-first11": SQUAD_TRAIN_GENUINE_FILE,
}


def find_local_squad_dir() -> Path | None:
    """Return the folder holding the local SQuAD v1.1 files, or ``None``.

    Order: the environment variable ``OTO_SQUAD_DIR`` if set; otherwise the first
    existing folder among ``<repo root>/../shared/data/squad-v1.1``,
    ``./shared/data/squad-v1.1`` and ``../shared/data/squad-v1.1`` (relative to the
    current directory).  A set-but-wrong ``OTO_SQUAD_DIR`` raises instead of
    silently falling back, because it is a configuration mistake worth seeing.
    """
    return find_shared_data_dir("squad-v1.1", SQUAD_DIR_ENV, SquadFileNotFoundError)


def local_squad_files(train: str = "reconstructed", squad_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Paths of the local files, ready for ``load_squad(**local_squad_files())``.

    Args:
        train: which train file: ``"reconstructed"`` (full train text, synthetic ids
            for most articles) or ``"genuine-first11"`` (genuine, 3,807 questions).
        squad_dir: folder to use instead of :func:`find_local_squad_dir`.

    Returns:
        ``{"train_file": Path, "validation_file": Path}`` (the genuine dev file).
    """
    if train not in _TRAIN_FILE_CHOICES:
        raise ValueError(f"train must be one of {sorted(_TRAIN_FILE_CHOICES)}, got {train!r}")
    folder = Path(squad_dir) if squad_dir is not None else find_local_squad_dir()
    if folder is None:
        raise SquadFileNotFoundError(
            "no local SQuAD v1.1 folder found: set OTO_SQUAD_DIR or put the files in "
            "<repo>/../shared/data/squad-v1.1"
        )
    return {"train_file": folder / _TRAIN_FILE_CHOICES[train], "validation_file": folder / SQUAD_DEV_FILE}


def squad_metric_path() -> Path:
    """Folder of the local ``evaluate`` metric script: ``evaluate.load(str(squad_metric_path()))``."""
    return Path(__file__).resolve().parents[1] / "metrics" / "squad_v1"


# --------------------------------------------------------------------------------------
# Loading and validating official-format files
# --------------------------------------------------------------------------------------


def squad_features() -> "datasets.Features":
    """The ``datasets.Features`` of the Hub ``squad`` dataset (same order and types)."""
    from datasets import Features, Sequence, Value

    return Features(
        {
            "id": Value("string"),
            "title": Value("string"),
            "context": Value("string"),
            "question": Value("string"),
            # Sequence(dict) is how the Hub script declares it; datasets turns it
            # into a dict of lists, exactly what the Hub dataset exposes.
            "answers": Sequence({"text": Value("string"), "answer_start": Value("int32")}),
        }
    )


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise SquadFileNotFoundError(f"SQuAD file not found: {path}")
    if not path.is_file():
        raise SquadDataError(f"SQuAD path is not a file: {path}")
    return path.read_bytes()


def _parse_squad_json(path: Path, raw: bytes) -> Any:
    """Decompress (when gzip) and parse JSON, turning every failure into a SquadDataError."""
    # Decide on the content, not only the name: gzip always starts with 1f 8b.
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as err:
            raise SquadDataError(f"{path}: corrupt or truncated gzip data ({err})") from err
    elif path.name.endswith(".gz"):
        raise SquadDataError(f"{path}: name ends in .gz but the file is not gzip-compressed (first bytes {raw[:8]!r})")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise SquadDataError(f"{path}: not UTF-8 text, so not a SQuAD JSON file ({err})") from err
    except json.JSONDecodeError as err:
        raise SquadDataError(f"{path}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from err


def _flatten_squad(data: Any, path: Path, split: str) -> dict[str, list]:
    """Validate official SQuAD v1.1 JSON and flatten it into Hub-schema columns.

    Structural problems (no ``data`` list, an article without ``paragraphs``...) are
    raised at once; per-question problems are counted over the whole file and raised
    together with a few examples, so one run shows the full extent of the damage.
    """
    where = f"{path} ({split} split)"
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        got = f"a JSON object with keys {sorted(data)[:8]}" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise SquadDataError(
            f"{where}: not SQuAD format: expected a JSON object with a 'data' list of articles, got {got}"
        )

    cols: dict[str, list] = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    problems: dict[str, list[str]] = collections.defaultdict(list)  # kind -> examples
    n_answers = n_bad_start = 0
    seen_ids: set[str] = set()

    for a_idx, article in enumerate(data["data"]):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise SquadDataError(f"{where}: not SQuAD format: data[{a_idx}] has no 'paragraphs' list")
        title = article.get("title", "")
        title = title if isinstance(title, str) else str(title)
        for p_idx, para in enumerate(article["paragraphs"]):
            if not isinstance(para, dict) or not isinstance(para.get("context"), str) or not isinstance(para.get("qas"), list):
                raise SquadDataError(
                    f"{where}: not SQuAD format: data[{a_idx}].paragraphs[{p_idx}] needs a 'context' string and a 'qas' list"
                )
            context = para["context"]
            for q_idx, qa in enumerate(para["qas"]):
                loc = f"data[{a_idx}].paragraphs[{p_idx}].qas[{q_idx}]"
                if not isinstance(qa, dict) or not isinstance(qa.get("question"), str) or "id" not in qa:
                    raise SquadDataError(f"{where}: not SQuAD format: {loc} needs an 'id' and a 'question' string")
                qid = str(qa["id"])
                if qid in seen_ids:
                    problems["duplicate question id"].append(qid)
                seen_ids.add(qid)
                if qa.get("is_impossible"):
                    problems["unanswerable question (SQuAD v2.0 'is_impossible'; only v1.1 is supported)"].append(qid)
                    continue
                answers = qa.get("answers")
                if not isinstance(answers, list):
                    problems["question without an 'answers' list"].append(qid)
                    continue
                if not answers:
                    # Training needs a target and the v1.1 metric takes a max over gold
                    # answers, so an empty list is an error in either split.
                    problems["question with an empty 'answers' list"].append(qid)
                    continue
                texts, starts = [], []
                for ans in answers:
                    if (
                        not isinstance(ans, dict)
                        or not isinstance(ans.get("text"), str)
                        or not isinstance(ans.get("answer_start"), int)
                        or isinstance(ans.get("answer_start"), bool)
                    ):
                        problems["answer without a 'text' string and an integer 'answer_start'"].append(qid)
                        break
                    text, start = ans["text"], ans["answer_start"]
                    n_answers += 1
                    if start < 0 or context[start : start + len(text)] != text:
                        n_bad_start += 1
                        problems["answer_start that does not point at the answer text"].append(
                            f"{qid} (answer_start={start}, text={text[:40]!r}, "
                            f"context there={context[max(start, 0) : max(start, 0) + len(text)][:40]!r})"
                        )
                    texts.append(text)
                    starts.append(start)
                else:
                    cols["id"].append(qid)
                    cols["title"].append(title)
                    cols["context"].append(context)
                    cols["question"].append(qa["question"])
                    cols["answers"].append({"text": texts, "answer_start": starts})

    if problems:
        lines = []
        for kind, examples in problems.items():
            extra = ""
            if kind.startswith("answer_start"):
                extra = f" ({n_bad_start} of {n_answers} answers)"
            lines.append(f"  - {len(examples)} x {kind}{extra}; first: " + "; ".join(examples[:3]))
        raise SquadDataError(f"{where}: invalid SQuAD v1.1 data:\n" + "\n".join(lines))
    if not cols["id"]:
        raise SquadDataError(f"{where}: contains no questions")
    return cols


def _generate_rows(path: str, split: str, sha256: str, version: str):
    """Generator for ``Dataset.from_generator``.

    ``sha256`` and ``version`` are unused in the body: they are in ``gen_kwargs`` so
    that the datasets cache key changes whenever the file *content* (not just its
    name) or this flattening code changes; otherwise a file edited in place would be
    served stale from the cache.
    """
    p = Path(path)
    cols = _flatten_squad(_parse_squad_json(p, _read_bytes(p)), p, split)
    keys = list(cols)
    for values in zip(*(cols[k] for k in keys)):
        yield dict(zip(keys, values))


def _load_local_split(path: str | os.PathLike, split: str, cache_dir: str | None) -> "datasets.Dataset":
    from datasets import Dataset

    path = Path(path).expanduser().resolve()
    raw = _read_bytes(path)
    # Validate first (fast: < 1 s for the 83k-question file) so nothing long starts
    # on bad data; the generator re-parses only on a cache miss.
    _flatten_squad(_parse_squad_json(path, raw), path, split)
    return Dataset.from_generator(
        _generate_rows,
        features=squad_features(),
        cache_dir=cache_dir,
        split=split,
        gen_kwargs={
            "path": str(path),
            "split": split,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "version": _LOCAL_CACHE_VERSION,
        },
    )


def load_squad(
    train_file: str | os.PathLike | None = None,
    validation_file: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> "datasets.DatasetDict":
    """Load SQuAD v1.1 as a ``DatasetDict`` with splits ``"train"`` and/or ``"validation"``.

    Args:
        train_file: local official-format SQuAD file (``.json`` or ``.json.gz``).
        validation_file: idem, for evaluation.
        dataset_name: a Hub dataset such as ``"squad"`` (needs the network; only used
            when given, and then the local file arguments must be left out).
        cache_dir: datasets cache folder (default: the Hugging Face cache).

    Local files are flattened into the Hub ``squad`` schema (one row per question,
    ``answers`` as a dict of lists) and validated before returning.  Every question
    must have at least one answer whose ``answer_start`` points at its text.

    Raises:
        SquadFileNotFoundError: a file does not exist.
        SquadDataError: a file is not gzip/JSON/SQuAD v1.1 (the message names the
            file, the problem, counts and the first offending question ids).
    """
    import datasets

    cache_dir = str(cache_dir) if cache_dir is not None else None
    if dataset_name is not None:
        if train_file is not None or validation_file is not None:
            raise ValueError("give either dataset_name (Hub) or train_file/validation_file (local), not both")
        try:
            dsd = datasets.load_dataset(dataset_name, cache_dir=cache_dir)
        except Exception as err:  # offline machines end up here: point at the local copy
            err.add_note(
                f"oto_hf.tasks.squad: loading {dataset_name!r} from the Hub failed; without network use local "
                "files, e.g. load_squad(**local_squad_files())"
            )
            raise
        missing = [c for c in ("id", "context", "question", "answers") for s in dsd.values() if c not in s.column_names]
        if missing:
            raise SquadDataError(f"Hub dataset {dataset_name!r} lacks SQuAD columns {sorted(set(missing))}")
        return dsd

    if train_file is None and validation_file is None:
        raise ValueError(
            "load_squad needs train_file and/or validation_file (or dataset_name); "
            "for the local copy use load_squad(**local_squad_files())"
        )
    splits = {}
    if train_file is not None:
        splits["train"] = _load_local_split(train_file, "train", cache_dir)
    if validation_file is not None:
        splits["validation"] = _load_local_split(validation_file, "validation", cache_dir)
    return datasets.DatasetDict(splits)


# --------------------------------------------------------------------------------------
# Pre-processing: questions + contexts -> fixed-length windows ("features")
# --------------------------------------------------------------------------------------


def check_window_params(tokenizer, max_seq_length: int, doc_stride: int, max_query_length: int) -> None:
    """Raise ``ValueError`` for window settings the tokenizer cannot honour.

    ``doc_stride`` follows the Hugging Face convention: it is the number of tokens
    *shared* by two consecutive windows (not the step between them).  The fast
    tokenizer requires it to be smaller than the room left for the context, else it
    *panics* in Rust (a ``BaseException`` that ``except Exception`` does not catch),
    so check it here with a readable message.
    """
    n_special = tokenizer.num_special_tokens_to_add(pair=True)
    room = max_seq_length - n_special - max_query_length
    if max_query_length < 1 or doc_stride < 0:
        raise ValueError(f"need max_query_length >= 1 and doc_stride >= 0, got {max_query_length}, {doc_stride}")
    if doc_stride >= room:
        raise ValueError(
            f"doc_stride={doc_stride} must be smaller than the context room of a window: max_seq_length "
            f"{max_seq_length} - {n_special} special tokens - max_query_length {max_query_length} = {room}"
        )
    model_max = getattr(tokenizer, "model_max_length", None)
    if model_max is not None and model_max < 1_000_000 and max_seq_length > model_max:
        raise ValueError(f"max_seq_length={max_seq_length} exceeds the tokenizer's model_max_length={model_max}")


def _clean_questions(tokenizer, questions: Sequence[str], max_query_length: int) -> list[str]:
    """Left-strip questions and cut them to at most ``max_query_length`` tokens.

    Some SQuAD questions start with lots of white space, which wastes window room
    (and can make the context part vanish).  Cutting the *string* at the end
    offset of the last allowed token keeps the pair encoding in one tokenizer call.
    """
    questions = [q.lstrip() for q in questions]
    # A WordPiece token covers at least one character, so only questions longer
    # than max_query_length characters can have too many tokens.
    long_idx = [i for i, q in enumerate(questions) if len(q) > max_query_length]
    if long_idx:
        enc = tokenizer(
            [questions[i] for i in long_idx], add_special_tokens=False, return_offsets_mapping=True
        )
        for i, offsets in zip(long_idx, enc["offset_mapping"]):
            if len(offsets) > max_query_length:
                questions[i] = questions[i][: offsets[max_query_length - 1][1]]
    return questions


def _encode_windows(examples: Mapping[str, list], tokenizer, max_seq_length, doc_stride, max_query_length):
    """Tokenise question/context pairs into overlapping windows (shared by train and eval)."""
    check_window_params(tokenizer, max_seq_length, doc_stride, max_query_length)
    questions = _clean_questions(tokenizer, examples["question"], max_query_length)
    contexts = examples["context"]
    # Only the context may be truncated/split; with left padding (some models) the
    # context comes first so that padding never sits between question and context.
    pad_on_right = tokenizer.padding_side == "right"
    enc = tokenizer(
        questions if pad_on_right else contexts,
        contexts if pad_on_right else questions,
        truncation="only_second" if pad_on_right else "only_first",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )
    context_seq_id = 1 if pad_on_right else 0
    return enc, context_seq_id


def _context_token_range(sequence_ids: list, context_seq_id: int) -> tuple[int, int]:
    """First and last token index of the context in a window (inclusive)."""
    first = sequence_ids.index(context_seq_id)
    last = len(sequence_ids) - 1 - sequence_ids[::-1].index(context_seq_id)
    return first, last


def prepare_train_features(
    examples: Mapping[str, list],
    tokenizer,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
) -> dict[str, list]:
    """Training features for ``Dataset.map(batched=True, remove_columns=...)``.

    One question may give several windows; each gets ``start_positions`` and
    ``end_positions`` of the (first) gold answer, or the CLS index for both when the
    answer is not entirely inside the window (the "no answer here" target BERT was
    fine-tuned with).  Returns ``input_ids``, ``token_type_ids`` (when the tokenizer
    makes them), ``attention_mask``, ``start_positions``, ``end_positions``.
    """
    enc, ctx_id = _encode_windows(examples, tokenizer, max_seq_length, doc_stride, max_query_length)
    sample_map = enc.pop("overflow_to_sample_mapping")
    offset_mapping = enc.pop("offset_mapping")
    starts, ends = [], []
    for i, offsets in enumerate(offset_mapping):
        input_ids = enc["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        ex = sample_map[i]
        context = examples["context"][ex]
        answers = examples["answers"][ex]
        if not answers["answer_start"]:
            starts.append(cls_index)
            ends.append(cls_index)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        # Gold texts sometimes carry surrounding spaces; aligning them to tokens
        # would otherwise drag a neighbouring word into the span.
        while start_char < end_char and context[start_char].isspace():
            start_char += 1
        while end_char > start_char and context[end_char - 1].isspace():
            end_char -= 1

        first, last = _context_token_range(enc.sequence_ids(i), ctx_id)
        if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
            starts.append(cls_index)
            ends.append(cls_index)
            continue
        # Context offsets increase monotonically: binary search for the token that
        # contains start_char (last token starting at or before it) and the token
        # that contains end_char (first token ending at or after it).
        tok_starts = [o[0] for o in offsets[first : last + 1]]
        tok_ends = [o[1] for o in offsets[first : last + 1]]
        starts.append(first + bisect.bisect_right(tok_starts, start_char) - 1)
        ends.append(first + bisect.bisect_left(tok_ends, end_char))
    enc["start_positions"] = starts
    enc["end_positions"] = ends
    return dict(enc)


def prepare_validation_features(
    examples: Mapping[str, list],
    tokenizer,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
) -> dict[str, list]:
    """Evaluation features for ``Dataset.map(batched=True, remove_columns=...)``.

    Besides the model inputs, each window keeps ``example_id`` (the question id it
    came from) and ``offset_mapping`` (character span of every token in the
    context) with :data:`OFFSET_SENTINEL` ``(-1, -1)`` for tokens outside the
    context (question, special tokens, padding), so that post-processing can both
    reject non-context spans and slice the answer text from the original context.
    Drop ``example_id`` and ``offset_mapping`` before feeding a model.
    """
    enc, ctx_id = _encode_windows(examples, tokenizer, max_seq_length, doc_stride, max_query_length)
    sample_map = enc.pop("overflow_to_sample_mapping")
    sentinel = OFFSET_SENTINEL
    example_ids, offset_mapping = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        seq_ids = enc.sequence_ids(i)
        example_ids.append(examples["id"][sample_map[i]])
        offset_mapping.append([o if s == ctx_id else sentinel for o, s in zip(offsets, seq_ids)])
    enc["example_id"] = example_ids
    enc["offset_mapping"] = offset_mapping
    return dict(enc)


def tokenize_squad(
    data,
    tokenizer,
    split: str,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    for_training: bool | None = None,
    num_proc: int | None = None,
    batch_size: int = 1000,
    load_from_cache_file: bool = True,
) -> "datasets.Dataset":
    """Run the pre-processing over one split with ``Dataset.map``.

    Args:
        data: a ``DatasetDict`` (``data[split]`` is used) or a single ``Dataset``.
        split: the split name; also picks the processing unless ``for_training``
            says otherwise: ``"train"`` gives training features, anything else
            evaluation features.
        num_proc, batch_size, load_from_cache_file: passed to ``Dataset.map``.

    The raw columns are removed (a question becomes one or more windows, so the
    row count changes).  Results are cached by ``datasets`` when the input lives
    on disk, which is the case for :func:`load_squad` output.
    """
    ds = data[split] if isinstance(data, Mapping) else data  # DatasetDict is a dict subclass
    if for_training is None:
        for_training = split == "train"
    check_window_params(tokenizer, max_seq_length, doc_stride, max_query_length)
    fn = prepare_train_features if for_training else prepare_validation_features
    return ds.map(
        fn,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=ds.column_names,
        load_from_cache_file=load_from_cache_file,
        fn_kwargs={
            "tokenizer": tokenizer,
            "max_seq_length": max_seq_length,
            "doc_stride": doc_stride,
            "max_query_length": max_query_length,
        },
        desc=f"Tokenising SQuAD {split} ({'train' if for_training else 'eval'} features)",
    )


# --------------------------------------------------------------------------------------
# Post-processing: logits of all windows -> one answer string per question
# --------------------------------------------------------------------------------------


def _column(data, name: str) -> list:
    """A column as a python list, from a Dataset, a dict of lists or a list of dicts."""
    if hasattr(data, "column_names"):  # datasets.Dataset: via Arrow, the fast way
        return data.select_columns([name]).with_format("arrow")[:].column(0).to_pylist()
    if isinstance(data, Mapping):
        return list(data[name])
    return [row[name] for row in data]


def _offsets_array(features) -> np.ndarray:
    """``offset_mapping`` of all features as an int64 array (n_features, seq_len, 2).

    Non-context tokens become ``(-1, -1)``; ``None`` entries (Hugging Face's
    convention) are accepted too.  For a Dataset the Arrow column is reshaped
    directly: going through datasets' numpy/python formatting takes ~25 s for the
    10.8k dev windows, the Arrow route ~0.1 s.
    """
    if hasattr(features, "column_names"):
        import pyarrow.compute as pc

        table = features.select_columns(["offset_mapping"]).with_format("arrow")[:]
        col = table.column(0).combine_chunks()
        if len(col) and col.null_count == 0:
            inner = col.flatten()
            row_len = pc.min_max(col.value_lengths())
            pair_len = pc.min_max(inner.value_lengths())
            if (
                inner.null_count == 0
                and row_len["min"].as_py() == row_len["max"].as_py()
                and pair_len["min"].as_py() == pair_len["max"].as_py() == 2
            ):
                values = inner.flatten().to_numpy(zero_copy_only=False)
                return values.astype(np.int64, copy=False).reshape(len(col), row_len["min"].as_py(), 2)
        rows = col.to_pylist()  # ragged or with None: slow but general path below
    else:
        rows = _column(features, "offset_mapping")
    out = np.full((len(rows), max((len(r) for r in rows), default=0), 2), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        for j, o in enumerate(row):
            if o is not None:
                out[i, j] = o[:2]
    return out


def _best_spans(
    contexts: Sequence[str],
    example_ids: Sequence[str],
    feature_example_ids: Sequence[str],
    offsets: np.ndarray,
    start_logits,
    end_logits,
    n_best_size: int,
    max_answer_length: int,
    chunk: int = 2048,
) -> list[dict]:
    """Best valid span per example; the vectorised core of post-processing.

    For every feature: mask non-context tokens, take the ``n_best_size`` best start
    and end tokens, score all n_best x n_best pairs at once with broadcasting,
    reject end < start and spans longer than ``max_answer_length`` tokens, keep
    the best pair.  Then each example takes its best feature.
    """
    start_logits = np.asarray(start_logits, dtype=np.float64)
    end_logits = np.asarray(end_logits, dtype=np.float64)
    n_feat, seq_len = offsets.shape[:2]
    if start_logits.shape != end_logits.shape or start_logits.ndim != 2 or start_logits.shape[0] != n_feat:
        raise ValueError(
            f"logits must both have shape (n_features={n_feat}, seq_len), got {start_logits.shape} and {end_logits.shape}"
        )
    if start_logits.shape[1] < seq_len:
        raise ValueError(f"logits have {start_logits.shape[1]} positions but the features {seq_len}")
    start_logits, end_logits = start_logits[:, :seq_len], end_logits[:, :seq_len]  # drop eval-loop padding
    k = max(1, min(n_best_size, seq_len))

    feat_score = np.full(n_feat, -np.inf)
    feat_start = np.zeros(n_feat, dtype=np.int64)
    feat_end = np.zeros(n_feat, dtype=np.int64)
    for lo in range(0, n_feat, chunk):
        hi = min(lo + chunk, n_feat)
        in_ctx = offsets[lo:hi, :, 0] >= 0
        s = np.where(in_ctx, start_logits[lo:hi], -np.inf)
        e = np.where(in_ctx, end_logits[lo:hi], -np.inf)
        top_s = np.argsort(-s, axis=1, kind="stable")[:, :k]  # (f, k) token indices, best first
        top_e = np.argsort(-e, axis=1, kind="stable")[:, :k]
        ss = np.take_along_axis(s, top_s, axis=1)
        ee = np.take_along_axis(e, top_e, axis=1)
        length = top_e[:, None, :] - top_s[:, :, None]  # (f, k, k): end - start
        ok = (length >= 0) & (length < max_answer_length)
        ok &= np.isfinite(ss)[:, :, None] & np.isfinite(ee)[:, None, :]
        pair = np.where(ok, ss[:, :, None] + ee[:, None, :], -np.inf)
        flat = pair.reshape(hi - lo, -1).argmax(axis=1)
        rows = np.arange(hi - lo)
        si, ei = np.divmod(flat, k)
        feat_score[lo:hi] = pair.reshape(hi - lo, -1)[rows, flat]
        feat_start[lo:hi] = top_s[rows, si]
        feat_end[lo:hi] = top_e[rows, ei]

    by_example: dict[str, list[int]] = collections.defaultdict(list)
    for f, ex_id in enumerate(feature_example_ids):
        by_example[ex_id].append(f)

    results = []
    for ex_id, context in zip(example_ids, contexts):
        feats = by_example.get(ex_id, [])
        best = max(feats, key=lambda f: feat_score[f], default=None)
        if best is None or not np.isfinite(feat_score[best]):
            results.append({"id": ex_id, "text": "", "score": -np.inf, "start": 0, "end": 0, "feature": best})
            continue
        c0 = int(offsets[best, feat_start[best], 0])
        c1 = int(offsets[best, feat_end[best], 1])
        results.append(
            {
                "id": ex_id,
                "text": context[c0:c1],
                "score": float(feat_score[best]),
                "start": c0,
                "end": c1,
                "feature": best,
                "start_token": int(feat_start[best]),
                "end_token": int(feat_end[best]),
            }
        )
    return results


def postprocess_predictions(
    examples,
    features,
    start_logits,
    end_logits,
    n_best_size: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """Turn window-level start/end logits into one answer string per question.

    Args:
        examples: the raw questions (Dataset, dict of lists or list of dicts) with
            ``id`` and ``context``.
        features: their evaluation features from :func:`prepare_validation_features`
            (with ``example_id`` and ``offset_mapping``), in the same order as the
            logits.
        start_logits, end_logits: arrays of shape (n_features, seq_len).
        n_best_size: how many best start and end tokens per window are combined.
        max_answer_length: longest answer, in tokens.

    Returns:
        ``{question id: answer text}`` in the order of ``examples``; the text is
        sliced from the original context with the token offsets, and is ``""`` when
        no valid span exists.  Unlike utils_qa, non-context tokens are masked
        *before* the n-best selection, so question tokens cannot crowd out valid
        context spans.
    """
    spans = _best_spans(
        _column(examples, "context"),
        _column(examples, "id"),
        _column(features, "example_id"),
        _offsets_array(features),
        start_logits,
        end_logits,
        n_best_size,
        max_answer_length,
    )
    return {s["id"]: s["text"] for s in spans}


# --------------------------------------------------------------------------------------
# The official SQuAD v1.1 metric (evaluate-v1.1.py)
# --------------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Official v1.1 normalisation: lower case, drop punctuation, drop articles, fold spaces.

    The order matters and is the official one: punctuation is removed *before*
    articles, so "the-end" becomes "theend", not "end".
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    """True when both strings are equal after :func:`normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-level F1 of the normalised strings (bag of tokens, as officially)."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def metric_max_over_ground_truths(metric_fn, prediction: str, ground_truths: Iterable[str]) -> float:
    """Best score of ``prediction`` against any of the gold answers."""
    return max(float(metric_fn(prediction, gt)) for gt in ground_truths)


def _references_to_dict(references) -> dict[str, list[str]]:
    """``{id: [gold texts]}`` from a Dataset, a dict, or Hub-metric-style list of dicts."""
    if hasattr(references, "column_names"):  # datasets.Dataset with id + answers
        table = references.select_columns(["id", "answers"]).with_format("arrow")[:]
        texts = table.column("answers").combine_chunks().field("text").to_pylist()
        return dict(zip(table.column("id").to_pylist(), texts))
    if isinstance(references, Mapping):
        return {
            str(qid): list(v["text"]) if isinstance(v, Mapping) else ([v] if isinstance(v, str) else list(v))
            for qid, v in references.items()
        }
    return {str(r["id"]): list(r["answers"]["text"]) for r in references}


def _preview(ids: Sequence[str], n: int = 5) -> str:
    return ", ".join(map(repr, ids[:n])) + (f" ... ({len(ids)} in all)" if len(ids) > n else "")


def squad_v1_scores(predictions, references, allow_unanswered: bool = False) -> dict[str, dict[str, float]]:
    """Per-question exact match (0 or 1) and F1 (in [0, 1]), as the official SQuAD v1.1 script scores each one.

    Args and errors as `squad_v1_metrics`. A reference question without a prediction (only with
    ``allow_unanswered``) scores 0 for both. Used for paired comparisons of two models on the same questions.

    Returns:
        ``{question id: {"exact_match": 0/1, "f1": f1}}`` for every reference question.
    """
    if not isinstance(predictions, Mapping):
        predictions = {str(p["id"]): p["prediction_text"] for p in predictions}
    golds = _references_to_dict(references)
    if not golds:
        raise ValueError("no reference questions to score")
    unknown = [qid for qid in predictions if qid not in golds]
    if unknown:
        raise ValueError(f"prediction ids missing from the references: {_preview(unknown)}")
    no_gold = [qid for qid, g in golds.items() if not g]
    if no_gold:
        raise ValueError(f"references without any gold answer: {_preview(no_gold)}")
    unanswered = [qid for qid in golds if qid not in predictions]
    if unanswered and not allow_unanswered:
        raise ValueError(
            f"{len(unanswered)} of {len(golds)} reference questions have no prediction: {_preview(unanswered)} "
            "(pass allow_unanswered=True to score them 0 as the official script does)"
        )
    scores = {}
    for qid, gold in golds.items():
        if qid not in predictions:  # official behaviour: counts in the total with score 0
            scores[qid] = {"exact_match": 0.0, "f1": 0.0}
            continue
        pred = predictions[qid]
        scores[qid] = {"exact_match": metric_max_over_ground_truths(exact_match_score, pred, gold),
                       "f1": metric_max_over_ground_truths(f1_score, pred, gold)}
    return scores


def squad_v1_metrics(predictions, references, allow_unanswered: bool = False) -> dict[str, float]:
    """Exact match and F1 in percent, as the official SQuAD v1.1 script computes them.

    Args:
        predictions: ``{question id: answer text}`` (or a list of
            ``{"id", "prediction_text"}`` dicts, as the Hub metric takes).
        references: the gold answers: a Dataset with ``id`` and ``answers``
            columns, ``{id: [texts]}``, or a list of ``{"id", "answers": {"text": [...]}}``.
        allow_unanswered: the official script scores a reference question without a
            prediction as 0 and still counts it.  By default that is an error here,
            since it almost always means predictions and references were built from
            different samples.

    Returns:
        ``{"exact_match": %, "f1": %, "n": number of questions scored}``.

    Raises:
        ValueError: a prediction id is not among the references, a reference has no
            gold answer, or (unless ``allow_unanswered``) a reference has no prediction.
    """
    scores = squad_v1_scores(predictions, references, allow_unanswered)
    total = len(scores)
    return {"exact_match": 100.0 * sum(s["exact_match"] for s in scores.values()) / total,
            "f1": 100.0 * sum(s["f1"] for s in scores.values()) / total, "n": total}


# --------------------------------------------------------------------------------------
# A minimal question-answering "pipeline"
# --------------------------------------------------------------------------------------


def answer_question(
    model,
    tokenizer,
    question: str,
    context: str,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    max_query_length: int = 64,
) -> dict[str, Any]:
    """Answer one question about one context with an extractive QA model.

    Works with any ``*ForQuestionAnswering``-like model whose output has
    ``start_logits``/``end_logits`` (or is a ``(start, end, ...)`` tuple).  The
    context is split into as many windows as needed, exactly as in evaluation,
    and all windows run in one batch.

    Returns:
        ``{"answer": str, "score": float, "start": int, "end": int}`` where
        ``answer == context[start:end]`` (character offsets) and ``score`` is
        p(start) * p(end), softmax over the context tokens of the winning window
        (like the old pipeline).  No valid span gives ``answer=""``, score 0.
    """
    import torch

    examples = {"id": ["q"], "question": [question], "context": [context]}
    feats = prepare_validation_features(examples, tokenizer, max_seq_length, doc_stride, max_query_length)
    inputs = {name: torch.tensor(feats[name]) for name in model_input_names(model, feats)}
    try:
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
    except StopIteration:  # a parameter-less model: keep CPU tensors
        pass

    was_training = model.training
    model.eval()  # no dropout; restored below so the caller's mode is untouched
    try:
        with torch.no_grad():
            out = model(**inputs)
    finally:
        model.train(was_training)
    start = out.start_logits if hasattr(out, "start_logits") else out[0]
    end = out.end_logits if hasattr(out, "end_logits") else out[1]
    start = start.float().cpu().numpy()
    end = end.float().cpu().numpy()

    offsets = _offsets_array(feats)
    (best,) = _best_spans(
        [context], ["q"], feats["example_id"], offsets, start, end, n_best_size, max_answer_length
    )
    if best["feature"] is None or not np.isfinite(best["score"]):
        return {"answer": "", "score": 0.0, "start": 0, "end": 0}
    f = best["feature"]
    in_ctx = offsets[f, :, 0] >= 0

    def _softmax_at(logits: np.ndarray, idx: int) -> float:
        z = logits[in_ctx]
        z = np.exp(z - z.max())
        return float(np.exp(logits[idx] - logits[in_ctx].max()) / z.sum())

    score = _softmax_at(start[f], best["start_token"]) * _softmax_at(end[f], best["end_token"])
    return {"answer": best["text"], "score": score, "start": best["start"], "end": best["end"]}


# ---------------------------------------------------------------------------
# Evaluation of a model on pre-processed validation features
# ---------------------------------------------------------------------------


def predict_logits(model, features, batch_size: int = 32, desc: str = "predicting") -> tuple[np.ndarray, np.ndarray]:
    """Start/end logits of `model` on every validation feature, in order, with a progress bar."""
    import torch
    from tqdm.auto import tqdm

    names = model_input_names(model, features.column_names)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    starts, ends = [], []
    try:
        with torch.no_grad():
            for i in tqdm(range(0, len(features), batch_size), desc=desc, unit="batch"):
                batch = features[i : i + batch_size]
                out = model(**{n: torch.tensor(batch[n], device=device) for n in names})
                starts.append(out.start_logits.float().cpu().numpy())
                ends.append(out.end_logits.float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(starts), np.concatenate(ends)


def evaluate_squad(model, examples, features, batch_size: int = 32, n_best_size: int = 20,
                   max_answer_length: int = 30, desc: str = "evaluating") -> tuple[dict[str, float], dict[str, str]]:
    """EM/F1 (official v1.1 definition) of `model` on `examples`, and its predicted answer for each question."""
    start, end = predict_logits(model, features, batch_size, desc)
    predictions = postprocess_predictions(examples, features, start, end, n_best_size, max_answer_length)
    return squad_v1_metrics(predictions, examples), predictions


# ---------------------------------------------------------------------------
# The task: run_squad.py's data options, and SQuAD as the job runner sees it
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class SquadDataArguments:
    dataset_name: str | None = dataclasses.field(
        default=None, metadata={"help": "A Hub dataset in SQuAD format (e.g. 'squad'). Default: the local files."}
    )
    train_file: str | None = dataclasses.field(
        default=None, metadata={"help": "Local SQuAD-format train file (.json/.json.gz)."})
    validation_file: str | None = dataclasses.field(
        default=None, metadata={"help": "Local SQuAD-format dev file (.json/.json.gz)."})
    local_train: str = dataclasses.field(
        default="reconstructed",
        metadata={"help": "Which local train file when none is given: 'reconstructed' (83,380 questions) or "
                  "'genuine-first11' (3,807).", "choices": ["reconstructed", "genuine-first11"]},
    )
    max_train_samples: int | None = dataclasses.field(
        default=None, metadata={"help": "Train on this many sampled questions."})
    max_eval_samples: int | None = dataclasses.field(
        default=None, metadata={"help": "Evaluate on this many sampled questions."})
    sample_seed: int = dataclasses.field(default=0, metadata={"help": "Seed of the question samples."})
    max_seq_length: int = dataclasses.field(default=384, metadata={"help": "Tokens per training window."})
    doc_stride: int = dataclasses.field(default=128, metadata={"help": "Overlap between windows of a long context."})
    max_query_length: int = dataclasses.field(default=64, metadata={"help": "Questions are cut to this many tokens."})
    eval_max_seq_length: int | None = dataclasses.field(
        default=None, metadata={"help": "Tokens per evaluation window (default: max_seq_length)."})
    n_best_size: int = dataclasses.field(default=20, metadata={"help": "Start/end candidates considered per window."})
    max_answer_length: int = dataclasses.field(default=30, metadata={"help": "Longest answer, in tokens."})
    preprocessing_num_workers: int | None = dataclasses.field(
        default=None, metadata={"help": "Processes for tokenisation."})


@dataclasses.dataclass
class SquadData:
    """The sampled questions of both splits and where they came from (`files`: the report's data source)."""

    files: dict
    train: "datasets.Dataset"
    validation: "datasets.Dataset"


class SquadTask:
    """SQuAD v1.1 extractive question answering for the job runner (`run_squad.py`): EM/F1 of the official script,
    one answer per question."""

    name = "squad"
    script = "run_squad.py"
    auto_class = "AutoModelForQuestionAnswering"
    pipeline_tag = "question-answering"
    data_arguments = SquadDataArguments
    default_config = REPO_ROOT / "configs" / "quickstart.yaml"
    unit = "questions"

    def adjust_arguments(self, data_args, training_args, argv) -> None:
        pass  # FLOPs are counted at the config's oto_seq_len (384 in every SQuAD config)

    @staticmethod
    def data_files(data_args) -> dict:
        """The Hub dataset, the user's two files, or the local SQuAD copy's (RunError if none is found)."""
        from .base import RunError

        if data_args.dataset_name:
            return {"dataset_name": data_args.dataset_name}
        if data_args.train_file or data_args.validation_file:
            if not (data_args.train_file and data_args.validation_file):
                raise RunError("give both --train_file and --validation_file (or neither, to use the local SQuAD "
                               "files)")
            return {"train_file": data_args.train_file, "validation_file": data_args.validation_file}
        local = find_local_squad_dir()
        if local is None:
            raise RunError(
                "no SQuAD data given and no local SQuAD v1.1 folder found (looked at $OTO_SQUAD_DIR and "
                "../shared/data/squad-v1.1). Pass --dataset_name squad (needs the Hub) or --train_file/--validation_file."
            )
        return {k: str(v) for k, v in local_squad_files(data_args.local_train, local).items()}

    def questions(self, data_args, split: str, full_dev: bool = False) -> "datasets.Dataset":
        """The seeded sample of a split's questions (every dev question with `full_dev`)."""
        from .base import RunError

        files = self.data_files(data_args)
        if split == "validation" and "validation_file" in files:
            files = {"validation_file": files["validation_file"]}
        try:
            raw = load_squad(**files)
        except SquadDataError as error:
            raise RunError(str(error)) from error
        n = data_args.max_train_samples if split == "train" else None if full_dev else data_args.max_eval_samples
        return sample_examples(raw[split], n, data_args.sample_seed)

    def load_data(self, data_args) -> SquadData:
        from .base import RunError

        files = self.data_files(data_args)
        try:
            raw = load_squad(**files)
        except SquadDataError as error:
            raise RunError(str(error)) from error
        return SquadData(files=files, train=sample_examples(raw["train"], data_args.max_train_samples,
                                                            data_args.sample_seed),
                         validation=sample_examples(raw["validation"], data_args.max_eval_samples,
                                                    data_args.sample_seed))

    @staticmethod
    def seq_len(data_args) -> int:
        return data_args.eval_max_seq_length or data_args.max_seq_length

    def features(self, data: SquadData, data_args, tokenizer, splits=("train", "validation")) -> dict:
        """{split: windows}: training windows of max_seq_length tokens, evaluation windows of eval_max_seq_length."""
        lengths = {"train": data_args.max_seq_length, "validation": self.seq_len(data_args)}
        for split in splits:
            check_window_params(tokenizer, lengths[split], data_args.doc_stride, data_args.max_query_length)
        window = dict(doc_stride=data_args.doc_stride, max_query_length=data_args.max_query_length,
                      num_proc=data_args.preprocessing_num_workers)
        return {split: tokenize_squad(getattr(data, split), tokenizer, split, max_seq_length=lengths[split], **window)
                for split in splits}

    @staticmethod
    def load_model(path, data=None, attn_implementation: str | None = None, **kwargs):
        from transformers import AutoModelForQuestionAnswering

        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        return AutoModelForQuestionAnswering.from_pretrained(str(path), **kwargs)

    def trainer_inputs(self, data, features, model, tokenizer) -> dict:
        from transformers import default_data_collator

        return dict(train_dataset=features["train"], data_collator=default_data_collator)

    def evaluate(self, model, data: SquadData, features, data_args, batch_size: int, desc: str):
        from .base import Evaluated

        metrics, answers = evaluate_squad(model, data.validation, features["validation"], batch_size=batch_size,
                                          n_best_size=data_args.n_best_size,
                                          max_answer_length=data_args.max_answer_length, desc=desc)
        return Evaluated(metrics, answers)

    def agreement(self, a, b) -> dict:
        same = sum(a.predictions[k] == b.predictions[k] for k in a.predictions)
        return {"questions": len(a.predictions), "identical_predictions": same == len(a.predictions),
                "identical_predictions_count": same}

    @staticmethod
    def logged_metrics(metrics: dict) -> dict:
        return {"eval_exact_match": metrics["exact_match"], "eval_f1": metrics["f1"]}

    @staticmethod
    def write_predictions(out: Path, evaluated, data=None) -> None:
        # The saved model's answers, {question id: text} (the file name HF's run_qa.py uses), so that two runs can be
        # compared question by question (paired differences) without re-running either model.
        (out / "eval_predictions.json").write_text(json.dumps(evaluated.predictions, indent=1, ensure_ascii=False)
                                                   + "\n")

    @staticmethod
    def report_fields(data: SquadData, features, data_args) -> dict:
        return {"data": {**data.files, "train_questions": len(data.train), "train_features": len(features["train"]),
                         "eval_questions": len(data.validation), "eval_features": len(features["validation"])}}

    @staticmethod
    def card_evaluation(data, data_args, metrics: dict, baseline: dict | None = None):
        """The card's record of a SQuAD evaluation: the Hub dataset, or SQuAD v1.1 for the local files, or the user's
        file by name (never its path)."""
        from ..model_card import Evaluation

        if data_args.dataset_name:
            dataset_type, name = data_args.dataset_name, data_args.dataset_name
        elif data_args.validation_file:
            dataset_type, name = "json", Path(data_args.validation_file).name
        else:
            dataset_type, name = "squad", "SQuAD v1.1"
        note = "" if data_args.max_eval_samples is None else f"{len(data.validation):,} sampled questions"
        return Evaluation(dataset_type=dataset_type, dataset_name=name, split="validation", metrics=dict(metrics),
                          baseline=baseline or {}, note=note)

    @staticmethod
    def card_task_name(data) -> str:
        return "squad"

    @staticmethod
    def example_scores(predictions: dict, golds: dict) -> list[float]:
        """Per-question F1 (0-1) in the sorted order of the question ids, so that two runs' lists pair up."""
        scores = squad_v1_scores(predictions, golds)
        return [scores[q]["f1"] for q in sorted(golds)]
