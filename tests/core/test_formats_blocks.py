"""llama.cpp block formats against independent references: q8_0 / q4_0 / q4_1 / q5_0 / q5_1 byte for
byte against the ``gguf`` package's numpy quantizers (ggml's reference rules, fp16 scale rounding
included) and their dequantizers; iq4_nl against a plain-Python port of ggml's
``quantize_row_iq4_nl_impl`` written here from the published C, and gguf's iq4_nl dequantizer."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from headq_core.config import QuantConfig
from headq_core.method.budget import effective_bits
from headq_core.method.ggml_blocks import BLOCK_FORMATS
from headq_core.method.iq4_nl import Iq4NlFormat
from headq_core.method.quant import fake_quantize, quantize

F32 = np.float32
KVALUES = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]


def _rows(n=96, d=64, seed=0):
    """Random rows with varied scales, an all-zero block, a tie of magnitudes and a planted outlier."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen) * torch.rand(n, 1, generator=gen) * 6
    x[1, :32] = 0
    x[2, 3], x[2, 9] = 2.5, -2.5  # equal magnitudes: the first one sets the scale's sign
    x[2, 32:] = 0.01
    x[3, 40] = 50.0
    return x.float()


@pytest.mark.parametrize("name", ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"])
def test_block_bytes_and_values_match_ggml_reference(name):
    x = _rows()
    fmt = BLOCK_FORMATS[name]
    qtype = getattr(GGMLQuantizationType, name.upper())
    ref = quants.quantize(x.numpy(), qtype)  # uint8 [rows, blocks * type_size]
    blocks = fmt.encode(x.reshape(x.shape[0], -1, 32))
    mine = fmt.to_bytes(blocks).reshape(x.shape[0], -1).numpy()
    assert mine.shape == ref.shape
    assert np.array_equal(mine, ref)
    back = fmt.decode(blocks).reshape(x.shape).numpy()
    assert np.array_equal(back.view(np.uint32), quants.dequantize(ref, qtype).view(np.uint32))
    cfg = QuantConfig(format=name, bits=fmt.bits, axis="per_token")
    assert torch.equal(fake_quantize(x, cfg), torch.from_numpy(back))


def _best_index(x):
    """ggml's best_index_int8 (binary search; ties go up)."""
    if x <= KVALUES[0]:
        return 0
    if x >= KVALUES[15]:
        return 15
    ml, mu = 0, 15
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if x < KVALUES[mav]:
            mu = mav
        else:
            ml = mav
    return mu - 1 if x - F32(KVALUES[mu - 1]) < F32(KVALUES[mu]) - x else mu


def _sums(xb, w, inv):
    sumqx = sumq2 = F32(0)
    for j in range(32):
        q = F32(KVALUES[_best_index(F32(inv * xb[j]))])
        sumqx = F32(sumqx + F32(F32(w[j] * q) * xb[j]))
        sumq2 = F32(sumq2 + F32(F32(w[j] * q) * q))
    return sumqx, sumq2


def _iq4_nl_block(xb):
    """One block the way ggml's quantize_row_iq4_nl_impl (no imatrix, ntry 7) makes it: (d fp16, L)."""
    xb = [F32(v) for v in xb]
    w = [F32(v * v) for v in xb]
    amax, mx = F32(0), F32(0)
    for v in xb:
        if abs(v) > amax:
            amax, mx = abs(v), v
    if amax < F32(1e-15):
        d = F32(0)
    else:
        d0 = F32(-mx / F32(-127))
        sumqx, sumq2 = _sums(xb, w, F32(F32(1) / d0))
        d = F32(sumqx / sumq2)
        best = F32(d * sumqx)
        for itry in range(-7, 8):
            sumqx, sumq2 = _sums(xb, w, F32(F32(itry - 127) / mx))
            if sumq2 > 0 and F32(sumqx * sumqx) > F32(best * sumq2):
                d = F32(sumqx / sumq2)
                best = F32(d * sumqx)
    inv = F32(F32(1) / d) if d != 0 else F32(0)
    return np.float16(d), [_best_index(F32(inv * v)) for v in xb]


def test_iq4_nl_matches_a_direct_port_of_ggml():
    x = _rows(n=24)
    fmt = Iq4NlFormat()
    blocks = fmt.encode(x.reshape(24, 2, 32))
    for r in range(24):
        for b in range(2):
            d, codes = _iq4_nl_block(x[r, 32 * b : 32 * b + 32].tolist())
            assert blocks.d[r, b].numpy().view(np.uint16) == d.view(np.uint16), (r, b)
            assert blocks.q[r, b].tolist() == codes, (r, b)
    raw = fmt.to_bytes(blocks).reshape(24, -1).numpy()
    ref = quants.dequantize(raw, GGMLQuantizationType.IQ4_NL)
    back = fmt.decode(blocks).reshape(24, 64).numpy()
    assert np.array_equal(back.view(np.uint32), ref.view(np.uint32))
    assert np.abs(back - x.numpy()).mean() < 0.1 * np.abs(x.numpy()).mean()  # a sane 4-bit code


@pytest.mark.parametrize(("name", "bits"), [("q8_0", 8.5), ("q4_0", 4.5), ("q4_1", 5.0), ("q5_0", 5.5),
                                            ("q5_1", 6.0), ("iq4_nl", 4.5)])
def test_block_effective_bits(name, bits):
    cfg = QuantConfig(format=name, bits=4 if name in ("q4_0", "q4_1", "iq4_nl") else int(name[1]),
                      axis="per_token")
    type_size = {"q8_0": 34, "q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24, "iq4_nl": 18}[name]
    assert type_size * 8 / 32 == bits  # ggml's sizeof(block) over its 32 values
    for d in (32, 64, 128):
        assert effective_bits(cfg, d) == bits
    # with a 128-token fp16 residual window in a 1024-token sequence
    windowed = QuantConfig(format=name, bits=cfg.bits, axis="per_token", residual=128)
    assert effective_bits(windowed, 64, seq_len=1024) == pytest.approx((896 * bits + 128 * 16) / 1024)


def test_keys_and_values_independently_and_decode_rule_tail():
    x = _rows(n=40).reshape(1, 2, 20, 64)
    key = QuantConfig(format="q4_0", bits=4, axis="per_token", residual=5)
    value = QuantConfig(format="q8_0", bits=8, axis="per_token")
    k_hat, v_hat = fake_quantize(x, key), fake_quantize(x, value)
    assert torch.equal(k_hat[..., 15:, :], x[..., 15:, :])  # the 5 most recent tokens stay exact
    assert not torch.equal(k_hat[..., :15, :], x[..., :15, :])
    assert (v_hat - x).abs().max() < (k_hat[..., :15, :] - x[..., :15, :]).abs().max()
    assert fake_quantize(x.half(), key).dtype == torch.float16


def test_block_format_errors_name_the_field():
    cfg = QuantConfig(format="q4_0", bits=4, axis="per_token")
    with pytest.raises(ValueError, match="format: 'q4_0' needs a head_dim divisible by 32"):
        fake_quantize(torch.randn(3, 48), cfg)
    with pytest.raises(ValueError, match="format: 'q4_0' needs a head_dim divisible by 32"):
        effective_bits(cfg, 48)
    with pytest.raises(ValueError, match="x: values exceed the fp16 range"):
        fake_quantize(torch.full((2, 32), 1e6), cfg)
    with pytest.raises(ValueError, match="x: contains NaN"):
        fake_quantize(torch.full((2, 32), float("nan")), cfg)
    with pytest.raises(ValueError, match="format: packed codes hold the 'int' format"):
        quantize(torch.randn(2, 32), cfg)
