"""A decode step of HeadQCache never makes the host wait for the device (issue 19, docs/adr/0006).

On the CPU nothing waits, so :class:`HostSyncs` watches the ops that read device data on the host
(``bool(t)``, ``t.item()``, ``int(t)``, ``nonzero``, boolean indexing, ...) while a tiny random
model decodes through the packed-cache path (``kernel="reference"``, the Triton kernel's math in
torch). The checks those steps used to run on the host (non-finite keys or values, fp16 range, the
mask) are recorded on the device and raise at the next step's first layer or at ``check()``.
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import headq_core.runtime.cache as cache_module
from headq_core.config import SIDE_BITS, SUPPORTED_BITS, HeadQConfig, QuantConfig
from headq_core.method.headq import encode_side, random_basis
from headq_core.method.quant import quantize
from headq_core.models.attention import AttentionCall, config_geometry
from headq_core.models.calls import cache_kwargs
from headq_core.runtime.cache import HeadQCache, HeadQCacheLayer
from tests.models.tiny import build

aten = torch.ops.aten
# ops that copy device data to the host: a tensor's value as a Python number (bool(t), t.item(),
# int(t), float(t), `if t.all()`), and ops whose output size depends on the data
SYNC_OPS = {aten._local_scalar_dense.default, aten.item.default, aten.is_nonzero.default,
            aten.nonzero.default, aten.masked_select.default, aten.equal.default, aten.allclose.default,
            aten._unique2.default, aten.unique_consecutive.default, aten.unique_dim.default}
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}  # sync with a bool index

K2 = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=2)
V2 = QuantConfig(bits=2, axis="per_token", group_size=4, residual=2)
HQ = HeadQConfig(rank=4, side_bits=4)


class HostSyncs(TorchDispatchMode):
    """Records every op that would make the host wait for the device; with ``fail`` raises instead."""

    def __init__(self, fail: bool = True) -> None:
        super().__init__()
        self.fail = fail
        self.seen: list[object] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        masked = func in INDEXING and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                                          for i in args[1])
        counted = func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None
        if func in SYNC_OPS or masked or counted:
            if self.fail:
                raise AssertionError(f"host sync in a decode step: {func}")
            self.seen.append(func)
        return func(*args, **kwargs)


@pytest.mark.parametrize("op", [
    lambda t: bool(t.sum()), lambda t: t.max().item(), lambda t: int(t[0]), lambda t: t[t > 0],
    lambda t: t.nonzero(), lambda t: torch.equal(t, t), lambda t: bool(torch.isfinite(t).all()),
    lambda t: t.masked_fill(t > 0, 0).unique(), lambda t: t.repeat_interleave(torch.tensor([1, 2, 1])),
])
def test_the_guard_catches_host_syncs(op):
    """The guard this file relies on sees each way a tensor's value reaches the host; pure tensor
    ops pass."""
    t = torch.tensor([1.0, -2.0, 3.0])
    with pytest.raises(AssertionError, match="host sync"), HostSyncs():
        op(t)
    with HostSyncs():
        torch.where(t > 0, t, 0.0).cumsum(0).repeat_interleave(2)


def _cache(model, kernel: str, headq: HeadQConfig | None = None, key: QuantConfig = K2,
           **kwargs) -> HeadQCache:
    layers, _, kv_heads, d = config_geometry(model.config)
    basis = None
    if headq is not None:
        basis = torch.stack([random_basis(kv_heads, d, headq.rank, seed=i) for i in range(layers)])
    cache = HeadQCache(layers, key, V2, headq, basis, **kwargs)
    for layer in cache.quant_layers:
        layer.kernel = kernel
    return cache


def _decode(model, cache, ids, pad, steps, guard=None):
    """Logits [B, vocab] of each of the last ``steps`` tokens of ids [B, n], decoded one per forward
    after a prefill of the rest; row i is left-padded by ``pad[i]`` tokens; ``guard`` watches each
    decode step."""
    n = ids.shape[1]
    mask = (torch.arange(n) >= torch.tensor(pad)[:, None]).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    prompt, out = n - steps, []
    with torch.no_grad(), cache.attached(model):
        model(ids[:, :prompt], attention_mask=mask[:, :prompt], position_ids=positions[:, :prompt],
              use_cache=True, **cache_kwargs(model, cache))
        for t in range(prompt, n):
            with guard or nullcontext():
                step = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1],
                             position_ids=positions[:, t : t + 1], **cache_kwargs(model, cache))
            out.append(step.logits[:, -1])
    return out


CASES = {  # family and config overrides, HeadQ, left padding per row
    "llama": ({}, None, [0]),
    "llama+headq, left-padded": ({}, HQ, [0, 3]),
    "sliding+headq, left-padded": ({"sliding_window": 5}, HeadQConfig(rank=4, side_bits=8), [4, 0]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_decode_steps_never_wait_for_the_device(case, monkeypatch):
    """With ``check_steps=False`` a decode step (packed-cache kernel path, quantizing tokens that
    leave the residual window, side codes, freeing a sliding window, per-row starts of a padded
    batch) runs no op that syncs, and its logits are the dense path's; with ``check_steps`` one sync
    per step (the check at the first layer), and the packed path is really taken."""
    overrides, headq, pad = CASES[case]
    model = build("mistral" if overrides else "llama", **overrides)
    ids = torch.randint(3, 90, (len(pad), 22), generator=torch.Generator().manual_seed(1))
    windows = [5, 5] if overrides else None
    packed = _cache(model, "reference", headq, windows=windows, check_steps=False)
    calls: list[torch.Tensor] = []
    kernel = cache_module.decode_attention
    monkeypatch.setattr(cache_module, "decode_attention",
                        lambda *a, **k: calls.append(k["start"]) or kernel(*a, **k))
    got = _decode(model, packed, ids, pad, 12, HostSyncs())
    assert len(calls) == 12 * 2 and all(start.shape == (len(pad),) for start in calls)
    monkeypatch.undo()
    dense = _decode(model, _cache(model, "off", headq, windows=windows), ids, pad, 12)
    for a, b in zip(got, dense, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    layer = packed.quant_layers[0]
    assert layer.key_side.n_quant > 0 and (layer.key_side.side is not None) == (headq is not None)
    assert (layer.first > 0) == (windows is not None)
    counted = HostSyncs(fail=False)
    checked = _cache(model, "reference", headq, windows=windows)
    assert torch.equal(torch.stack(_decode(model, checked, ids, pad, 12, counted)), torch.stack(got))
    assert counted.seen == [aten._local_scalar_dense.default] * 12


def _nan_keys(model, armed: list[bool]):
    """A hook making layer 0's keys NaN while ``armed[0]``."""
    proj = model.model.layers[0].self_attn.k_proj
    return proj.register_forward_hook(lambda _m, _i, out: out * float("nan") if armed[0] else out)


