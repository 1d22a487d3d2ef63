"""Which layers of a model slide, read from its transformers config as ``DynamicCache(config=...)``
reads it: ``layer_types`` when the config states them, else every layer slides when the config
has a ``sliding_window`` (e.g. Mistral v0.1, Starcoder2) and none does otherwise. Only
``"sliding_attention"`` layers get a window; any other type keeps every token (always correct)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SLIDING = "sliding_attention"
FULL = "full_attention"


def layer_windows(config: Any) -> list[int | None]:
    """Per layer: the sliding window (tokens a query sees, itself included) or None (all tokens)."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layers = int(text.num_hidden_layers)
    window = getattr(text, "sliding_window", None)
    types = getattr(text, "layer_types", None)
    if types is None:
        types = [SLIDING if window is not None else FULL] * layers
    if len(types) != layers:
        raise ValueError(f"config.layer_types: {len(types)} entries for {layers} layers")
    if SLIDING in types and not (isinstance(window, int) and window >= 1):
        raise ValueError(f"config.sliding_window: sliding layers need a positive window, got {window!r}")
    return [window if kind == SLIDING else None for kind in types]


def check_windows(windows: Sequence[int | None], num_layers: int) -> list[int | None]:
    """``windows`` as a list after checking its length and values (ValueError naming the field)."""
    out = list(windows)
    if len(out) != num_layers:
        raise ValueError(f"windows: {len(out)} entries for {num_layers} layers")
    bad = [w for w in out if w is not None and not (isinstance(w, int) and w >= 1)]
    if bad:
        raise ValueError(f"windows: each is None or a positive integer, got {bad[0]!r}")
    return out


def layer_type(window: int | None) -> str:
    """The transformers name of a layer with this window."""
    return FULL if window is None else SLIDING
