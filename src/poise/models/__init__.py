"""Model backends and the resolver from a name or path to a ``LanguageModel``.

Names resolve in this order: a registered backend prefix (``mock:...``, ``openai:...``,
``hf:...``), a bundled organism member (``organism``, ``organism-small`` ...), a local folder, and
finally a hub id handed to the ``hf`` backend.
"""

from __future__ import annotations

import os

from poise.models.base import (
    Chat,
    Completion,
    LanguageModel,
    Message,
    TokenLogprobs,
    default_system_prompt,
    no_system_prompt,
    system_prompt_in_template,
    with_system_prompt,
)

__all__ = [
    "Chat",
    "Completion",
    "LanguageModel",
    "Message",
    "TokenLogprobs",
    "default_system_prompt",
    "load_model",
    "no_system_prompt",
    "system_prompt_in_template",
    "with_system_prompt",
]


def load_model(spec: str | os.PathLike[str], **options: object) -> LanguageModel:
    """Resolve ``spec`` (a string, or a ``pathlib.Path`` to a folder) to a LanguageModel (see
    the module docstring for the order)."""
    from poise.models.resolve import load_model as _load

    return _load(spec, **options)
