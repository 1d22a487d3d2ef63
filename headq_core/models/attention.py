"""The attention call as transformers hands it to a registered implementation.

It registers an attention implementation named ``headq`` through the public transformers 5
``AttentionInterface`` (with the eager additive mask through ``AttentionMaskInterface``); while
active, every attention call is handed to a *handler* as an :class:`AttentionCall` holding the
post-RoPE query ``[batch, q_heads, q_len, d]``, key / value ``[batch, kv_heads, kv_len, d]``, the
model's own logit scale (``module.scaling``), additive mask (causal, padding, sliding window), the
layer's sliding window and logit softcap. The handler returns the attention output
``[batch, q_heads, q_len, d]``. Routed with ``rope=True``, a forward pre-hook on each attention
module also hands the handler the rotary ``(cos, sin)`` that module received (:func:`rope_hooks`),
for pre-RoPE key formats.

Under :func:`structural_masks` (the teacher-forced evaluator, whose windows are never padded) a
plain causal or sliding-window mask is not built: transformers' ``[batch, 1, L, L]`` float mask would
be 4 GiB at 32k tokens and 64 GiB at 128k. The call then has ``mask=None`` and its masks are rebuilt
from causality and ``sliding_window`` where needed (:meth:`AttentionCall.row_mask`); the tests check
that they equal transformers' masks on every verified family.

No architecture check here: :mod:`headq_core.models.adapter` checks a model before routing it.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

import torch

from headq_core.method.pre_rope import Rope

IMPLEMENTATION = "headq"
_state = threading.local()


@dataclass
class AttentionCall:
    """One attention call of one layer (shapes in the module docstring)."""

    layer: int
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None  # additive, [batch, 1, q_len, kv_len]; None: causal (+ sliding window)
    scaling: float
    softcap: float | None = None
    sliding_window: int | None = None  # a sliding layer reads the last ``sliding_window`` keys
    rope: Rope | None = None  # (cos, sin) [batch, q_len, rotary_dim] the module got (routed with rope)

    @property
    def groups(self) -> int:
        """Query heads per KV head."""
        return self.query.shape[1] // self.key.shape[1]

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, kv_heads, n, d] -> [batch, q_heads, n, d] (transformers ``repeat_kv`` order)."""
        return x.repeat_interleave(self.groups, dim=1)

    @property
    def work_dtype(self) -> torch.dtype:
        """float32, or float64 for a float64 model."""
        return torch.promote_types(self.query.dtype, torch.float32)

    def raw_scores(self, key: torch.Tensor | None = None) -> torch.Tensor:
        """``scaling * <q_t, k_j>`` in ``work_dtype``: [batch, q_heads, q_len, kv_len]. The query heads
        of a KV head share one matmul against it (no repeated keys); the scale goes on the queries."""
        k = self.key if key is None else key
        dt = self.work_dtype
        b, hq, t, d = self.query.shape
        hkv = k.shape[1]
        q = (self.query.to(dt) * self.scaling).reshape(b, hkv, (hq // hkv) * t, d)
        return (q @ k.to(dt).transpose(-1, -2)).view(b, hq, t, k.shape[-2])

    def read(self, probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``probs`` [batch, q_heads, q_len, n] times ``value`` [batch, kv_heads, n, d] ->
        [batch, q_heads, q_len, d]: one matmul per KV head for all its query heads."""
        b, hq, t, n = probs.shape
        hkv = value.shape[1]
        return (probs.reshape(b, hkv, (hq // hkv) * t, n) @ value).view(b, hq, t, value.shape[-1])

    def cap(self, raw: torch.Tensor) -> torch.Tensor:
        """Apply the model's logit softcap, if any."""
        if self.softcap is None:
            return raw
        return torch.tanh(raw / self.softcap) * self.softcap

    def finish(self, raw: torch.Tensor) -> torch.Tensor:
        """Apply the model's softcap and mask to raw logits (quantization never touches these)."""
        raw = self.cap(raw)
        if self.mask is not None:
            return raw + self.mask.to(raw.dtype)
        if raw.shape[-2] == 1 and self.sliding_window is None:
            return raw  # one query reads every key
        return raw.masked_fill(~self.allowed(), torch.finfo(raw.dtype).min)

    def row_mask(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The mask of the query rows (every row, or the positions ``rows`` int64 [R]): transformers'
        additive mask [batch, 1, R, kv_len], or, without one, bool [1, 1, R, kv_len] of the keys a
        query reads (causal, within the sliding window). Queries sit at the end of the keys."""
        q_len, kv_len = self.query.shape[-2], self.key.shape[-2]
        if self.mask is not None:
            return self.mask if rows is None else self.mask[:, :, rows.to(self.mask.device)]
        device = self.query.device
        t = torch.arange(q_len, device=device) if rows is None else rows.to(device)
        t = (t + kv_len - q_len).unsqueeze(1)
        j = torch.arange(kv_len, device=device).unsqueeze(0)
        ok = j <= t
        if self.sliding_window is not None:
            ok &= j > t - self.sliding_window
        return ok[None, None]

    def allowed(self) -> torch.Tensor:
        """bool [batch, 1 or q_heads, q_len, kv_len]: True where a query may read a key."""
        mask = self.row_mask()
        return mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2


def dense_attention(
    call: AttentionCall, logits: torch.Tensor | None = None, value: torch.Tensor | None = None
) -> torch.Tensor:
    """Softmax attention in ``call.work_dtype`` -> [batch, q_heads, q_len, d] in the query's dtype."""
    logits = call.finish(call.raw_scores()) if logits is None else logits
    probs = torch.softmax(logits, dim=-1)
    v = call.value if value is None else value
    return (probs @ call.expand(v.to(probs.dtype))).to(call.query.dtype)


def fused_attention(call: AttentionCall, key: torch.Tensor | None = None,
                    value: torch.Tensor | None = None) -> torch.Tensor:
    """The same attention as :func:`dense_attention` through torch's fused
    ``scaled_dot_product_attention`` in the model's dtype (no ``[q_len, kv_len]`` float32 logits in
    memory), for callers that need no logits: [batch, q_heads, q_len, d]. A softcap needs the logits:
    then :func:`dense_attention`."""
    k = call.key if key is None else key
    v = call.value if value is None else value
    if call.softcap is not None:
        return dense_attention(replace(call, key=k), value=v)
    q = call.query
    mask = call.mask
    if mask is None and (q.shape[-2] > 1 or call.sliding_window is not None):
        mask = replace(call, key=k).allowed()  # causal (+ sliding window), bool
    elif mask is not None:
        mask = mask.to(q.device, q.dtype)  # additive
    return torch.nn.functional.scaled_dot_product_attention(
        q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, scale=call.scaling, enable_gqa=call.groups > 1)


Handler = Callable[[AttentionCall], torch.Tensor]


def _headq_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs
):
    """The registered attention function: dispatch to the active handler (dense if none)."""
    handler: Handler | None = getattr(_state, "handler", None)
    call = AttentionCall(
        layer=int(module.layer_idx),
        query=query,
        key=key,
        value=value,
        mask=attention_mask,
        scaling=float(scaling if scaling is not None else query.shape[-1] ** -0.5),
        softcap=softcap,
        sliding_window=kwargs.get("sliding_window"),
        rope=getattr(_state, "ropes", {}).get(int(module.layer_idx)),
    )
    out = handler(call) if handler is not None else dense_attention(call)
    return out.transpose(1, 2).contiguous(), None


def _eager_mask(*args, dtype: torch.dtype = torch.float32, **kwargs) -> torch.Tensor | None:
    """transformers' eager mask: its boolean sdpa mask [batch, 1, q_len, kv_len] as 0 / ``dtype``'s
    minimum, without the blocking host-to-device copy of the 0 that transformers 5.17 makes (a
    decode step must not make the host wait for the GPU, docs/adr/0006). None under
    :func:`structural_masks` for a plain causal or sliding-window mask of an unpadded window."""
    from transformers.masking_utils import sdpa_mask

    if getattr(_state, "structural", False) and _plain_window(kwargs):
        return None
    kwargs["allow_is_causal_skip"] = False
    mask = sdpa_mask(*args, **kwargs)
    if mask is None:  # a skippable bidirectional mask
        return None
    return torch.where(mask, torch.zeros((), device=mask.device, dtype=dtype), torch.finfo(dtype).min)


def _plain_window(kwargs: dict) -> bool:
    """Whether transformers asks for a causal (or sliding-window) mask of a whole unpadded window:
    no padding, no cache offset, nothing that made it forbid skipping the mask (bidirectional
    blocks, packed sequences)."""
    padding = kwargs.get("attention_mask")
    return (kwargs.get("allow_is_causal_skip", False) and kwargs.get("q_offset", 0) == 0
            and kwargs.get("kv_offset", 0) == 0 and kwargs.get("q_length") == kwargs.get("kv_length")
            and (padding is None or bool(padding.all())))


@contextmanager
def structural_masks() -> Iterator[None]:
    """While active, plain causal and sliding-window masks reach the handler as ``mask=None`` (module
    docstring); only for handlers that rebuild them (:meth:`AttentionCall.row_mask`)."""
    previous = getattr(_state, "structural", False)
    _state.structural = True
    try:
        yield
    finally:
        _state.structural = previous


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(IMPLEMENTATION, _headq_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, _eager_mask)


def attention_modules(model) -> dict[int, torch.nn.Module]:
    """layer index -> self-attention module (the ones carrying ``layer_idx`` and ``scaling``)."""
    found = {}
    for module in model.modules():
        if (
            hasattr(module, "layer_idx")
            and hasattr(module, "scaling")
            and type(module).__name__.endswith("Attention")
            and not getattr(module, "is_cross_attention", False)
        ):
            found[int(module.layer_idx)] = module
    return dict(sorted(found.items()))


def config_geometry(config) -> tuple[int, int, int, int]:
    """(layers, q_heads, kv_heads, head_dim) as a transformers config states them."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, heads, kv_heads, head_dim


@contextmanager
def implementation(model, name: str) -> Iterator[None]:
    """Run ``model`` with the attention implementation ``name`` (e.g. ``"eager"``); always restores."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def module_rope(module: torch.nn.Module, args: tuple, kwargs: dict) -> Rope:
    """The ``position_embeddings`` (cos, sin) [batch, seq, rotary_dim] an attention module's forward
    receives, from its call's ``args`` / ``kwargs``; the identity (ones, zeros) for a layer that
    applies none (a falsy ``use_rope``: SmolLM3's NoPE layers)."""
    rope = kwargs.get("position_embeddings")
    if rope is None:
        bound = inspect.signature(module.forward).bind_partial(*args, **kwargs)
        rope = bound.arguments.get("position_embeddings")
    if rope is None:
        raise ValueError(f"key.pre_rope: {type(module).__name__} received no position_embeddings")
    cos, sin = rope
    if not getattr(module, "use_rope", True):  # SmolLM3 stores 0 / 1
        return torch.ones_like(cos), torch.zeros_like(sin)
    return cos, sin


@contextmanager
def rope_hooks(model, on_rope: Callable[[int, Rope], None]) -> Iterator[None]:
    """Call ``on_rope(layer, (cos, sin))`` (:func:`module_rope`) before each attention module of
    ``model`` runs; the hooks are removed on exit."""
    handles = []
    for layer, module in attention_modules(model).items():
        def hook(mod: torch.nn.Module, args: tuple, kwargs: dict, layer: int = layer) -> None:
            on_rope(layer, module_rope(mod, args, kwargs))

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def routed(model, handler: Handler, rope: bool = False) -> Iterator[None]:
    """:func:`attention_handler` without the architecture check (what the probe runs); with
    ``rope`` each call also carries its module's rotary cos / sin (``AttentionCall.rope``)."""
    _register()
    previous_handler, previous_ropes = getattr(_state, "handler", None), getattr(_state, "ropes", {})
    _state.handler = handler
    _state.ropes = {} if rope else previous_ropes  # an inner routing keeps the outer one's cos / sin
    try:
        with ExitStack() as stack:
            if rope:
                stack.enter_context(rope_hooks(model, _state.ropes.__setitem__))
            stack.enter_context(implementation(model, IMPLEMENTATION))
            yield
    finally:
        _state.handler, _state.ropes = previous_handler, previous_ropes
