"""FP8 KV caches (e4m3 / e5m2) as vLLM, TensorRT-LLM and SGLang store them, in torch's float8 dtypes.

Each element is stored as ``fp8(x / s)`` and read as ``float(fp8) * s`` with a float32 scale ``s``
(dynamic: ``amax / fp8_max`` over its scope, 1 where the scope is all zeros):

- ``tensor``: one scale per sequence over all its heads, tokens and channels (x [b, h, seq, d]:
  per ``b``; the scale a prefill computes for the layer),
- ``head``: one per head over its tokens and channels,
- ``token``: one per token of each head (over head_dim),
- ``unit``: no scale (``s = 1``), vLLM's default when a checkpoint brings no scales.

Values beyond the format's largest finite number saturate to it (the engines' SATFINITE casts;
torch's own cast would give NaN for e4m3). The dynamic tensor and head scales see the whole window's
quantized tokens, as a prefill's scale sees the prompt. ``static`` (``QuantConfig.fp8_static``):
the tensor or head scale is fixed before evaluation from a calibration's amax per (layer, KV head)
(:class:`AmaxSource`), as vLLM's checkpoint or calibrated ``k_scale`` / ``v_scale``: ``s = amax /
fp8_max`` (over the layer's heads for ``tensor``), and values beyond ``amax`` saturate. Stored bits:
8 per element, plus 32 / d for the per-token float32 scale (a per-head or per-tensor scale is
negligible per element).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

FP8_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
SCALE_BITS = 32  # a float32 scale
KV_SIDES = ("key", "value")


class AmaxSource(Protocol):
    """What holds a calibration's amax (``evaluation.calibrate.Calibration``)."""

    def layer_amax(self, layer: int, side: str) -> torch.Tensor:
        """max |x| of ``layer``'s keys (``side="key"``) or values per KV head: float32 [kv_heads]."""
        ...


@dataclass(frozen=True)
class Fp8Format:
    """One fp8 element format with its scale scope (``tensor``, ``head``, ``token`` or ``unit``),
    dynamic or ``static`` (from a calibration's amax)."""

    name: str
    scale_scope: str
    static: bool = False

    @property
    def dtype(self) -> torch.dtype:
        return FP8_DTYPES[self.name]

    @property
    def max_value(self) -> float:
        return float(torch.finfo(self.dtype).max)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """float32 scales broadcastable to x [..., seq, d] (amax over the scope / fp8 max)."""
        if self.scale_scope == "unit":
            return torch.ones((1,) * x.dim(), dtype=torch.float32, device=x.device)
        dims = {"tensor": tuple(range(max(0, x.dim() - 3), x.dim())), "head": (-2, -1), "token": (-1,)}
        amax = x.float().abs().amax(dim=dims[self.scale_scope], keepdim=True)
        s = amax / self.max_value
        return torch.where(s == 0, torch.ones_like(s), s)

    def static_scale(self, amax: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """float32 scales broadcastable to x [..., kv_heads, seq, d] from a calibration's amax float32
        [kv_heads] of x's layer: ``amax / fp8 max`` per head, or of the largest amax for ``tensor``."""
        if self.scale_scope == "tensor":
            peak = amax.float().amax().reshape((1,) * x.dim())
        elif x.dim() >= 3 and x.shape[-3] == amax.numel():
            peak = amax.float().reshape(-1, 1, 1)
        else:
            raise ValueError(f"calibration: amax of {amax.numel()} heads for x {tuple(x.shape)}")
        s = (peak / self.max_value).to(x.device)
        return torch.where(s == 0, torch.ones_like(s), s)

    def encode(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """fp8 codes of ``x / scale`` [..., seq, d], saturated to the finite range."""
        y = (x.float() / scale).clamp(-self.max_value, self.max_value)
        return y.to(self.dtype)

    def decode(self, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """float32 ``float(codes) * scale``."""
        return codes.float() * scale

    def fake_quantize(self, x: torch.Tensor, amax: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., seq, d] -> float32 [..., seq, d] as read back from the fp8 cache; ``amax`` float32
        [kv_heads] (the calibration's, of x's layer) is required for a static scale, else refused."""
        if self.static != (amax is not None):
            raise ValueError("calibration: static fp8 scales (fp8_static) need the calibration's amax"
                             if self.static else "amax: only static fp8 scales (fp8_static) read it")
        scale = self.scale(x) if amax is None else self.static_scale(amax, x)
        return self.decode(self.encode(x, scale), scale)

    def row_bits(self, head_dim: int) -> float:
        """Stored bits per element: 8, plus the float32 scale per token for ``token`` scales."""
        return 8.0 + (SCALE_BITS / head_dim if self.scale_scope == "token" else 0.0)
