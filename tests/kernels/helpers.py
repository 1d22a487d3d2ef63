"""Shared builders for the kernel tests: random caches of small shapes (fresh, never zeros)."""

from __future__ import annotations

import torch

from headq_core.config import QuantConfig


def random_basis(heads: int, d: int, r: int, gen: torch.Generator) -> torch.Tensor:
    """Orthonormal U [heads, d, r]."""
    return torch.linalg.qr(torch.randn(heads, d, r, generator=gen))[0]


def random_kv(b: int, h: int, n: int, d: int, gen: torch.Generator,
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys with per-channel offsets (as real keys have) and plain normal values, [b, h, n, d]."""
    k = torch.randn(b, h, n, d, generator=gen) + 3 * torch.randn(1, h, 1, d, generator=gen)
    v = torch.randn(b, h, n, d, generator=gen)
    return k.to(dtype), v.to(dtype)


def configs(kbits: int, kgroup: int, vbits: int, vgroup: int) -> tuple[QuantConfig, QuantConfig]:
    return (QuantConfig(bits=kbits, axis="per_channel", group_size=kgroup),
            QuantConfig(bits=vbits, axis="per_token", group_size=vgroup))
