"""Randomised Hadamard rotation over head_dim, applied before quantization (QuaRot / SpinQuant).

``H = S_d · diag(s) / sqrt(d)``: the Sylvester Hadamard matrix of order ``d`` (a power of two) with
its columns multiplied by seeded random signs ``s``. ``H`` is orthogonal, so rotating queries and
keys alike leaves every logit unchanged (``<H q, H k> = <q, k>``); the evaluator reads the rotated
cache as ``k_hat = Hᵀ Q(H k)``, which gives the same logits as ``<H q, Q(H k)>``. Spreading each
channel over all channels shrinks outlier channels, which is what makes low-bit codes cheaper.
The rotation is fixed by its seed and shared by every layer and head: it costs no stored bits.
"""

from __future__ import annotations

import torch


def sylvester(d: int) -> torch.Tensor:
    """The ±1 Hadamard matrix of order ``d`` (a power of two), float64 [d, d], symmetric."""
    if not isinstance(d, int) or d < 1 or d & (d - 1):
        raise ValueError(f"rotation: a Hadamard rotation needs a power-of-two head_dim, got {d!r}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hadamard_matrix(d: int, seed: int) -> torch.Tensor:
    """Orthogonal ``H`` float64 [d, d]: Sylvester Hadamard with seeded random column signs, / sqrt(d)."""
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (d,), generator=gen, dtype=torch.int64).double() * 2 - 1
    return sylvester(d) * signs / d**0.5


def rotate(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``H x`` for each row of x [..., d] (float32 math, h [d, d] float64) -> float32 [..., d]."""
    return x.float() @ h.T.to(device=x.device, dtype=torch.float32)


def unrotate(y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``Hᵀ y`` for each row of y [..., d]: the inverse of :func:`rotate` -> float32 [..., d]."""
    return y.float() @ h.to(device=y.device, dtype=torch.float32)
