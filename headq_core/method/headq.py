"""HeadQ: a low-rank side code of the key residual in a query basis, added back on the logit side.

- :class:`QueryStats` accumulates the uncentred query second moment ``C = mean(q q^T)`` per
  (layer, KV head), pooled over the query heads of the group, in float64 over streamed batches.
- Bases ``U`` [Hkv, d, r] (orthonormal columns): ``query_pca`` (top-r eigenvectors of C),
  ``key_pca`` (top-r eigenvectors of the uncentred second moment of the key residual at hand; the
  evaluator computes it on the very residuals it corrects, which favours this control) and
  ``random`` (seeded random orthonormal).
- Side code ``c_j = U^T (k_j - k^_j)`` at 16 (fp16), 8, 4 or 2 bits (codes below 8 bits packed
  little-endian along r with ``packing.pack_bits``). ``scale="token"``: symmetric, one fp16 scale
  ``amax / (2**(bits-1) - 1)`` per token, two's-complement codes (2 bits: levels {-1, 0, +1}); the
  layout of docs/contracts.md ("Kernel storage layout"). ``scale="group"``: asymmetric min/max per
  (batch, KV head, key group of G tokens, component), fp16 step ``(max - min) / (2**bits - 1)`` and
  fp16 minimum, unsigned codes using all ``2**bits`` levels (the KIVI per-channel layout).
- Correction ``sign * tau * <U^T q_t, c^_j>`` on keys read in quantized form only.

:func:`encode_side` raises ValueError on a non-finite residual or group scales beyond fp16, or, given
a ``flags`` tensor (a decode step of the cache), sets their bits there (``quant.Flag``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from headq_core.config import SIDE_BITS, HeadQConfig
from headq_core.method.packing import pack_bits, unpack_bits
from headq_core.method.quant import FP16_MAX, Flag, check_finite

# the bits of encode_side's checks in a flags tensor (quant's take 1 and 2)
RESIDUAL_NON_FINITE = Flag(4, "residual: contains NaN or inf")
SIDE_FP16_RANGE = Flag(8, "residual: side code exceeds the fp16 range of the step / minimum")


def _group_size(q_heads: int, kv_heads: int) -> int:
    if kv_heads < 1 or q_heads % kv_heads:
        raise ValueError(f"kv_heads: {kv_heads} must divide q_heads {q_heads}")
    return q_heads // kv_heads


def top_eigen(moment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric [..., d, d] -> (eigenvalues [..., d] descending, eigenvectors [..., d, d] as columns)."""
    vals, vecs = torch.linalg.eigh(moment)
    return vals.flip(-1), vecs.flip(-1)


