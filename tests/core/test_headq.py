"""HeadQ: the query accumulator, the three bases, side-code storage and the logit correction."""

import pytest
import torch

from headq_core.config import HeadQConfig, QuantConfig
from headq_core.evaluation.metrics import layer_metrics
from headq_core.method.headq import (
    QueryStats,
    correction_keys,
    decode_side,
    encode_side,
    key_pca_basis,
    logit_correction,
    make_basis,
    query_pca_basis,
    random_basis,
)
from headq_core.method.quant import fake_quantize
from headq_core.method.schedule import decode_mask


def anisotropic_queries(gen, b, hq, t, d, decay=0.6):
    """Queries whose energy sits in a few fixed random directions, as in real models."""
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=gen))
    scales = decay ** torch.arange(d, dtype=torch.float32) * 4
    return (torch.randn(b, hq, t, d, generator=gen) * scales) @ rot.T


def test_query_stats_matches_direct_second_moment():
    gen = torch.Generator().manual_seed(0)
    stats = QueryStats(n_layers=2, kv_heads=2, head_dim=4)
    chunks, masks = [], []
    for _ in range(3):
        q = torch.randn(2, 6, 5, 4, generator=gen)
        mask = torch.rand(2, 5, generator=gen) > 0.3
        stats.update(1, q, mask)
        stats.update(0, q)
        chunks.append(q)
        masks.append(mask)
    c = stats.second_moment()
    for layer in (0, 1):
        for h in range(2):
            rows = []
            for q, mask in zip(chunks, masks, strict=True):
                for b in range(2):
                    for t in range(5):
                        if layer == 0 or mask[b, t]:
                            for i in range(h * 3, h * 3 + 3):
                                rows.append(q[b, i, t].double())
            x = torch.stack(rows)
            torch.testing.assert_close(c[layer, h], x.T @ x / len(rows))
    vals, vecs = stats.spectrum()
    assert (vals[..., :-1] >= vals[..., 1:]).all()
    torch.testing.assert_close(vecs @ torch.diag_embed(vals) @ vecs.transpose(-1, -2), c)


def test_query_stats_bad_input():
    stats = QueryStats(1, 2, 4)
    with pytest.raises(ValueError, match="layer"):
        stats.update(1, torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match="kv_heads"):
        stats.update(0, torch.zeros(1, 3, 3, 4))
    with pytest.raises(ValueError, match="q"):
        stats.update(0, torch.full((1, 2, 3, 4), float("nan")))
    with pytest.raises(ValueError, match="mask"):
        stats.update(0, torch.zeros(1, 2, 3, 4), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="layer"):
        stats.second_moment()


def test_bases_are_orthonormal_and_as_specified():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(2, 6, 6, generator=gen, dtype=torch.float64)
    moment = a @ a.transpose(-1, -2)
    u = query_pca_basis(moment, 3)
    eye = torch.eye(3).expand(2, 3, 3)
    torch.testing.assert_close(u.transpose(-1, -2) @ u, eye, atol=1e-5, rtol=0)
    # Rayleigh quotients of the basis are the top eigenvalues
    top = torch.linalg.eigvalsh(moment).flip(-1)[:, :3]
    rayleigh = torch.einsum("hdr,hde,her->hr", u.double(), moment, u.double())
    torch.testing.assert_close(rayleigh, top, rtol=1e-5, atol=1e-6)
    r1, r2 = random_basis(2, 6, 3, seed=4), random_basis(2, 6, 3, seed=4)
    assert torch.equal(r1, r2) and not torch.equal(r1, random_basis(2, 6, 3, seed=5))
    torch.testing.assert_close(r1.transpose(-1, -2) @ r1, eye, atol=1e-5, rtol=0)
    residual = torch.randn(3, 2, 10, 6, generator=gen)
    kp = key_pca_basis(residual, 2)
    direct = torch.einsum("bhsd,bhse->hde", residual.double(), residual.double()) / 30
    torch.testing.assert_close(kp, query_pca_basis(direct, 2))
    cfg = HeadQConfig(rank=2, basis="random", seed=4)
    assert torch.equal(make_basis(cfg, 0, kv_heads=2, head_dim=6), random_basis(2, 6, 2, 4))
    assert torch.equal(make_basis(cfg, 3, kv_heads=2, head_dim=6), random_basis(2, 6, 2, 7))  # seed + layer
    with pytest.raises(ValueError, match="basis"):
        make_basis(HeadQConfig(rank=2), 0, kv_heads=2, head_dim=6)
    wide = query_pca_basis(direct, 3)
    picked = make_basis(HeadQConfig(rank=2), 0, query_basis=wide, kv_heads=2, head_dim=6)
    assert torch.equal(picked, wide[..., :2])
    with pytest.raises(ValueError, match="rank"):
        make_basis(HeadQConfig(rank=4), 0, query_basis=wide, kv_heads=2, head_dim=6)
    with pytest.raises(ValueError, match="rank"):
        query_pca_basis(moment, 7)


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_side_code_storage_matches_formula(bits):
    gen = torch.Generator().manual_seed(bits)
    residual = torch.randn(2, 2, 5, 8, generator=gen) * 0.1
    residual[0, 0, 0] = 0  # a zero code gets scale 1
    basis = random_basis(2, 8, 5, seed=0)
    side = encode_side(residual, basis, bits)
    c = torch.einsum("bhsd,hdr->bhsr", residual, basis)
    got = decode_side(side)
    if bits == 16:
        assert side.codes.dtype == torch.float16 and side.scale is None
        torch.testing.assert_close(got, c.half().float())
        return
    qmax = 2 ** (bits - 1) - 1
    scale = (c.abs().amax(-1) / qmax).half().float()
    scale[scale == 0] = 1
    want = torch.clamp(torch.round(c / scale.unsqueeze(-1)), -qmax, qmax) * scale.unsqueeze(-1)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    if bits == 8:
        assert side.codes.dtype == torch.int8 and side.codes.shape == (2, 2, 5, 5)
    else:
        assert side.codes.dtype == torch.uint8 and side.codes.shape == (2, 2, 5, 3)
        first = int(torch.round(c[0, 1, 2, 0] / scale[0, 1, 2]))
        assert int(side.codes[0, 1, 2, 0]) & 0xF == first & 0xF  # two's-complement low nibble
    assert side.scale.dtype == torch.float16
    with pytest.raises(ValueError, match="side_bits"):
        encode_side(residual, basis, 3)
    with pytest.raises(ValueError, match="basis"):
        encode_side(residual, basis[:, :4], bits)
    with pytest.raises(ValueError, match="c_hat"):
        logit_correction(torch.zeros(2, 4, 5, 8), basis, got[..., :2], 0.5)


