"""The keyword a model's ``forward`` and ``generate`` take the KV cache by.

transformers 5.25 renamed ``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40);
older releases know only ``past_key_values``. :func:`cache_kwargs` gives the one the installed
release expects, so no call in the product depends on the version.
"""

from __future__ import annotations

import inspect
from typing import Any

_TAKES_CACHE: dict[type, bool] = {}  # model class -> whether its forward has a ``cache`` parameter


def cache_keyword(model: Any) -> str:
    """``"cache"`` when ``model.forward`` has that parameter, else ``"past_key_values"``."""
    kind = type(model)
    if kind not in _TAKES_CACHE:
        forward = getattr(kind, "forward", None)
        _TAKES_CACHE[kind] = forward is not None and "cache" in inspect.signature(forward).parameters
    return "cache" if _TAKES_CACHE[kind] else "past_key_values"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{keyword: cache}`` for ``model(...)`` or ``model.generate(...)``."""
    return {cache_keyword(model): cache}
