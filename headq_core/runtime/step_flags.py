"""The checks of the cache's decode steps, recorded on the device (docs/adr/0006).

A decode step must not make the host wait for the GPU (CUDA graphs, ``set_sync_debug_mode``), so
the checks that raise at once elsewhere (``quant.quantize``, ``headq.encode_side``: non-finite keys
or values leaving the residual window, scales beyond fp16; and the decode mask, which the packed-cache
kernel reads as one start per batch row) set bits of one int32 field per device instead;
:meth:`StepFlags.check` reads it (one sync) and raises the ValueError the eager check raises.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from headq_core.method.headq import RESIDUAL_NON_FINITE, SIDE_FP16_RANGE
from headq_core.method.quant import X_FP16_RANGE, X_NON_FINITE, Flag

MASK_PREFIX = Flag(16, "mask: a decode step's mask must hide a leading prefix of each batch row, the "
                       "same for every head, and leave a token visible (the packed-cache kernel reads "
                       "from one start per row)")
FLAGS = (X_NON_FINITE, X_FP16_RANGE, RESIDUAL_NON_FINITE, SIDE_FP16_RANGE, MASK_PREFIX)  # in check order


class StepFlags:
    """The bits decode steps set, one int32 [] per device (a cache's layers share one), and the
    per-row starts of the last decode mask read (the layers of one step share their mask)."""

    def __init__(self) -> None:
        self.fields: dict[torch.device, torch.Tensor] = {}
        self._starts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(mask): (mask, starts)

    def row_starts(self, mask: torch.Tensor, allowed: Callable[[], torch.Tensor], batch: int) -> torch.Tensor:
        """First visible token int32 [B] of each batch row of a decode step's ``mask``
        (:func:`prefix_start` of ``allowed()`` bool [B, 1 or Hq, kv]), computed once per mask tensor:
        a step's layers of one type get the same mask, so only the first reads it (fewer kernels in
        every step, and in a captured graph). Keeps the masks of the last few reads (one per layer
        type), holding them so that an id is never reused while remembered."""
        seen = self._starts.get(id(mask))
        if seen is None or seen[0] is not mask:
            if len(self._starts) >= 4:
                self._starts.clear()
            lead = prefix_start(allowed(), self.on(mask.device))
            seen = self._starts[id(mask)] = (mask, lead.to(torch.int32).expand(batch).contiguous())
        return seen[1]

    def on(self, device: torch.device) -> torch.Tensor:
        """The field on ``device``, zero until a check fails there."""
        if device not in self.fields:
            self.fields[device] = torch.zeros((), dtype=torch.int32, device=device)
        return self.fields[device]

    def check(self) -> None:
        """Read the fields (one host sync per device) and raise ValueError with the message of the
        first failed check, in the order the eager checks run; the fields are zero again after."""
        bits = 0
        for field in self.fields.values():
            value = int(field)
            if value:
                bits |= value
                field.zero_()
        failed = next((flag for flag in FLAGS if bits & flag.bit), None)
        if failed is not None:
            raise ValueError(failed.message)


def prefix_start(allowed: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """First visible token int64 [B] of each batch row of a decode query's mask row ``allowed`` bool
    [B, 1 or Hq, kv] (left padding, a sliding window): its leading hidden tokens. Sets
    :data:`MASK_PREFIX` in ``flags`` when the mask is anything else (no host sync)."""
    hidden = ~allowed
    lead = hidden.cumprod(-1).sum(-1)  # [B, heads]: hidden tokens before the first visible one
    bad = (hidden.sum(-1) != lead).any() | (lead != lead[:, :1]).any() | (lead >= allowed.shape[-1]).any()
    MASK_PREFIX.check(bad, flags)
    return lead[:, 0]
