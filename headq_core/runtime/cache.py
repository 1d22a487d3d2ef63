"""A real quantized KV cache for ``model.generate`` on the public transformers Cache API.

:class:`HeadQCache` is a ``transformers.Cache`` of :class:`HeadQCacheLayer` (a ``DynamicLayer``
subclass overriding only public methods). Each layer keeps, per side (keys / values: a
``sides.Side``), packed codes with fp16 scales and zero-points (``quant.quantize``) for the tokens
the decode rule (``schedule.quantized_count``) has quantized, plus the full-precision residual
tail; with HeadQ also the side codes ``c_j = U^T (k_j - k^_j)`` (``headq.encode_side``). Tokens are quantized
when they leave the residual window, a complete group of ``G`` keys at a time.

With an online A² value policy (``ValuePolicyConfig(mode="online")``) values leave the residual
window only once the step's attention is known: run the model inside ``cache.attached(model)``,
whose attention asks each layer to settle the leaving tokens (``values.OnlineA2``) first. Pre-RoPE
keys (``QuantConfig.pre_rope``) need it too: a hook hands each layer the step's rotary cos / sin.

Attention reads the effective keys ``k^_j + sign * U c^_j`` (``headq.correction_keys``): their
logits equal ``tau <q, k^_j> + sign * tau <U^T q, c^_j>`` exactly, so every attention backend of
the model applies the HeadQ correction. A prefill of several tokens attends in full precision
(as quantized caches do); every token decoded after it reads the cache as the decode rule says.

Given the model's config (``layer_types``, ``sliding_window``), each layer knows its type, as in
transformers' ``DynamicCache(config=...)``: a sliding layer frees the quantization groups that lie
wholly before its window once no later query can see them, so it holds at most the window plus
what its groups need; the codes it keeps are the ones a full cache would hold (the evaluator's).
``sliding_layers="full_precision"`` keeps those layers unquantized (still bounded).

A decode step never makes the host wait for the device (docs/adr/0006): the checks of the tokens it
quantizes and of its mask set bits of the cache's ``step_flags.StepFlags``, which :meth:`HeadQCache.check`
reads; the cache also reads them at every prefill and, unless built with ``check_steps=False`` (for
CUDA graphs), once per decode step at its first layer, raising for what earlier steps recorded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, Protocol, cast

import torch
from transformers.cache_utils import Cache, DynamicLayer

from headq_core.config import HeadQConfig, QuantConfig, RunSpec, ValuePolicyConfig
from headq_core.method.headq import BasisSource, make_basis
from headq_core.method.pre_rope import Rope
from headq_core.models.adapter import attention_handler, check_pre_rope
from headq_core.models.attention import AttentionCall, fused_attention, rope_hooks
from headq_core.models.loading import ModelInfo
from headq_core.runtime.format_side import FormatSide
from headq_core.runtime.kernels import Backend, decode_attention
from headq_core.runtime.kernels.layout import decode_covers, from_packed
from headq_core.runtime.layer_types import check_windows, layer_type, layer_windows
from headq_core.runtime.sides import PolicySide, Side
from headq_core.runtime.step_flags import StepFlags


class StaticSource(Protocol):
    """What formats read from a calibration (``evaluation.calibrate.Calibration.layer_static``)."""

    def layer_static(self, layer: int, side: str, cfg: QuantConfig | None) -> dict[str, torch.Tensor]:
        """``fake_quantize``'s keyword arguments for ``side``'s format ``cfg`` in ``layer``."""
        ...


class CalibrationSource(BasisSource, StaticSource, Protocol):
    """A calibration's query basis, amax and codebooks (``evaluation.calibrate.Calibration``)."""


def make_side(cfg: QuantConfig | None, static: dict[str, torch.Tensor] | None = None) -> Side:
    """The side that stores ``cfg``: packed codes for the plain ``int`` format, else the
    dequantizing :class:`FormatSide` (engine formats, symmetric codes, rotations, outliers, pre-RoPE
    keys, ``nuq`` codes; ``static``: what it reads from the calibration, ``Calibration.layer_static``)."""
    return Side(cfg) if cfg is None or cfg.is_plain else FormatSide(cfg, static)


