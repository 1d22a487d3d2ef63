"""FP8 KV caches (e4m3 / e5m2) as vLLM, TensorRT-LLM and SGLang store them, in torch's float8 dtypes.

Each element is stored as ``fp8(x / s)`` and read as ``float(fp8) * s`` with a float32 scale ``s``
(dynamic: ``amax / fp8_max`` over its scope, 1 where the scope is all zeros):

- ``tensor``: one scale per sequence over all its heads, tokens and channels (x [b, h, seq, d]:
  per ``b``; the scale a prefill computes for the layer),
- ``head``: one per head over its tokens and channels,
- ``token``: one per token of each head (over head_dim),
- ``unit``: no scale (``s = 1``), vLLM's default when a checkpoint brings no scales.

Values beyond the format's largest finite number saturate to it (the engines' SATFINITE casts;
torch's own cast would give NaN for e4m3). The tensor and head scales see the whole window's
quantized tokens, as a prefill's scale sees the prompt. Stored bits: 8 per element, plus 32 / d for
the per-token float32 scale (a per-head or per-tensor scale is negligible per element).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
SCALE_BITS = 32  # a float32 scale


@dataclass(frozen=True)
class Fp8Format:
    """One fp8 element format with its scale scope (``tensor``, ``head``, ``token`` or ``unit``)."""

    name: str
    scale_scope: str

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

    def encode(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """fp8 codes of ``x / scale`` [..., seq, d], saturated to the finite range."""
        y = (x.float() / scale).clamp(-self.max_value, self.max_value)
        return y.to(self.dtype)

    def decode(self, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """float32 ``float(codes) * scale``."""
        return codes.float() * scale

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., seq, d] -> float32 [..., seq, d] as read back from the fp8 cache."""
        scale = self.scale(x)
        return self.decode(self.encode(x, scale), scale)

    def row_bits(self, head_dim: int) -> float:
        """Stored bits per element: 8, plus the float32 scale per token for ``token`` scales."""
        return 8.0 + (SCALE_BITS / head_dim if self.scale_scope == "token" else 0.0)