class QueryStats:
    """Streaming float64 accumulator of ``sum q q^T`` per (layer, KV head) and query counts."""

    def __init__(self, n_layers: int, kv_heads: int, head_dim: int) -> None:
        for name, val in (("n_layers", n_layers), ("kv_heads", kv_heads), ("head_dim", head_dim)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name}: must be a positive integer, got {val!r}")
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.sums = torch.zeros(n_layers, kv_heads, head_dim, head_dim, dtype=torch.float64)
        self.counts = torch.zeros(n_layers, dtype=torch.float64)

    def update(self, layer: int, q: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add queries q [B, Hq, T, d] of ``layer``; ``mask`` bool [B, T] keeps only True tokens."""
        if not 0 <= layer < self.sums.shape[0]:
            raise ValueError(f"layer: must lie in [0, {self.sums.shape[0]}), got {layer}")
        if q.dim() != 4 or q.shape[-1] != self.head_dim:
            raise ValueError(f"q: expected [B, Hq, T, {self.head_dim}], got {tuple(q.shape)}")
        check_finite(q, "q")
        b, hq, t, d = q.shape
        g = _group_size(hq, self.kv_heads)
        n_tok = b * t
        if mask is not None:
            if mask.shape != (b, t) or mask.dtype != torch.bool:
                raise ValueError(f"mask: expected bool [{b}, {t}], got {mask.dtype} {tuple(mask.shape)}")
            q = q * mask.view(b, 1, t, 1)
            n_tok = int(mask.sum())
        x = q.to(torch.float64).reshape(b, self.kv_heads, g * t, d).transpose(0, 1)
        x = x.reshape(self.kv_heads, b * g * t, d)  # every query vector of each KV head's group
        self.sums[layer] += (x.transpose(-1, -2) @ x).to(self.sums.device)  # [Hkv, d, d]
        self.counts[layer] += n_tok * g

    def second_moment(self) -> torch.Tensor:
        """C = mean(q q^T): float64 [L, Hkv, d, d]. Layers without data raise ValueError."""
        if (self.counts == 0).any():
            raise ValueError("layer: some layers received no queries")
        return self.sums / self.counts.view(-1, 1, 1, 1)

    def spectrum(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(eigenvalues [L, Hkv, d] descending, eigenvectors [L, Hkv, d, d]) of C, float64."""
        return top_eigen(self.second_moment())


def query_pca_basis(moment: torch.Tensor, rank: int) -> torch.Tensor:
    """Top-``rank`` eigenvectors of C [..., d, d] -> float32 [..., d, rank]."""
    if not 1 <= rank <= moment.shape[-1]:
        raise ValueError(f"rank: must lie in [1, {moment.shape[-1]}], got {rank}")
    return top_eigen(moment.to(torch.float64))[1][..., :rank].float()


def key_pca_basis(residual: torch.Tensor, rank: int) -> torch.Tensor:
    """Top-``rank`` eigenvectors of the uncentred residual second moment, residual [B, Hkv, S, d]
    -> [Hkv, d, rank] (tokens with zero residual, never quantized, add nothing)."""
    r = residual.to(torch.float64)
    moment = torch.einsum("bhsd,bhse->hde", r, r) / max(1, r.shape[0] * r.shape[2])
    return query_pca_basis(moment, rank)


def random_basis(kv_heads: int, head_dim: int, rank: int, seed: int = 0) -> torch.Tensor:
    """Seeded random orthonormal basis [Hkv, d, rank] (QR of a Gaussian matrix)."""
    if not 1 <= rank <= head_dim:
        raise ValueError(f"rank: must lie in [1, {head_dim}], got {rank}")
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(kv_heads, head_dim, rank, generator=gen, dtype=torch.float64)
    qmat, rmat = torch.linalg.qr(g)
    return (qmat * torch.sign(torch.diagonal(rmat, dim1=-2, dim2=-1)).unsqueeze(-2)).float()


class BasisSource(Protocol):
    """What holds a calibration's query directions (``evaluation.calibrate.Calibration``)."""

    def layer_basis(self, layer: int, rank: int) -> torch.Tensor:
        """The top-``rank`` directions of ``layer``: [Hkv, d, rank]."""
        ...


def make_basis(cfg: HeadQConfig, layer: int, *, query_basis: torch.Tensor | None = None,
               residual: torch.Tensor | None = None, kv_heads: int, head_dim: int) -> torch.Tensor:
    """The basis U [Hkv, d, rank] of ``layer`` that ``cfg.basis`` names; the one place a run's basis
    is chosen (evaluator and cache alike). query_pca: the leading ``rank`` columns of
    ``query_basis`` [Hkv, d, >= rank] (a calibration's directions of that layer); key_pca: from
    ``residual`` [B, Hkv, S, d]; random: seeded ``cfg.seed + layer`` (each layer its own draw)."""
    if cfg.basis == "query_pca":
        if query_basis is None:
            raise ValueError("basis: query_pca needs the calibration's query basis")
        if query_basis.shape[-1] < cfg.rank:
            raise ValueError(f"rank: the calibration keeps {query_basis.shape[-1]} directions, "
                             f"{cfg.rank} requested")
        return query_basis[..., : cfg.rank]
    if cfg.basis == "key_pca":
        if residual is None:
            raise ValueError("basis: key_pca needs the key residual")
        return key_pca_basis(residual, cfg.rank)
    return random_basis(kv_heads, head_dim, cfg.rank, cfg.seed + layer)


def _check_basis(basis: torch.Tensor, kv_heads: int, head_dim: int) -> None:
    if basis.dim() != 3 or basis.shape[:2] != (kv_heads, head_dim):
        raise ValueError(f"basis: expected [{kv_heads}, {head_dim}, r], got {tuple(basis.shape)}")


@dataclass
class SideCode:
    """A stored side code of S tokens, rank r.

    codes: fp16 [B, Hkv, S, r] (16 bits), int8 [B, Hkv, S, r] (token, 8), uint8 [B, Hkv, S, r]
    (group, 8) or uint8 [B, Hkv, S, ceil(r*bits/8)] (4 and 2 bits, packed).
    scale: None (16 bits); token: fp16 [B, Hkv, S]; group: fp16 [B, Hkv, 2, r, S/G] holding the
    step (index 0) and the minimum (index 1) of each group, groups on the last axis so that, like
    per-token scales, the blocks of a growing cache concatenate along it.
    group_size: G for group scales, None for token scales.
    """

    codes: torch.Tensor
    scale: torch.Tensor | None
    bits: int
    rank: int
    group_size: int | None = None

    def _group_part(self, index: int) -> torch.Tensor:
        if self.group_size is None or self.scale is None:
            raise ValueError("side_scale: only group-scale codes have a per-group step and minimum")
        return self.scale[:, :, index].transpose(-1, -2)

    @property
    def step(self) -> torch.Tensor:
        """Group mode: fp16 step [B, Hkv, S/G, r]."""
        return self._group_part(0)

    @property
    def offset(self) -> torch.Tensor:
        """Group mode: fp16 group minimum [B, Hkv, S/G, r]."""
        return self._group_part(1)


def _encode_token(c: torch.Tensor, bits: int, check: bool) -> SideCode:
    """Symmetric per-token codes of c [B, Hkv, S, r], packed below 8 bits (``check``: the packing's
    range check, a host sync; the codes are clamped here)."""
    qmax = (1 << (bits - 1)) - 1
    scale = (c.abs().amax(-1) / qmax).half()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    codes = torch.round(c / scale.float().unsqueeze(-1)).clamp_(-qmax, qmax).to(torch.int8)
    if bits < 8:
        codes = pack_bits((codes.to(torch.int16) & ((1 << bits) - 1)).to(torch.uint8), bits, check=check)
    return SideCode(codes=codes, scale=scale, bits=bits, rank=c.shape[-1])


def _encode_group(c: torch.Tensor, bits: int, group_size: int, flags: torch.Tensor | None) -> SideCode:
    """Asymmetric min/max codes of c [B, Hkv, S, r] per group of ``group_size`` tokens."""
    b, h, s, r = c.shape
    levels = (1 << bits) - 1
    cg = c.reshape(b, h, s // group_size, group_size, r)
    lo, hi = cg.amin(-2), cg.amax(-2)  # [B, Hkv, S/G, r]
    if s:
        SIDE_FP16_RANGE.check((lo.abs().max() > FP16_MAX) | (hi.abs().max() > FP16_MAX), flags)
    step = ((hi - lo) / levels).half()
    step = torch.where(step == 0, torch.ones_like(step), step)
    offset = lo.half()
    codes = torch.round((cg - offset.float().unsqueeze(-2)) / step.float().unsqueeze(-2))
    codes = codes.clamp_(0, levels).to(torch.uint8).reshape(b, h, s, r)
    scale = torch.stack([step, offset], dim=2).transpose(-1, -2).contiguous()  # [B, Hkv, 2, r, S/G]
    return SideCode(codes=pack_bits(codes, bits, check=flags is None), scale=scale, bits=bits, rank=r,
                    group_size=group_size)


def encode_side(residual: torch.Tensor, basis: torch.Tensor, bits: int, *, scale: str = "token",
                group_size: int | None = None, flags: torch.Tensor | None = None) -> SideCode:
    """c = U^T (k - k^): residual [B, Hkv, S, d], basis [Hkv, d, r] -> :class:`SideCode`.

    ``scale="group"`` needs ``bits < 16`` and S a multiple of ``group_size`` (the key group G);
    ``scale="token"`` ignores ``group_size``. With ``flags`` (int32 [] on the residual's device) the
    data checks set their bits there instead of raising (no host sync).
    """
    if bits not in SIDE_BITS:
        raise ValueError(f"side_bits: must be one of {SIDE_BITS}, got {bits!r}")
    if scale not in ("token", "group"):
        raise ValueError(f"side_scale: must be 'token' or 'group', got {scale!r}")
    RESIDUAL_NON_FINITE.check(~torch.isfinite(residual).all(), flags)
    _check_basis(basis, residual.shape[1], residual.shape[-1])
    c = torch.einsum("bhsd,hdr->bhsr", residual.float(), basis.float())
    if scale == "token":
        if bits == 16:
            return SideCode(codes=c.half(), scale=None, bits=16, rank=c.shape[-1])
        return _encode_token(c, bits, check=flags is None)
    if bits == 16:
        raise ValueError("side_scale: 'group' needs side_bits < 16")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size: 'group' side scales need the key group size, got {group_size!r}")
    if c.shape[-2] % group_size:
        raise ValueError(f"group_size: {group_size} must divide the {c.shape[-2]} encoded tokens")
    return _encode_group(c, bits, group_size, flags)


def decode_side(side: SideCode) -> torch.Tensor:
    """Reconstructed code c^ float32 [B, Hkv, S, r]."""
    if side.bits == 16:
        return side.codes.float()
    assert side.scale is not None
    codes = side.codes
    if side.bits < 8:
        codes = unpack_bits(codes, side.bits, side.rank)
    if side.group_size is not None:
        b, h, s, r = codes.shape
        cg = codes.float().reshape(b, h, s // side.group_size, side.group_size, r)
        c_hat = cg * side.step.float().unsqueeze(-2) + side.offset.float().unsqueeze(-2)
        return c_hat.reshape(b, h, s, r)
    if side.bits < 8:
        signed = codes.to(torch.int16)
        codes = torch.where(signed >= 1 << (side.bits - 1), signed - (1 << side.bits), signed)
    return codes.float() * side.scale.float().unsqueeze(-1)


def correction_keys(basis: torch.Tensor, c_hat: torch.Tensor, sign: int = 1) -> torch.Tensor:
    """The key-space term ``sign * U c^`` [B, Hkv, S, d]: k^ plus this gives the effective key
    whose logits equal the corrected ones."""
    return sign * torch.einsum("hdr,bhsr->bhsd", basis.float(), c_hat)


def logit_correction(q: torch.Tensor, basis: torch.Tensor, c_hat: torch.Tensor, tau: float,
                     sign: int = 1, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``sign * tau * <U^T q_t, c^_j>`` [B, Hq, T, S] for q [B, Hq, T, d], basis [Hkv, d, r],
    c_hat [B, Hkv, S, r]; zero where ``mask`` (bool [T, S], from ``decode_mask``) is False."""
    b, hq, t, d = q.shape
    hkv = c_hat.shape[1]
    g = _group_size(hq, hkv)
    _check_basis(basis, hkv, d)
    if c_hat.shape[0] != b or c_hat.shape[-1] != basis.shape[-1]:
        raise ValueError(f"c_hat: expected [{b}, {hkv}, S, {basis.shape[-1]}], got {tuple(c_hat.shape)}")
    qr = torch.einsum("bhgtd,hdr->bhgtr", q.float().reshape(b, hkv, g, t, d), basis.float())
    corr = sign * tau * torch.einsum("bhgtr,bhsr->bhgts", qr, c_hat).reshape(b, hq, t, -1)
    if mask is not None:
        corr = corr * mask.to(corr.device, corr.dtype)
    return corr
