"""Guards: models that wrap models and stop or replace unsafe answers (finish_reason "guard").

Each guard is one module, registered in :data:`guards` under a snake_case name; a model spec names
it as a call (``guarded(MODEL, monitor=...)``, see :mod:`poise.models.spec`).
"""

from __future__ import annotations

from collections.abc import Callable

from poise.models.base import LanguageModel
from poise.models.wrapped import check_wrapper_kind
from poise.plugins import load_plugins
from poise.registry import Registry

__all__ = ["guards"]

guards: Registry[Callable[..., LanguageModel]] = Registry(
    "guard", loader=load_plugins, check=check_wrapper_kind
)

# the built-in guards register themselves on import
from poise.guards import judged as _judged  # noqa: E402, F401
from poise.guards import streaming as _streaming  # noqa: E402, F401
