"""One side (keys or values) of one layer of the quantized cache: packed head + full-precision tail.

:class:`Side` keeps the packed codes with fp16 scales and zero-points (``quant.quantize``) of the
tokens the decode rule (``schedule.quantized_count``) has quantized, plus the full-precision
residual tail; with HeadQ also the side codes ``c_j = U^T (k_j - k^_j)`` (``headq.encode_side``).
A sliding-window layer frees its oldest tokens with :meth:`Side.drop` (whole quantization groups,
so the codes that stay are the ones a full cache would hold); ``first`` counts the freed tokens.
A single-token append (a decode step) records its checks in the layer's ``step_flags.StepFlags``
instead of raising, so it never makes the host wait for the device.
:class:`PolicySide` holds values under the online A² policy (``values.OnlineA2``).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from headq_core.config import HeadQConfig, QuantConfig, ValuePolicyConfig
from headq_core.method.headq import SideCode, correction_keys, decode_side, encode_side
from headq_core.method.pre_rope import Rope
from headq_core.method.quant import Packed, dequantize, quantize
from headq_core.method.schedule import quantized_count
from headq_core.method.values import OnlineA2
from headq_core.runtime.step_flags import StepFlags


class Side:
    """One side (keys or values) of one layer: packed head + full-precision tail [B, H, n, d]."""

    def __init__(self, cfg: QuantConfig | None) -> None:
        self.cfg = cfg
        self.packed: Packed | None = None
        self.side: SideCode | None = None
        self.tail: torch.Tensor | None = None
        self.first = 0  # tokens freed from the front (sliding-window layers)
        self.flags: StepFlags | None = None  # set by the layer: where decode steps record their checks

    @property
    def n_quant(self) -> int:
        """Quantized tokens held (freed ones not counted)."""
        return 0 if self.packed is None else self.packed.n_quant

    @property
    def total(self) -> int:
        """Tokens this side has seen: freed + quantized + tail."""
        return self.first + self.n_quant + (0 if self.tail is None else self.tail.shape[-2])

    def drop(self, count: int) -> None:
        """Free the ``count`` oldest held tokens: quantized ones (whole groups of a per_channel side),
        or tail tokens of a full-precision side."""
        if count <= 0:
            return
        if self.cfg is None:
            assert self.tail is not None
            self.tail = self.tail[..., count:, :]
        else:
            if count > self.n_quant or count % self.cfg.seq_group:
                raise ValueError(f"count: {count} tokens is not whole groups of the {self.n_quant} "
                                 "quantized ones")
            self._drop_head(count)
            if self.side is not None:
                self.side = drop_side(self.side, count)
        self.first += count

    def _drop_head(self, count: int) -> None:
        """Free the ``count`` oldest quantized tokens (whole groups, checked by :meth:`drop`)."""
        self.packed = _drop_packed(self.packed, count)  # type: ignore[arg-type]

    def append(self, x: torch.Tensor, basis: torch.Tensor | None, headq: HeadQConfig | None,
               rope: Rope | None = None) -> None:
        """Add tokens x [B, H, s, d]; quantize those the decode rule now wants quantized (checked at
        once, or for a single token in :attr:`flags`). ``rope``: the tokens' rotary cos / sin, read
        only by pre-RoPE keys (``format_side.FormatSide``; packed codes are post-RoPE)."""
        self.tail = x if self.tail is None else torch.cat([self.tail, x], dim=-2)
        move = quantized_count(self.total, self.cfg) - self.first - self.n_quant
        if move <= 0:
            return
        flags = None if self.flags is None or x.shape[-2] > 1 else self.flags.on(x.device)
        leaving, self.tail = self.tail[..., :move, :], self.tail[..., move:, :]
        new = quantize(leaving.float(), self.cfg, n_quant=move, flags=flags)  # type: ignore[arg-type]
        if basis is not None and headq is not None:
            residual = leaving.float() - dequantize(new)
            side = encode_side(residual, basis.to(residual.device), headq.side_bits, scale=headq.side_scale,
                               group_size=self.cfg.group_size, flags=flags)  # type: ignore[union-attr]
            self.side = side if self.side is None else cat_side(self.side, side)
        self.packed = new if self.packed is None else _cat_packed(self.packed, new)

    def read(self, basis: torch.Tensor | None, sign: int, like: torch.Tensor) -> torch.Tensor:
        """What attention reads: [B, H, n, d] in ``like``'s dtype and device (the dense path; decode
        steps on CUDA read :meth:`whole` with ``kernels.decode_attention`` instead)."""
        parts = []
        head = self._head()
        if head is not None:
            if self.side is not None and basis is not None:
                head = head + correction_keys(basis.to(head.device), decode_side(self.side), sign)
            parts.append(head.to(like.device, like.dtype))
        if self.tail is not None:
            parts.append(self.tail)
        return torch.cat(parts, dim=-2)

    def _head(self) -> torch.Tensor | None:
        """The quantized tokens as read, float32 [B, H, n_quant, d] (None before any)."""
        return None if self.packed is None else dequantize(self.packed).float()

    def whole(self) -> Packed:
        """The packed head with the full-precision tail attached: the side's whole sequence as one
        ``Packed`` (what ``kernels.layout.from_packed`` reads)."""
        assert self.packed is not None and self.tail is not None
        shape = (*self.packed.shape[:-2], self.packed.n_quant + self.tail.shape[-2], self.packed.shape[-1])
        return replace(self.packed, shape=shape, tail=self.tail)

    def nbytes(self) -> int:
        """Bytes held: codes, scales, zero-points, side codes and the full-precision tail."""
        tensors = [] if self.tail is None else [self.tail]
        if self.packed is not None:
            tensors += [self.packed.codes, self.packed.scale, self.packed.zero]
        if self.side is not None:
            tensors += [self.side.codes] + ([] if self.side.scale is None else [self.side.scale])
        return sum(t.numel() * t.element_size() for t in tensors)


class PolicySide(Side):
    """Values under the online A² policy: tokens leave the residual window only in :meth:`settle`,
    after the step's attention is known; kept tokens also hold codes at ``high_bits``."""

    def __init__(self, cfg: QuantConfig, policy: ValuePolicyConfig) -> None:
        super().__init__(cfg)
        if cfg.axis != "per_token":
            raise ValueError("value.axis: the A² value policy in the cache needs per_token values")
        self.policy, self.online = policy, OnlineA2(0, policy.fraction_for(cfg.bits))
        self.high_cfg = (
            QuantConfig(bits=policy.high_bits, axis=cfg.axis, group_size=cfg.group_size)
            if policy.high_bits != 16
            else None
        )
        self.keep: torch.Tensor | None = None  # bool [B, H, n_quant]
        # tokens some (batch, head) keeps: positions int64 [m] and their values [B, H, m, d] at
        # high_bits (packed; exact at 16 bits), one block for all steps (per-token codes concatenate)
        self.high_at: torch.Tensor | None = None
        self.high: Packed | torch.Tensor | None = None

    def append(self, x: torch.Tensor, basis: torch.Tensor | None, headq: HeadQConfig | None,
               rope: Rope | None = None) -> None:
        self.tail = x if self.tail is None else torch.cat([self.tail, x], dim=-2)

    def settle(self, probs: torch.Tensor) -> None:
        """Observe one step's attention probs [B, Hq, q, n]; decide and quantize the leaving tokens."""
        assert self.tail is not None
        self.online.kv_heads = self.tail.shape[1]
        self.online.observe(probs)
        move = quantized_count(self.n_quant + self.tail.shape[-2], self.cfg) - self.n_quant
        if move <= 0:
            return
        keep = torch.stack([self.online.decide(self.n_quant + i) for i in range(move)], -1).to(
            self.tail.device
        )
        leaving = self.tail[..., :move, :]
        first = self.n_quant
        new = quantize(leaving.float(), self.cfg, n_quant=move)  # type: ignore[arg-type]
        self.packed = new if self.packed is None else _cat_packed(self.packed, new)
        self.tail = self.tail[..., move:, :]
        self.keep = keep if self.keep is None else torch.cat([self.keep, keep], -1)
        idx = keep.flatten(0, 1).any(0).nonzero().flatten()
        if len(idx):
            kept = leaving[..., idx, :]
            codes = kept if self.high_cfg is None else quantize(kept.float(), self.high_cfg, n_quant=len(idx))
            at = idx + first
            if self.high is None or self.high_at is None:
                self.high, self.high_at = codes, at
            else:
                self.high, self.high_at = _cat_tokens(self.high, codes), torch.cat([self.high_at, at])

    def read(self, basis: torch.Tensor | None, sign: int, like: torch.Tensor) -> torch.Tensor:
        values = super().read(basis, sign, like)
        if self.high is not None and self.high_at is not None and self.keep is not None:
            at = self.high_at
            exact = self.high if isinstance(self.high, torch.Tensor) else dequantize(self.high)
            keep = self.keep[..., at, None]
            values[..., at, :] = torch.where(keep, exact.to(values.dtype), values[..., at, :])
        return values

    def nbytes(self) -> int:
        high = self.high
        if high is None:
            tensors = []
        else:
            tensors = [high] if isinstance(high, torch.Tensor) else [high.codes, high.scale, high.zero]
        extra = sum(t.numel() * t.element_size() for t in tensors)
        return super().nbytes() + extra + (0 if self.keep is None else self.keep.numel() // 8)


def _cat_packed(a: Packed, b: Packed) -> Packed:
    """Concatenate two packed blocks along the token axis (their groups never straddle)."""
    shape = (*a.shape[:-2], a.shape[-2] + b.shape[-2], a.shape[-1])
    return replace(
        a,
        codes=torch.cat([a.codes, b.codes], -2),
        scale=torch.cat([a.scale, b.scale], -2),
        zero=torch.cat([a.zero, b.zero], -2),
        shape=shape,
        tail=torch.cat([a.tail, b.tail], -2),
    )


def _cat_tokens(a: Packed | torch.Tensor, b: Packed | torch.Tensor) -> Packed | torch.Tensor:
    """Two blocks of per-token values along the token axis: packed codes or exact [B, H, n, d]."""
    if isinstance(a, Packed) and isinstance(b, Packed):
        return _cat_packed(a, b)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.cat([a, b], -2)
    raise TypeError("high: blocks of one precision only")


def cat_side(a: SideCode, b: SideCode) -> SideCode:
    scale = None if a.scale is None else torch.cat([a.scale, b.scale], -1)  # type: ignore[list-item]
    return replace(a, codes=torch.cat([a.codes, b.codes], -2), scale=scale)


def _drop_packed(p: Packed, count: int) -> Packed:
    """``p`` without its ``count`` oldest tokens (whole groups for per_channel), in fresh tensors so
    the freed ones' memory goes back (a slice would keep the whole storage alive)."""
    rows = count // p.group_size if p.axis == "per_channel" else count
    shape = (*p.shape[:-2], p.shape[-2] - count, p.shape[-1])
    return replace(p, codes=p.codes[..., count:, :].clone(), scale=p.scale[..., rows:, :].clone(),
                   zero=p.zero[..., rows:, :].clone(), shape=shape)


def drop_side(s: SideCode, count: int) -> SideCode:
    """``s`` without its ``count`` oldest tokens (token scales [B, H, S]; group scales
    [B, H, 2, r, S/G] lose whole groups), in fresh tensors."""
    scale = s.scale
    if scale is not None:
        kept = count // s.group_size if s.group_size is not None else count
        scale = scale[..., kept:].clone()
    return replace(s, codes=s.codes[..., count:, :].clone(), scale=scale)
