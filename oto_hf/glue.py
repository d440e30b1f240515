"""Deprecated alias of `oto_hf.tasks.classification` (kept for one release; removed in 0.4): every name of that
module."""

import warnings

from .tasks import classification as _moved


warnings.warn("oto_hf.glue is deprecated and will be removed in oto-hf 0.4: import oto_hf.tasks.classification "
              "instead", DeprecationWarning, stacklevel=2)


def __getattr__(name: str):
    return getattr(_moved, name)
