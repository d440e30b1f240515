"""Deprecated alias of `oto_hf.tasks.squad` (kept for one release; removed in 0.4): every name of that module,
plus `sample_questions` (now `oto_hf.tasks.common.sample_examples`) and `model_input_names` (now in
`oto_hf.tasks.common`)."""

import warnings

from .tasks import squad as _moved
from .tasks.common import model_input_names, sample_examples as sample_questions  # noqa: F401


warnings.warn("oto_hf.squad is deprecated and will be removed in oto-hf 0.4: import oto_hf.tasks.squad (SQuAD) or "
              "oto_hf.tasks.common (sample_examples, model_input_names) instead", DeprecationWarning, stacklevel=2)


def __getattr__(name: str):
    return getattr(_moved, name)
