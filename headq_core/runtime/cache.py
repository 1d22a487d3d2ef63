"""A real quantized KV cache for ``model.generate`` on the public transformers Cache API.

:class:`HeadQCache` is a ``transformers.Cache`` of :class:`HeadQCacheLayer` (a ``DynamicLayer``
subclass overriding only public methods). Each layer keeps, per side (keys / values), packed codes
with fp16 scales and zero-points (``quant.quantize``) for the tokens the decode rule
(``schedule.quantized_count``) has quantized, plus the full-precision residual tail; with HeadQ
also the side codes ``c_j = U^T (k_j - k^_j)`` (``headq.encode_side``). Tokens are quantized
when they leave the residual window, a complete group of ``G`` keys at a time.

With an online A² value policy (``ValuePolicyConfig(mode="online")``) values leave the residual
window only once the step's attention is known: run the model inside ``cache.attached(model)``,
whose attention asks each layer to settle the leaving tokens (``values.OnlineA2``) first.

Attention reads the effective keys ``k^_j + sign * U c^_j`` (``headq.correction_keys``): their
logits equal ``tau <q, k^_j> + sign * tau <U^T q, c^_j>`` exactly, so every attention backend of
the model applies the HeadQ correction. A prefill of several tokens attends in full precision
(as quantized caches do); every token decoded after it reads the cache as the decode rule says.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
from transformers.cache_utils import Cache, DynamicLayer

from headq_core.config import HeadQConfig, QuantConfig, RunSpec, ValuePolicyConfig
from headq_core.method.headq import (
    BasisSource,
    SideCode,
    correction_keys,
    decode_side,
    encode_side,
    make_basis,
)
from headq_core.method.quant import Packed, dequantize, quantize
from headq_core.method.schedule import quantized_count
from headq_core.method.values import OnlineA2
from headq_core.models.adapter import attention_handler
from headq_core.models.attention import AttentionCall, fused_attention
from headq_core.models.loading import ModelInfo
from headq_core.runtime.kernels import decode_attention
from headq_core.runtime.kernels.layout import decode_covers, from_packed


class _Side:
    """One side (keys or values) of one layer: packed head + full-precision tail [B, H, n, d]."""

    def __init__(self, cfg: QuantConfig | None) -> None:
        self.cfg = cfg
        self.packed: Packed | None = None
        self.side: SideCode | None = None
        self.tail: torch.Tensor | None = None

    @property
    def n_quant(self) -> int:
        return 0 if self.packed is None else self.packed.n_quant

    def append(self, x: torch.Tensor, basis: torch.Tensor | None, headq: HeadQConfig | None) -> None:
        """Add tokens x [B, H, s, d]; quantize those the decode rule now wants quantized."""
        self.tail = x if self.tail is None else torch.cat([self.tail, x], dim=-2)
        total = self.n_quant + self.tail.shape[-2]
        move = quantized_count(total, self.cfg) - self.n_quant
        if move <= 0:
            return
        leaving, self.tail = self.tail[..., :move, :], self.tail[..., move:, :]
        new = quantize(leaving.float(), self.cfg, n_quant=move)  # type: ignore[arg-type]
        if basis is not None and headq is not None:
            residual = leaving.float() - dequantize(new)
            side = encode_side(residual, basis.to(residual.device), headq.side_bits,
                               scale=headq.side_scale, group_size=self.cfg.group_size)  # type: ignore[union-attr]
            self.side = side if self.side is None else _cat_side(self.side, side)
        self.packed = new if self.packed is None else _cat_packed(self.packed, new)

    def read(self, basis: torch.Tensor | None, sign: int, like: torch.Tensor) -> torch.Tensor:
        """What attention reads: [B, H, n, d] in ``like``'s dtype and device (the dense path; decode
        steps on CUDA read :meth:`whole` with ``kernels.decode_attention`` instead)."""
        parts = []
        if self.packed is not None:
            head = dequantize(self.packed).float()
            if self.side is not None and basis is not None:
                head = head + correction_keys(basis.to(head.device), decode_side(self.side), sign)
            parts.append(head.to(like.device, like.dtype))
        if self.tail is not None:
            parts.append(self.tail)
        return torch.cat(parts, dim=-2)

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


class _PolicySide(_Side):
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

    def append(self, x: torch.Tensor, basis: torch.Tensor | None, headq: HeadQConfig | None) -> None:
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


def _cat_side(a: SideCode, b: SideCode) -> SideCode:
    scale = None if a.scale is None else torch.cat([a.scale, b.scale], -1)  # type: ignore[list-item]
    return replace(a, codes=torch.cat([a.codes, b.codes], -2), scale=scale)


class HeadQCacheLayer(DynamicLayer):
    """One layer: quantized keys (``key``), values (``value``), optional HeadQ side code with
    ``basis`` U [kv_heads, d, rank]. ``None`` keeps that side in full precision.

    Under ``attached``, a single-token step on CUDA whose layout the Triton decode kernel reads
    (per_channel keys and per_token values at 1/2/4/8 bits, token-scaled 4/8/16-bit side codes, no
    value policy) attends with ``kernels.decode_attention`` straight from the packed codes: ``update``
    then returns only the new token and :meth:`attend` runs the kernel. ``kernel`` (class default
    ``"auto"``) is ``"off"`` to always dequantize, or ``"triton"`` to take that path on any device
    (tests, with ``TRITON_INTERPRET=1`` on the CPU).
    """

    kernel = "auto"

    def __init__(
        self,
        key: QuantConfig | None,
        value: QuantConfig | None,
        headq: HeadQConfig | None = None,
        basis: torch.Tensor | None = None,
        value_policy: ValuePolicyConfig | None = None,
    ) -> None:
        super().__init__()
        if value_policy is not None and value is None:
            raise ValueError("value_policy: needs a value quantizer")
        if headq is not None and (basis is None or key is None):
            raise ValueError("headq: needs a key quantizer and a basis [kv_heads, d, rank]")
        if basis is not None and headq is not None and basis.shape[-1] != headq.rank:
            raise ValueError(f"basis: rank {basis.shape[-1]} != headq.rank {headq.rank}")
        self.headq, self.basis = headq, basis
        self.key_side = _Side(key)
        self.value_side = _Side(value) if value_policy is None else _PolicySide(value, value_policy)  # type: ignore[arg-type]
        self.attached = False
        self.kernel_step = False  # this step's attention reads the packed cache with the kernel

    def _kernel_reads(self, x: torch.Tensor) -> bool:
        """Whether the step of new keys x [B, H, s, d] can attend with the Triton decode kernel."""
        keys, values = self.key_side.cfg, self.value_side.cfg
        if (not self.attached or x.shape[-2] != 1 or self.kernel == "off" or keys is None or values is None
                or isinstance(self.value_side, _PolicySide) or not (x.is_cuda or self.kernel == "triton")):
            return False
        side = self.headq is None or (self.headq.side_scale == "token" and self.headq.side_bits in (4, 8, 16))
        return (keys.axis == "per_channel" and values.axis == "per_token" and side
                and decode_covers(x.shape[-1], keys.bits, keys.group_size, values.bits, values.group_size))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append [B, kv_heads, s, d] keys/values; return what attention reads ([B, kv_heads, n, d])."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if isinstance(self.value_side, _PolicySide) and not self.attached:
            raise ValueError(
                "value_policy: run the model inside `with cache.attached(model):` so the cache "
                "sees each step's attention"
            )
        before = self.get_seq_length()
        self.key_side.append(key_states, self.basis, self.headq)
        self.value_side.append(value_states, None, None)
        self.kernel_step = self._kernel_reads(key_states)
        if self.kernel_step:  # attend() reads the packed cache itself
            return key_states, value_states
        sign = self.headq.sign if self.headq is not None else 1
        keys = self.key_side.read(self.basis, sign, key_states)
        values = self.value_side.read(None, 1, value_states)
        if key_states.shape[-2] > 1:  # prefill attends in full precision
            keys = torch.cat([keys[..., :before, :], key_states], dim=-2)
            values = torch.cat([values[..., :before, :], value_states], dim=-2)
        return keys, values

    def attend(self, call: AttentionCall) -> torch.Tensor:
        """Attention of one step over this layer ([B, Hq, q, d]); under the A² policy the step's
        attention first settles which values leave the residual window, and at which precision."""
        if self.kernel_step:
            self.kernel_step = False
            return self._kernel_attention(call)
        if not isinstance(self.value_side, _PolicySide):
            return fused_attention(call)
        probs = torch.softmax(call.finish(call.raw_scores()), dim=-1)
        self.value_side.settle(probs)
        values = self.value_side.read(None, 1, call.value)
        q_len = call.query.shape[-2]
        if q_len > 1:  # prefill reads its own tokens in full precision
            values = torch.cat([values[..., :-q_len, :], call.value[..., -q_len:, :]], dim=-2)
        return call.read(probs, values.to(probs.dtype)).to(call.query.dtype)

    def _kernel_attention(self, call: AttentionCall) -> torch.Tensor:
        """This decode step's attention [B, Hq, 1, d] by ``kernels.decode_attention`` over the packed
        cache; dense over the dequantized cache when the step has a softcap, a mask that hides some
        tokens (padding, sliding window) or values that lag the keys."""
        keys, values = self.key_side, self.value_side
        sign = self.headq.sign if self.headq is not None else 1
        if (call.softcap is not None or (call.mask is not None and not bool(call.allowed().all()))
                or values.n_quant < keys.n_quant):
            k_all, v_all = keys.read(self.basis, sign, call.query), values.read(None, 1, call.query)
            return fused_attention(call, k_all, v_all)
        if keys.packed is None:  # nothing quantized yet (values may be: dequantize those)
            enc, k_res, v_res = None, keys.tail, values.read(None, 1, call.query)
        else:
            enc, k_res, v_res = from_packed(keys.whole(), values.whole(), keys.side)
        if self.basis is not None and self.basis.device != call.query.device:
            self.basis = self.basis.to(call.query.device)
        return decode_attention(call.query, enc, k_res, v_res.to(call.query.dtype), basis=self.basis,
                                scale=call.scaling, sign=sign,
                                backend="triton" if self.kernel == "triton" else "auto")

    def get_seq_length(self) -> int:
        side = self.key_side
        return side.n_quant + (0 if side.tail is None else side.tail.shape[-2])

    def nbytes(self) -> int:
        return self.key_side.nbytes() + self.value_side.nbytes()


class HeadQCache(Cache):
    """Quantized cache for all layers; ``basis`` [layers, kv_heads, d, >= rank] (e.g. a
    calibration's) is needed for HeadQ with the ``query_pca`` basis."""

    def __init__(
        self,
        num_layers: int,
        key: QuantConfig | None,
        value: QuantConfig | None = None,
        headq: HeadQConfig | None = None,
        basis: torch.Tensor | None = None,
        value_policy: ValuePolicyConfig | None = None,
    ) -> None:
        if headq is not None and basis is None:
            raise ValueError("basis: HeadQ needs the per-layer basis [layers, kv_heads, d, rank]")
        layers = [
            HeadQCacheLayer(
                key,
                value,
                headq,
                None if basis is None or headq is None else basis[i, ..., : headq.rank].float(),
                value_policy,
            )
            for i in range(num_layers)
        ]
        super().__init__(layers=list(layers))
        self.quant_layers = layers  # the same objects, typed

    @classmethod
    def from_run(cls, run: RunSpec, calibration: BasisSource | None, info: ModelInfo) -> HeadQCache:
        """The cache that decodes as the evaluator scores ``run``: the same configuration objects and
        the same basis rule (``headq.make_basis``), for the model ``info`` describes."""
        if run.intervention is not None:
            raise ValueError("intervention: a perturbation for analysis, not something a cache stores")
        basis = None
        if run.headq is not None:
            hq = run.headq
            if hq.basis == "key_pca":
                raise ValueError("headq.basis: key_pca needs every key before it encodes one; a cache "
                                 "encodes keys as they arrive: use query_pca or random")
            if hq.basis == "query_pca" and calibration is None:
                raise ValueError(f"calibration: run {run.name!r} needs a calibration (query basis)")
            basis = torch.stack([
                make_basis(hq, layer, kv_heads=info.kv_heads, head_dim=info.head_dim,
                           query_basis=calibration.layer_basis(layer, hq.rank) if calibration else None)
                for layer in range(info.layers)])
        return cls(info.layers, run.key, run.value, run.headq, basis, run.value_policy)

    def nbytes(self) -> int:
        """Bytes held by all layers (packed codes, scales, side codes, residual tails)."""
        return sum(layer.nbytes() for layer in self.quant_layers)

    @contextmanager
    def attached(self, model) -> Iterator[None]:
        """Route ``model``'s attention through this cache's layers (needed by the online A² value
        policy, which must see each step's attention); restores the model on exit."""
        for layer in self.quant_layers:
            layer.attached = True
        try:
            with attention_handler(model, lambda call: self.quant_layers[call.layer].attend(call)):
                yield
        finally:
            for layer in self.quant_layers:
                layer.attached = False