def test_logit_correction_matches_loops():
    gen = torch.Generator().manual_seed(2)
    b, hq, hkv, t, d, r = 1, 4, 2, 3, 6, 2
    q = torch.randn(b, hq, t, d, generator=gen)
    u = random_basis(hkv, d, r, seed=1)
    c = torch.randn(b, hkv, t, r, generator=gen)
    mask = decode_mask(t, t, QuantConfig(bits=2, axis="per_token", group_size=2, residual=1))
    got = logit_correction(q, u, c, tau=0.5, sign=-1, mask=mask)
    for h in range(hq):
        for i in range(t):
            for j in range(t):
                want = -0.5 * float((u[h // 2].T @ q[0, h, i]) @ c[0, h // 2, j]) if mask[i, j] else 0.0
                assert abs(float(got[0, h, i, j]) - want) < 1e-5
    keys = correction_keys(u, c, sign=-1)
    want = logit_correction(q, u, c, 0.5, -1)
    torch.testing.assert_close(tau_logits(q, keys, 0.5), want, atol=1e-5, rtol=0)


def tau_logits(q, k, tau):
    return tau * q @ k.repeat_interleave(q.shape[1] // k.shape[1], 1).transpose(-1, -2)


def test_full_rank_fp16_side_code_reproduces_dense_logits():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, 16, 8, generator=gen)
    k = torch.randn(1, 2, 16, 8, generator=gen)
    k_hat = fake_quantize(k, QuantConfig(bits=4, axis="per_channel", group_size=8))
    u = random_basis(2, 8, 8, seed=0)
    c_hat = decode_side(encode_side(k - k_hat, u, 16))
    dense, tau = tau_logits(q, k, 0.35), 0.35
    corrected = tau_logits(q, k_hat, tau) + logit_correction(q, u, c_hat, tau)
    before = (tau_logits(q, k_hat, tau) - dense).abs().max()
    after = (corrected - dense).abs().max()
    # float precision: fp16 rounding of a residual of ~0.1 (2**-11 relative) and float32 sums
    assert after < 1e-5 * dense.abs().max() + 2e-4 * before
    assert after < before / 1000


def test_query_pca_beats_no_correction_and_wrong_sign_is_worse():
    gen = torch.Generator().manual_seed(4)
    b, hq, hkv, t, d = 1, 4, 2, 64, 16
    q = anisotropic_queries(gen, b, hq, t, d)
    k = torch.randn(b, hkv, t, d, generator=gen)
    cfg = QuantConfig(bits=2, axis="per_channel", group_size=16, residual=0)
    k_hat = fake_quantize(k, cfg)
    stats = QueryStats(1, hkv, d)
    stats.update(0, anisotropic_queries(torch.Generator().manual_seed(4), 4, hq, t, d))
    u = query_pca_basis(stats.second_moment()[0], 4)
    c_hat = decode_side(encode_side(k - k_hat, u, 8))
    kl = {}
    for sign in (None, 1, -1):
        k_eff = k_hat if sign is None else k_hat + correction_keys(u, c_hat, sign)
        kl[sign] = layer_metrics(q, k, k_eff, d ** -0.5, key_mask=decode_mask(t, t, cfg))["attn_kl"]
    assert (kl[1] < kl[None] * 0.5).all()
    assert (kl[-1] > kl[None]).all()