@pytest.mark.parametrize("check_steps", [True, False])
def test_nan_keys_of_a_decode_step_raise_at_the_next_step_or_at_check(check_steps):
    """Keys with residual 0 in groups of 4: the 12th token completes a group, so the step that
    brings NaN keys quantizes them. With ``check_steps`` the next step raises the eager message;
    without, decoding goes on until ``cache.check()`` raises (once). A prefill raises at once."""
    model = build("llama")
    key = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=0)
    ids = torch.randint(3, 90, (1, 16), generator=torch.Generator().manual_seed(2))
    cache = _cache(model, "reference", HQ, key=key, check_steps=check_steps)
    armed = [False]
    hook = _nan_keys(model, armed)
    try:
        with torch.no_grad(), cache.attached(model):
            model(ids[:, :11], use_cache=True, **cache_kwargs(model, cache))
            armed[0] = True
            model(ids[:, 11:12], use_cache=True, **cache_kwargs(model, cache))  # recorded, not raised
            armed[0] = False
            later = model(ids[:, 12:13], use_cache=True, **cache_kwargs(model, cache))
            if check_steps:
                pytest.fail("the step after the NaN keys did not raise")
    except ValueError as err:
        assert check_steps and str(err) == "x: contains NaN or inf"
    else:
        assert torch.isnan(later.logits).all()
        with pytest.raises(ValueError, match=r"^x: contains NaN or inf$"):
            cache.check()
        cache.check()  # reported once
    armed[0] = True
    fresh = _cache(model, "reference", HQ, key=key, check_steps=check_steps)
    with pytest.raises(ValueError, match=r"^x: contains NaN or inf$"), torch.no_grad():
        model(ids[:, :11], use_cache=True, **cache_kwargs(model, fresh))
    hook.remove()


