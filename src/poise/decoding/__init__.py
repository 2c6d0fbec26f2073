"""Decoding strategies: models that wrap models and change how they decode.

Each strategy is one module, registered in :data:`strategies` under a snake_case name, with one
line of help and its reference; a model spec names it as a call
(``logit_temperature(organism-small, t=0.8)``, see :mod:`poise.models.spec`). A strategy is a
:class:`~poise.models.wrapped.WrappedModel`, so every audit, the gate and ``poise serve`` run on
it unchanged. Strategies that change next-token distributions do it through the token-level step
(``capabilities.step``: a ``logits_hook`` on the inner model's ``generate``).
"""

from __future__ import annotations

from collections.abc import Callable

from poise.models.base import LanguageModel
from poise.models.wrapped import check_wrapper_kind
from poise.plugins import load_plugins
from poise.registry import Registry

__all__ = ["strategies"]

strategies: Registry[Callable[..., LanguageModel]] = Registry(
    "decoding strategy", loader=load_plugins, check=check_wrapper_kind
)

# the built-in strategies register themselves on import
from poise.decoding import best_of_n as _best_of_n  # noqa: E402, F401
from poise.decoding import deal as _deal  # noqa: E402, F401
from poise.decoding import eft as _eft  # noqa: E402, F401
from poise.decoding import feedback as _feedback  # noqa: E402, F401
from poise.decoding import rain as _rain  # noqa: E402, F401
from poise.decoding import steer as _steer  # noqa: E402, F401
from poise.decoding import temperature as _temperature  # noqa: E402, F401
