"""Token windows: how a corpus becomes the sequences a model reads (evaluation and calibration alike).

The documents are tokenised without special tokens and joined with EOS into one text stream. A
window starts the way the tokenizer starts a sequence: when it prepends special tokens (a BOS such
as Llama 3's ``<|begin_of_text|>``; what ``tokenizer("a")`` puts before the text), every window is
that prefix followed by ``window - prefix`` text tokens, and the prefix is never scored. With no
prefix the first token of a window is not scored (nothing predicts it). So each window scores
``window - max(prefix, 1)`` tokens: lm-eval's rolling log-likelihood with disjoint windows, each
conditioned on the start-of-sequence its model was trained with (docs/method.md).

``placement`` chooses which chunks of the stream become windows when the corpus holds more than
``max_tokens``: ``spread`` (default) takes them evenly over the whole stream, ``contiguous`` the
first ones (the only choice before, and cheaper on a huge corpus: it stops tokenising early).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch

from headq_core.evaluation.corpus import CorpusSpec, load_texts

AddBos = Literal["auto"] | bool
Placement = Literal["spread", "contiguous"]
PLACEMENTS = ("spread", "contiguous")
# the keys of Windows.describe(): what a results document's dataset block says about the windows
WINDOW_FIELDS = ("tokens", "windows", "window", "tokens_scored", "bos_prepended", "prefix_tokens",
                 "placement", "stream_tokens", "window_offsets")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Windows:
    """``ids`` int64 [n, window]: the windows; ``prefix``: tokens of the start prefix at the head of
    every window; ``offsets`` int64 [n]: index in the text stream of each window's first text
    token; ``stream_tokens``: tokens in the stream they were cut from (all of it for ``spread``)."""

    ids: torch.Tensor
    prefix: int
    offsets: torch.Tensor
    stream_tokens: int
    placement: Placement

    @property
    def first_scored(self) -> int:
        """Position of the first scored token of a window: logits[:, first_scored - 1:-1] predict
        ids[:, first_scored:]."""
        return max(self.prefix, 1)

    @property
    def scored_per_window(self) -> int:
        return int(self.ids.shape[1]) - self.first_scored

    @property
    def tokens_scored(self) -> int:
        return int(self.ids.shape[0]) * self.scored_per_window

    def describe(self) -> dict[str, Any]:
        """The ``dataset`` fields of a results document that say what was read and scored."""
        values = (int(self.ids.numel()), int(self.ids.shape[0]), int(self.ids.shape[1]), self.tokens_scored,
                  self.prefix > 0, self.prefix, self.placement, self.stream_tokens,
                  [int(o) for o in self.offsets])
        return dict(zip(WINDOW_FIELDS, values, strict=True))


def tokenizer_prefix(tokenizer) -> list[int]:
    """The special tokens ``tokenizer`` puts before the text of a sequence (e.g. ``[bos]``), or []."""
    with_special = list(tokenizer("a")["input_ids"])
    bare = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(bare) + 1):
        if bare and with_special[start : start + len(bare)] == bare:
            return with_special[:start]
    return []


def start_prefix(tokenizer, add_bos: AddBos = "auto") -> list[int]:
    """The prefix every window starts with. ``auto``: the tokenizer's own (:func:`tokenizer_prefix`);
    ``True``: that, or its ``bos_token_id`` when it adds none; ``False``: none (a warning when the
    tokenizer would add one: the model then runs in a state it was not trained in)."""
    if add_bos not in ("auto", True, False):
        raise ValueError(f"dataset.add_bos: must be 'auto', true or false, got {add_bos!r}")
    own = tokenizer_prefix(tokenizer)
    if add_bos is False:
        if own:
            _log.warning("dataset.add_bos is false, but this model's tokenizer starts every sequence with "
                         "%s: windows start without it, a state the model was not trained in", own)
        return []
    if add_bos is True and not own:
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is None:
            raise ValueError("dataset.add_bos: true, but the tokenizer has no BOS token")
        return [int(bos)]
    return own


def text_stream(tokenizer, texts: list[str], limit: int | None = None) -> list[int]:
    """Token ids of ``texts`` without special tokens, EOS after each document; stops once ``limit``
    tokens are read (None: all)."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if limit is not None and len(ids) >= limit:
            break
    return ids


def token_windows(tokenizer, texts: list[str], window: int, max_tokens: int, *, add_bos: AddBos = "auto",
                  placement: Placement = "spread") -> Windows:
    """Cut ``texts`` into at most ``max_tokens // window`` windows of ``window`` tokens (module doc)."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 2:
        raise ValueError(f"window: must be an integer >= 2, got {window!r}")
    if not isinstance(max_tokens, int) or max_tokens < window:
        raise ValueError(f"max_tokens: must be an integer >= window ({window}), got {max_tokens!r}")
    if placement not in PLACEMENTS:
        raise ValueError(f"dataset.placement: must be one of {PLACEMENTS}, got {placement!r}")
    prefix = start_prefix(tokenizer, add_bos)
    text_len = window - len(prefix)
    if text_len < 2:
        raise ValueError(f"window: {window} leaves fewer than 2 text tokens after the "
                         f"{len(prefix)}-token prefix")
    wanted = max_tokens // window
    stream = text_stream(tokenizer, texts, wanted * text_len if placement == "contiguous" else None)
    available = len(stream) // text_len
    n = min(wanted, available)
    if n == 0:
        raise ValueError(f"dataset: only {len(stream)} tokens of text, fewer than one window of {window}")
    chunks = torch.arange(n) if placement == "contiguous" else torch.arange(n) * available // n
    offsets = chunks * text_len
    body = torch.tensor(stream, dtype=torch.long)[offsets[:, None] + torch.arange(text_len)]
    head = torch.tensor(prefix, dtype=torch.long).expand(n, len(prefix))
    return Windows(ids=torch.cat([head, body], dim=1), prefix=len(prefix), offsets=offsets,
                   stream_tokens=len(stream), placement=placement)


def corpus_windows(tokenizer, spec: CorpusSpec, window: int, max_tokens: int, *, add_bos: AddBos = "auto",
                   placement: Placement = "spread") -> Windows:
    """:func:`token_windows` of ``load_texts(spec)``."""
    texts = load_texts(spec)
    return token_windows(tokenizer, texts, window, max_tokens, add_bos=add_bos, placement=placement)