def _layer(**kwargs) -> HeadQCacheLayer:
    key = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=0)
    value = QuantConfig(bits=2, axis="per_token", group_size=8, residual=0)
    layer = HeadQCacheLayer(key, value, **kwargs)
    layer.kernel, layer.attached = "reference", True
    return layer


def test_scales_beyond_fp16_in_a_decode_step_raise_at_the_next_update():
    """A standalone layer checks its own flags at each update (``check_steps`` by default)."""
    gen = torch.Generator().manual_seed(3)
    layer = _layer()
    layer.update(*torch.randn(2, 1, 2, 3, 8, generator=gen))
    huge = torch.randn(1, 2, 1, 8, generator=gen) * 1e6
    layer.update(huge, huge)  # completes the first key group: quantized, recorded
    with pytest.raises(ValueError, match=r"^x: values exceed the fp16 range of the scale / zero-point$"):
        layer.update(huge, huge)


def _masked_step(layer: HeadQCacheLayer, allowed: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One decode step of ``layer`` with the mask ``allowed`` bool [B, 1 or Hq, 1, n] (its keys and
    values first)."""
    k1, v1 = torch.randn(2, allowed.shape[0], 2, 1, 8, generator=gen)
    keys, values = layer.update(k1, v1)
    mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
    q = torch.randn(allowed.shape[0], 4, 1, 8, generator=gen)
    return layer.attend(AttentionCall(layer=0, query=q, key=keys, value=values, mask=mask, scaling=0.3))


def test_per_row_mask_starts_read_as_the_dense_path_and_other_masks_are_flagged():
    """Rows hiding different leading prefixes (left padding, a window) attend as the dense path,
    without a sync; a mask that hides a token inside the row, or differs across heads, is recorded
    and raised by ``check()`` (or by the next update, with ``check_steps``)."""
    gen = torch.Generator().manual_seed(4)
    layers = {mode: _layer(check_steps=False) for mode in ("reference", "off")}
    k, v = torch.randn(2, 2, 2, 13, 8, generator=gen)
    for mode, layer in layers.items():
        layer.kernel = mode
        layer.update(k, v)
    allowed = torch.arange(14) >= torch.tensor([0, 5])[:, None, None, None]  # [2, 1, 1, 14]
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    with HostSyncs():
        got = _masked_step(layers["reference"], allowed, torch.Generator().manual_seed(seed))
    want = _masked_step(layers["off"], allowed, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    layers["reference"].check()
    hole = torch.ones(2, 1, 1, 15, dtype=torch.bool)
    hole[1, ..., 3] = False
    by_head = torch.ones(2, 4, 1, 16, dtype=torch.bool)
    by_head[0, 1, :, :2] = False
    for allowed in (hole, by_head):
        _masked_step(layers["reference"], allowed, gen)
        with pytest.raises(ValueError, match=r"^mask: a decode step's mask must hide a leading prefix"):
            layers["reference"].check()
    checked = _layer()
    checked.update(k, v)
    _masked_step(checked, hole[..., :14], gen)
    with pytest.raises(ValueError, match=r"^mask:"):
        checked.update(k[..., :1, :], v[..., :1, :])


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_the_recording_path_quantizes_and_packs_the_same_bytes(bits):
    """``quantize`` with ``flags`` (no range check on the host while packing) gives the eager path's
    codes without a sync; clean data leaves the flags zero."""
    x = torch.randn(2, 3, 16, 8, generator=torch.Generator().manual_seed(bits)) * 4
    flags = torch.zeros((), dtype=torch.int32)
    for axis in ("per_channel", "per_token"):
        cfg = QuantConfig(bits=bits, axis=axis, group_size=4)
        with HostSyncs():
            got = quantize(x, cfg, n_quant=12, flags=flags)
        want = quantize(x, cfg, n_quant=12)
        for name in ("codes", "scale", "zero", "tail"):
            assert torch.equal(getattr(got, name), getattr(want, name)), (axis, name)
    assert int(flags) == 0


@pytest.mark.parametrize(("scale", "side_bits"),
                         [("token", b) for b in SIDE_BITS] + [("group", 2), ("group", 4)])
def test_the_recording_path_encodes_the_same_side_codes(scale, side_bits):
    gen = torch.Generator().manual_seed(side_bits)
    residual = torch.randn(2, 3, 16, 8, generator=gen)
    basis = random_basis(3, 8, 5, seed=side_bits)
    flags = torch.zeros((), dtype=torch.int32)
    with HostSyncs():
        got = encode_side(residual, basis, side_bits, scale=scale, group_size=4, flags=flags)
    want = encode_side(residual, basis, side_bits, scale=scale, group_size=4)
    assert torch.equal(got.codes, want.codes) and int(flags) == 0
    assert (got.scale is None and want.scale is None) or torch.equal(got.scale, want.scale)


def test_bad_data_sets_flag_bits_instead_of_raising():
    """Each check its own bit (``runtime.step_flags.FLAGS``), the eager message when raised."""
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    basis = random_basis(2, 8, 3)
    flags = torch.zeros((), dtype=torch.int32)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("inf")
    quantize(bad, QuantConfig(bits=2, group_size=4), n_quant=8, flags=flags)
    assert int(flags) == 1 | 2  # non-finite x, and so beyond fp16
    encode_side(bad, basis, 8, flags=flags)
    encode_side(x * 1e6, basis, 2, scale="group", group_size=4, flags=flags)
    assert int(flags) == 1 | 2 | 4 | 8  # non-finite residual, side code beyond fp16
    with pytest.raises(ValueError, match=r"^residual: side code exceeds the fp16 range of the step"):
        encode_side(x * 1e6, basis, 2, scale="group", group_size=4)


def test_without_a_mask_a_sliding_layer_reads_from_its_window():
    """No mask (``call.mask`` None): the start is the sliding window's, a host int, and the step
    attends as with the window's mask."""
    gen = torch.Generator().manual_seed(6)
    layers = [_layer(window=10, check_steps=False) for _ in range(2)]
    k, v = torch.randn(2, 1, 2, 20, 8, generator=gen)
    for layer in layers:
        layer.update(k, v)
    for _ in range(6):
        n, first = layers[0].get_mask_sizes(1)
        window = torch.arange(n) + first > first + n - 1 - 10
        seed = int(torch.randint(0, 2**31, (1,), generator=gen))
        with HostSyncs():
            masked = _masked_step(layers[0], window[None, None, None], torch.Generator().manual_seed(seed))
        same = torch.Generator().manual_seed(seed)  # the keys, values and query of _masked_step
        keys, values = layers[1].update(*torch.randn(2, 1, 2, 1, 8, generator=same))
        q = torch.randn(1, 4, 1, 8, generator=same)
        call = AttentionCall(layer=0, query=q, key=keys, value=values, mask=None, scaling=0.3)
        torch.testing.assert_close(layers[1].attend(call), masked, rtol=0, atol=0)
    assert layers[1].first > 0


class OpCount(TorchDispatchMode):
    """Counts the calls of one aten op."""

    def __init__(self, op) -> None:
        super().__init__()
        self.op, self.count = op, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is self.op
        return func(*args, **(kwargs or {}))


def test_the_layers_of_a_step_read_their_shared_mask_once():
    """Both layers of a Llama get the same decode mask, so its per-row starts are computed once per
    step (one ``cumprod``), not once per layer."""
    model = build("llama")
    ids = torch.randint(3, 90, (2, 14), generator=torch.Generator().manual_seed(2))
    cache = _cache(model, "reference", HQ, check_steps=False)
    counter = OpCount(aten.cumprod.default)
    _decode(model, cache, ids, [0, 2], 4, counter)
    assert model.config.num_hidden_layers == 2 and counter.count == 4