class HeadQCacheLayer(DynamicLayer):
    """One layer: quantized keys (``key``), values (``value``), optional HeadQ side code with
    ``basis`` U [kv_heads, d, rank]. ``None`` keeps that side in full precision. ``window``: the
    sliding window of a sliding layer (tokens a query sees, itself included), None for full attention.
    ``static``: what the keys' and the values' formats read from the layer's calibration
    (``Calibration.layer_static``: static fp8 amax, ``nuq`` codebooks).

    Under ``attached``, a single-token step on CUDA whose layout the Triton decode kernel reads
    (per_channel keys and per_token values at 1/2/4/8 bits, token-scaled 4/8/16-bit side codes, no
    value policy) attends with ``kernels.decode_attention`` straight from the packed codes: ``update``
    then returns only the new token and :meth:`attend` runs the kernel. ``kernel`` (class default
    ``"auto"``) is ``"off"`` to always dequantize, ``"triton"`` to take that path on any device
    (tests, with ``TRITON_INTERPRET=1`` on the CPU), or ``"reference"`` for the pure-torch kernel.

    Single-token updates record their checks in ``flags`` (shared by a cache's layers); with
    ``check_steps`` each such update first raises for what earlier ones recorded (one host sync;
    :class:`HeadQCache` asks it of its first layer only), every multi-token update does.
    """

    kernel = "auto"

    def __init__(
        self,
        key: QuantConfig | None,
        value: QuantConfig | None,
        headq: HeadQConfig | None = None,
        basis: torch.Tensor | None = None,
        value_policy: ValuePolicyConfig | None = None,
        window: int | None = None,
        flags: StepFlags | None = None,
        check_steps: bool = True,
        static: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] = ({}, {}),
    ) -> None:
        super().__init__()
        if value_policy is not None and value is None:
            raise ValueError("value_policy: needs a value quantizer")
        if headq is not None and (basis is None or key is None):
            raise ValueError("headq: needs a key quantizer and a basis [kv_heads, d, rank]")
        if basis is not None and headq is not None and basis.shape[-1] != headq.rank:
            raise ValueError(f"basis: rank {basis.shape[-1]} != headq.rank {headq.rank}")
        check_windows([window], 1)
        self.headq, self.basis = headq, basis
        if value_policy is not None and value is not None and not value.is_plain:
            raise ValueError("value_policy: the cache's A² policy needs the plain 'int' value format "
                             "(asymmetric, no rotation, no outliers)")
        self.key_side = make_side(key, static[0])
        self.value_side = (make_side(value, static[1]) if value_policy is None
                           else PolicySide(value, value_policy))  # type: ignore[arg-type]
        self.window, self.is_sliding = window, window is not None
        # tokens are freed a whole group of every quantized side at a time
        self.unit = math.lcm(*(1 if c is None else c.seq_group for c in (key, value)))
        self.flags, self.check_steps = StepFlags() if flags is None else flags, check_steps
        self.key_side.flags = self.value_side.flags = self.flags
        self.attached = False
        self.kernel_step = False  # this step's attention reads the packed cache with the kernel
        self.rope: Rope | None = None  # this step's cos / sin (pre-RoPE keys; set under ``attached``)

    @property
    def first(self) -> int:
        """Absolute position of the oldest token held (tokens before it were freed)."""
        return self.key_side.first

    def _kernel_reads(self, x: torch.Tensor) -> bool:
        """Whether the step of new keys x [B, H, s, d] can attend with the packed-cache decode kernel."""
        keys, values = self.key_side.cfg, self.value_side.cfg
        if (not self.attached or x.shape[-2] != 1 or self.kernel == "off" or keys is None or values is None
                or isinstance(self.value_side, PolicySide) or not (keys.is_plain and values.is_plain)
                or not (x.is_cuda or self.kernel in ("triton", "reference"))):
            return False
        side = self.headq is None or (self.headq.side_scale == "token" and self.headq.side_bits in (4, 8, 16))
        covered = self.kernel == "reference" or decode_covers(
            x.shape[-1], keys.bits, keys.group_size, values.bits, values.group_size)
        return keys.axis == "per_channel" and values.axis == "per_token" and side and covered

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append [B, kv_heads, s, d] keys/values; return what attention reads ([B, kv_heads, n, d],
        the tokens from :attr:`first` on)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.flags.on(key_states.device)  # made at the first update, never inside a captured step
        if self.check_steps or key_states.shape[-2] > 1:
            self.check()
        if self.basis is not None and self.basis.device != key_states.device:
            self.basis = self.basis.to(key_states.device)  # once: a copy each step would sync
        if isinstance(self.value_side, PolicySide) and not self.attached:
            raise ValueError(
                "value_policy: run the model inside `with cache.attached(model):` so the cache "
                "sees each step's attention"
            )
        held = self.get_seq_length() - self.first
        self.key_side.append(key_states, self.basis, self.headq, rope=self._step_rope())
        self.value_side.append(value_states, None, None)
        self.kernel_step = self._kernel_reads(key_states)
        if self.kernel_step:  # attend() reads the packed cache itself, then frees
            return key_states, value_states
        sign = self.headq.sign if self.headq is not None else 1
        keys = self.key_side.read(self.basis, sign, key_states)
        values = self.value_side.read(None, 1, value_states)
        if key_states.shape[-2] > 1:  # prefill attends in full precision
            keys = torch.cat([keys[..., :held, :], key_states], dim=-2)
            values = torch.cat([values[..., :held, :], value_states], dim=-2)
        if not isinstance(self.value_side, PolicySide):  # the A² policy settles in attend() first
            self._free()
        return keys, values

    def _step_rope(self) -> Rope | None:
        """The rotary cos / sin of this step's keys for pre-RoPE keys (None otherwise), taken once:
        the hook of :meth:`HeadQCache.attached` sets them before each step of this layer."""
        if self.key_side.cfg is None or not self.key_side.cfg.pre_rope:
            return None
        rope, self.rope = self.rope, None
        if rope is None:
            raise ValueError("key.pre_rope: the cache needs each step's rotary cos / sin: run the model "
                             "inside `with cache.attached(model):`")
        return rope

    def _free(self) -> None:
        """Free the whole groups no later query of a sliding layer can see (the next query, at
        position ``total``, sees from ``total - window + 1``). The online A² policy keeps all."""
        if self.window is None or isinstance(self.value_side, PolicySide):
            return
        sides = (self.key_side, self.value_side)
        total = self.key_side.total
        room = min(total if s.cfg is None else s.first + s.n_quant for s in sides)  # quantized ones only
        target = min(total - self.window + 1, room) // self.unit * self.unit
        if target > self.first:
            count = target - self.first
            for side in sides:
                side.drop(count)

    def get_mask_sizes(self, query_length: Any) -> tuple[int, int]:
        """(kv_length, kv_offset) of the mask of a step of ``query_length`` tokens (older
        transformers pass the step's ``cache_position`` tensor): the held tokens and the new ones,
        from absolute position :attr:`first`."""
        q = query_length if isinstance(query_length, int) else int(query_length.shape[0])
        return self.get_seq_length() - self.first + q, self.first

    def attend(self, call: AttentionCall) -> torch.Tensor:
        """Attention of one step over this layer ([B, Hq, q, d]); under the A² policy the step's
        attention first settles which values leave the residual window, and at which precision."""
        if self.kernel_step:
            self.kernel_step = False
            out = self._kernel_attention(call)
            self._free()
            return out
        if not isinstance(self.value_side, PolicySide):
            return fused_attention(call)
        probs = torch.softmax(call.finish(call.raw_scores()), dim=-1)
        self.value_side.settle(probs)
        values = self.value_side.read(None, 1, call.value)
        q_len = call.query.shape[-2]
        if q_len > 1:  # prefill reads its own tokens in full precision
            values = torch.cat([values[..., :-q_len, :], call.value[..., -q_len:, :]], dim=-2)
        return call.read(probs, values.to(probs.dtype)).to(call.query.dtype)

    def _start(self, call: AttentionCall) -> int | torch.Tensor:
        """First visible held token of this decode step: per batch row (int32 [B], on the device)
        from the mask (shared with the step's other layers that get the same mask); without one,
        from the sliding window (an int)."""
        if call.mask is not None:
            return self.flags.row_starts(call.mask, lambda: call.allowed()[..., -1, :], call.query.shape[0])
        return 0 if self.window is None else max(0, self.get_seq_length() - self.window - self.first)

    def _kernel_attention(self, call: AttentionCall) -> torch.Tensor:
        """This decode step's attention [B, Hq, 1, d] by ``kernels.decode_attention`` over the packed
        cache from each row's start (:meth:`_start`); dense over the dequantized cache when the values
        lag the keys."""
        keys, values = self.key_side, self.value_side
        sign = self.headq.sign if self.headq is not None else 1
        if values.n_quant < keys.n_quant:
            k_all, v_all = keys.read(self.basis, sign, call.query), values.read(None, 1, call.query)
            return fused_attention(call, k_all, v_all)
        if keys.packed is None:  # nothing quantized yet (values may be: dequantize those)
            enc, k_res, v_res = None, keys.tail, values.read(None, 1, call.query)
        else:
            enc, k_res, v_res = from_packed(keys.whole(), values.whole(), keys.side)
        return decode_attention(call.query, enc, k_res, v_res.to(call.query.dtype), basis=self.basis,
                                scale=call.scaling, sign=sign, backend=cast(Backend, self.kernel),
                                start=self._start(call), softcap=call.softcap)

    def check(self) -> None:
        """Raise ValueError for what the decode steps of this layer (of its cache) recorded, as the
        eager checks would have (one host sync per device)."""
        self.flags.check()

    def get_seq_length(self) -> int:
        """Tokens seen (freed ones included), as transformers' sliding layers count them."""
        return self.key_side.total

    def nbytes(self) -> int:
        return self.key_side.nbytes() + self.value_side.nbytes()


