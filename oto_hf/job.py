"""Deprecated alias of `oto_hf.runner` (kept for one release; removed in oto-hf 0.4): every name of that module.
`parse_arguments(data_arguments, argv, default_config)` of this module's old signature is `runner.parse_arguments(
task, argv)` now."""

import warnings

from . import runner as _moved


warnings.warn("oto_hf.job is deprecated and will be removed in oto-hf 0.4: import oto_hf.runner instead",
              DeprecationWarning, stacklevel=2)


def __getattr__(name: str):
    return getattr(_moved, name)
