"""llama.cpp's iq4_nl block format: 32 values, an fp16 scale and 4-bit indices into a fixed
non-linear table (4.5 bits per element).

A value is read as ``d * KVALUES[q]``. The encoder follows ggml's reference
(``quantize_row_iq4_nl_impl`` in ggml-quants.c without an importance matrix, ``ntry = 7``):
weights ``w = x²``; a first scale ``max / 127`` (``max``: the value of largest magnitude) gives
nearest-table indices and the least-squares scale ``Σ w q x / Σ w q²``; then the 15 inverse scales
``(itry - 127) / max``, itry = -7..7, are tried and the one with the largest ``(Σ w q x)² / Σ w q²``
kept; the final indices are the nearest table entries of ``x / d`` with the float32 ``d``, which is
then stored as fp16. Sums run in float32 in ggml's order (value 0 to 31, no fused multiply-add);
a block with ``amax < 1e-15`` stores d = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headq_core.method.ggml_blocks import BLOCK, Blocks, fp16_bytes, nibbles, signed_max

KVALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
NTRY = 7
GROUP_MAX_EPS = 1e-15


def best_index(al: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """ggml's ``best_index_int8``: index of the nearest table entry of each float32 in ``al``
    (ties go up; below / above the table: its first / last entry) -> int64, same shape."""
    mu = torch.searchsorted(table, al.contiguous(), right=True).clamp(1, len(KVALUES) - 1)
    lo, hi = table[mu - 1], table[mu]
    idx = torch.where(al - lo < hi - al, mu - 1, mu)
    idx = torch.where(al <= table[0], torch.zeros_like(idx), idx)
    return torch.where(al >= table[-1], torch.full_like(idx, len(KVALUES) - 1), idx)


def weighted_sums(x: torch.Tensor, w: torch.Tensor, inv: torch.Tensor,
                  table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ w q x, Σ w q²) [..., nb, T] of the table values q nearest to ``inv * x`` for T inverse
    scales at once (x, w [..., nb, 32]; inv [..., nb, T]), accumulated in float32 from value 0 to 31
    as ggml does."""
    xs, ws = x.unsqueeze(-2), w.unsqueeze(-2)  # [..., nb, 1, 32]
    q = table[best_index(inv.unsqueeze(-1) * xs, table)]  # [..., nb, T, 32]
    sumqx = torch.zeros(q.shape[:-1], dtype=torch.float32, device=x.device)
    sumq2 = torch.zeros_like(sumqx)
    for j in range(BLOCK):
        wq = ws[..., j] * q[..., j]
        sumqx = sumqx + wq * xs[..., j]
        sumq2 = sumq2 + wq * q[..., j]
    return sumqx, sumq2


@dataclass(frozen=True)
class Iq4NlFormat:
    """iq4_nl: 4-bit indices into :data:`KVALUES` with one fp16 scale per block of 32."""

    name: str = "iq4_nl"
    bits: int = 4
    type_size: int = 2 + BLOCK // 2

    def row_bits(self, head_dim: int) -> float:
        """Stored bits per element: 4.5."""
        return self.type_size * 8 / BLOCK

    def encode(self, x: torch.Tensor) -> Blocks:
        """Blocks of x float32 [..., nb, 32]."""
        table = torch.tensor(KVALUES, dtype=torch.float32, device=x.device)
        w = x * x
        empty = x.abs().amax(-1) < GROUP_MAX_EPS
        mx = signed_max(x)
        mx = torch.where(empty.unsqueeze(-1), torch.ones_like(mx), mx)  # empty blocks: any finite scale
        tries = torch.arange(-NTRY, NTRY + 1, device=x.device) + KVALUES[0]  # (itry - 127): exact
        inv = torch.cat([1 / (mx / 127), tries / mx], -1)  # [..., nb, 16]: the first scale, then the tries
        sumqx, sumq2 = weighted_sums(x, w, inv, table)
        d = sumqx[..., 0] / sumq2[..., 0]
        best = d * sumqx[..., 0]
        for t in range(1, inv.shape[-1]):
            sqx, sq2 = sumqx[..., t], sumq2[..., t]
            better = (sq2 > 0) & (sqx * sqx > best * sq2)
            d = torch.where(better, sqx / sq2, d)
            best = torch.where(better, d * sqx, best)
        d = torch.where(empty, torch.zeros_like(d), d)
        inv = torch.where(d == 0, torch.zeros_like(d), 1 / torch.where(d == 0, torch.ones_like(d), d))
        q = best_index(inv.unsqueeze(-1) * x, table).to(torch.uint8)
        return Blocks(d.half(), None, q)

    def decode(self, b: Blocks) -> torch.Tensor:
        """float32 [..., nb, 32]: ``d * KVALUES[q]``."""
        table = torch.tensor(KVALUES, dtype=torch.float32, device=b.q.device)
        return b.d.float().unsqueeze(-1) * table[b.q.long()]

    def to_bytes(self, b: Blocks) -> torch.Tensor:
        """The blocks as ggml stores them (fp16 d, then the index nibbles), uint8 [..., nb, 18]."""
        return torch.cat([fp16_bytes(b.d), nibbles(b.q)], -1)