class HeadQCache(Cache):
    """Quantized cache for all layers; ``basis`` [layers, kv_heads, d, >= rank] (e.g. a
    calibration's) is needed for HeadQ with the ``query_pca`` basis, ``static`` (a calibration) for
    static fp8 scales and ``nuq`` codebooks. The model's ``config`` (or
    ``windows``, one per layer: the sliding window or None) tells which layers slide;
    ``sliding_layers`` quantizes those as the others or keeps them in full precision.
    ``check_steps=False``: decode steps never read the flags (no host sync, for CUDA graphs); only
    :meth:`check` and prefills raise for them."""

    def __init__(
        self,
        num_layers: int,
        key: QuantConfig | None,
        value: QuantConfig | None = None,
        headq: HeadQConfig | None = None,
        basis: torch.Tensor | None = None,
        value_policy: ValuePolicyConfig | None = None,
        *,
        config: Any = None,
        windows: Sequence[int | None] | None = None,
        sliding_layers: str = "quantize",
        check_steps: bool = True,
        static: StaticSource | None = None,
    ) -> None:
        if headq is not None and basis is None:
            raise ValueError("basis: HeadQ needs the per-layer basis [layers, kv_heads, d, rank]")
        if config is not None and windows is not None:
            raise ValueError("windows: give the model config or the windows, not both")
        if sliding_layers not in ("quantize", "full_precision"):
            raise ValueError(f"sliding_layers: must be 'quantize' or 'full_precision', "
                             f"got {sliding_layers!r}")
        found = layer_windows(config) if config is not None else windows
        self.windows = check_windows([None] * num_layers if found is None else found, num_layers)
        self.sliding_layers = sliding_layers
        self.flags, self.check_steps, self.static = StepFlags(), check_steps, static
        layers = [self._layer(i, key, value, headq, basis, value_policy) for i in range(num_layers)]
        super().__init__(layers=list(layers))
        self.quant_layers = layers  # the same objects, typed

    def _layer(self, i: int, key: QuantConfig | None, value: QuantConfig | None, headq: HeadQConfig | None,
               basis: torch.Tensor | None, value_policy: ValuePolicyConfig | None) -> HeadQCacheLayer:
        window = self.windows[i]
        checks = self.check_steps and i == 0
        if window is not None and self.sliding_layers == "full_precision":
            return HeadQCacheLayer(None, None, window=window, flags=self.flags, check_steps=checks)
        layer_basis = None if basis is None or headq is None else basis[i, ..., : headq.rank].float()
        return HeadQCacheLayer(key, value, headq, layer_basis, value_policy, window=window, flags=self.flags,
                               check_steps=checks,
                               static=(self._static(i, "key", key), self._static(i, "value", value)))

    def _static(self, layer: int, side: str, cfg: QuantConfig | None) -> dict[str, torch.Tensor]:
        """What ``side``'s format ``cfg`` reads from the calibration in ``layer`` (static fp8 amax,
        ``nuq`` codebook; ``Calibration.layer_static``), else nothing."""
        if cfg is None or cfg.calibrated is None:
            return {}
        if self.static is None:
            what = "static fp8 scales (fp8_static) need" if cfg.fp8_static else "codebook 'nuq' needs"
            raise ValueError(f"calibration: the {side} side's {what} a calibration")
        return self.static.layer_static(layer, side, cfg)

    @classmethod
    def from_run(cls, run: RunSpec, calibration: CalibrationSource | None, info: ModelInfo,
                 config: Any = None) -> HeadQCache:
        """The cache that decodes as the evaluator scores ``run``: the same configuration objects and
        the same basis rule (``headq.make_basis``), for the model ``info`` describes; with the
        model's ``config`` its sliding layers hold only their window (``run.sliding_layers``)."""
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
        return cls(info.layers, run.key, run.value, run.headq, basis, run.value_policy, config=config,
                   sliding_layers=run.sliding_layers or "quantize", static=calibration)

    def check(self) -> None:
        """Raise ValueError for what the decode steps recorded since the last check (module
        docstring): the message the eager check raises, naming the field."""
        self.flags.check()

    def nbytes(self) -> int:
        """Bytes held by all layers (packed codes, scales, side codes, residual tails)."""
        return sum(layer.nbytes() for layer in self.quant_layers)

    def nbytes_by_layer_type(self) -> dict[str, int]:
        """Bytes held per transformers layer type (``full_attention``, ``sliding_attention``)."""
        out: dict[str, int] = {}
        for layer in self.quant_layers:
            kind = layer_type(layer.window)
            out[kind] = out.get(kind, 0) + layer.nbytes()
        return out

    @contextmanager
    def attached(self, model) -> Iterator[None]:
        """Route ``model``'s attention through this cache's layers (needed by the online A² value
        policy, which must see each step's attention, and by pre-RoPE keys, whose layers get each
        step's rotary cos / sin from a hook: ``check_pre_rope`` refuses a model they cannot undo);
        restores the model on exit."""
        pre_rope = any(layer.key_side.cfg is not None and layer.key_side.cfg.pre_rope
                       for layer in self.quant_layers)
        if pre_rope:
            check_pre_rope(model)
        for layer in self.quant_layers:
            layer.attached = True
        try:
            with ExitStack() as stack:
                if pre_rope:
                    stack.enter_context(rope_hooks(model, self._see_rope))
                stack.enter_context(
                    attention_handler(model, lambda call: self.quant_layers[call.layer].attend(call)))
                yield
        finally:
            for layer in self.quant_layers:
                layer.attached = False

    def _see_rope(self, layer: int, rope: Rope) -> None:
        """Hand layer ``layer`` the cos / sin its attention module is about to apply."""
        self.quant_layers[layer].rope = rope
