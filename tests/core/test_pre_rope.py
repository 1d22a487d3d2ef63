"""Pre-RoPE keys without a model: the rotation and its inverse against transformers' own rotary
embedding, the quantized read against a direct computation, KVQuant's claim on planted outlier
channels, the spec field, the budget, the presets and the job form."""

import json

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from app.dashboard.job_form import build_spec
from headq_cli.presets import preset_runs
from headq_core.evaluation.run_attention import RunAttention
from headq_core.method.budget import effective_bits
from headq_core.method.pre_rope import fake_quantize_keys, rotate, unrotate
from headq_core.method.quant import fake_quantize, quantize
from headq_core.models.attention import AttentionCall
from headq_core.runtime.cache import make_side
from headq_core.runtime.format_side import FormatSide
from headq_spec.jobs import JobSpec
from headq_spec.runs import HeadQConfig, QuantConfig, RunSpec
from studies.formats import format_label, format_runs
from tests.dashboard.test_job_form import FORM

B, H, N, D = 2, 3, 16, 8
K2 = QuantConfig(bits=2, axis="per_channel", group_size=4, pre_rope=True)


def _rope(n: int = N, d: int = D, scale: float = 1.0,
          theta: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [1, n, d] as transformers' default rotary embedding makes them (times ``scale``, as
    rope types with an attention factor do)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    freqs = torch.arange(n, dtype=torch.float32)[:, None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)[None]
    return emb.cos() * scale, emb.sin() * scale


@pytest.mark.parametrize("scale", [1.0, 1.3])
def test_rotate_is_transformers_rope_and_unrotate_its_inverse(scale):
    gen = torch.Generator().manual_seed(0)
    pre = torch.randn(B, H, N, D, generator=gen)
    rope = _rope(scale=scale)
    _, post = apply_rotary_pos_emb(pre, pre, *rope)
    torch.testing.assert_close(rotate(pre, rope), post, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(unrotate(post, rope), pre, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rotate(unrotate(post, rope), rope), post, rtol=1e-5, atol=1e-5)


def test_a_rope_that_does_not_match_the_keys_is_refused():
    k = torch.randn(B, H, N, D)
    with pytest.raises(ValueError, match=r"key\.pre_rope: cos / sin"):
        unrotate(k, _rope(n=N - 1))
    with pytest.raises(ValueError, match=r"key\.pre_rope: cos / sin"):
        rotate(k, _rope(d=D // 2))  # partial rotary
    with pytest.raises(ValueError, match=r"key\.pre_rope: needs the rotary cos / sin"):
        fake_quantize_keys(k, K2, None)
    with pytest.raises(ValueError, match=r"key\.pre_rope: needs the keys' rotary cos / sin"):
        fake_quantize(k, K2)  # quantizing the post-RoPE keys would silently be another format
    with pytest.raises(ValueError, match="pre_rope: packed codes hold"):
        quantize(k, K2)


@pytest.mark.parametrize("residual", [0, 5])
def test_int2_per_channel_read_equals_a_direct_computation(residual):
    """Un-rotate each pair of channels by hand, fake-quantize per channel, rotate back; the tokens
    the decode rule leaves exact (residual window, incomplete group) come back untouched."""
    gen = torch.Generator().manual_seed(1)
    k = torch.randn(B, H, N, D, generator=gen)
    cfg = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=residual, pre_rope=True)
    cos, sin = (t[0, :, : D // 2] for t in _rope())
    k1, k2 = k.chunk(2, dim=-1)
    pre = torch.cat([k1 * cos + k2 * sin, k2 * cos - k1 * sin], dim=-1)
    n_q = 8 if residual else N  # quantized_count: whole groups of 4 older than the residual window
    p1, p2 = fake_quantize(pre[..., :n_q, :], QuantConfig(bits=2, group_size=4)).chunk(2, dim=-1)
    c, s = cos[:n_q], sin[:n_q]
    want = torch.cat([torch.cat([p1 * c - p2 * s, p2 * c + p1 * s], -1), k[..., n_q:, :]], dim=-2)
    got = fake_quantize_keys(k, cfg, _rope())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[..., n_q:, :], k[..., n_q:, :])


def test_lossless_formats_and_rotations_read_the_keys_back():
    """Through an 8-bit format (near lossless) with and without a Hadamard rotation on top, the read
    is the key: the two rotations cancel."""
    k = torch.randn(B, H, N, D, generator=torch.Generator().manual_seed(2))
    for cfg in (QuantConfig(bits=8, axis="per_token", group_size=D, pre_rope=True),
                QuantConfig(bits=8, group_size=4, rotation="hadamard", rotation_seed=4, pre_rope=True),
                QuantConfig(format="fp8_e4m3", bits=8, axis="per_token", fp8_scale="token", pre_rope=True)):
        torch.testing.assert_close(fake_quantize_keys(k, cfg, _rope()), k, rtol=0.07, atol=0.07)


def test_pre_rope_per_channel_error_is_lower_with_planted_outlier_channels():
    """KVQuant's claim: pre-RoPE keys with a few large, steady channels (as real key projections
    have) quantize per channel with less error before the rotation than after it, which spreads
    each outlier over its channel pair as the position turns."""
    gen = torch.Generator().manual_seed(3)
    d, n = 64, 256
    pre = torch.randn(1, 4, n, d, generator=gen)
    outliers = torch.tensor([1, 3, 6, 40])
    pre[..., outliers] = pre[..., outliers] * 0.5 + 12.0  # steady, large channels
    rope = _rope(n=n, d=d, theta=10000.0)
    post = rotate(pre, rope)
    for bits in (2, 3, 4):
        kw = dict(bits=bits, axis="per_channel", group_size=32)
        error_pre = (fake_quantize_keys(post, QuantConfig(**kw, pre_rope=True), rope) - post).pow(2).mean()
        error_post = (fake_quantize(post, QuantConfig(**kw)) - post).pow(2).mean()
        assert error_pre < 0.5 * error_post, (bits, float(error_pre), float(error_post))


def test_headq_corrects_the_post_rope_residual():
    """HeadQ's residual is ``k - k^`` after the rotation: a full-rank fp16 side code gives the keys back."""
    k = torch.randn(1, 2, N, D, generator=torch.Generator().manual_seed(5))
    q = torch.randn(1, 4, N, D, generator=torch.Generator().manual_seed(6))
    call = AttentionCall(0, q, k, k.clone(), None, D ** -0.5, rope=_rope())
    run = RunSpec("r", key=K2, headq=HeadQConfig(rank=D, basis="random", side_bits=16))
    torch.testing.assert_close(RunAttention(run).effective_keys(call), k, rtol=1e-2, atol=1e-2)
    k_hat = RunAttention(RunSpec("r", key=K2)).effective_keys(call)
    assert torch.equal(k_hat, fake_quantize_keys(k, K2, call.rope)) and (k_hat - k).abs().max() > 0.1


def test_spec_field_round_trips_and_is_checked():
    run = RunSpec("prerope+k2", key=K2, value=QuantConfig(bits=2, axis="per_token"))
    data = run.to_dict()
    assert data["key"]["pre_rope"] is True and "pre_rope" not in data["value"]
    assert RunSpec.from_dict(json.loads(json.dumps(data))) == run
    assert "pre_rope" not in QuantConfig().to_dict() and not K2.is_plain
    with pytest.raises(ValueError, match="pre_rope: must be true or false, got 1"):
        QuantConfig(pre_rope=1)
    with pytest.raises(ValueError, match=r"value\.pre_rope: keys only"):
        RunSpec("v", value=QuantConfig(axis="per_token", pre_rope=True))
    job = {"kind": "evaluation", "model": {"id": "org/m"},
           "runs": [{"name": "r", "key": {"pre_rope": "true"}}]}
    with pytest.raises(ValueError, match=r"runs\.0\.key\.pre_rope"):
        JobSpec.model_validate(job)
    job["runs"][0]["key"] = {"pre_rope": True}
    assert JobSpec.model_validate(job).runs[0].key.pre_rope is True


def test_pre_rope_adds_no_stored_bits():
    for cfg in (K2, QuantConfig(format="q4_0", bits=4, axis="per_token", pre_rope=True)):
        plain = QuantConfig(**{**cfg.to_dict(), "pre_rope": False})
        assert effective_bits(cfg, 64, HeadQConfig(rank=4)) == effective_bits(plain, 64, HeadQConfig(rank=4))
        assert effective_bits(cfg, 64, seq_len=100) == effective_bits(plain, 64, seq_len=100)


def test_the_cache_stores_pre_rope_keys_on_its_dequantizing_side():
    assert isinstance(make_side(K2), FormatSide)


def test_presets_study_and_job_form_offer_pre_rope_keys():
    _, run, with_headq = preset_runs("prerope+k2+headq", 2, 16, 4, 8)
    assert run == {"name": "prerope+k2", "key": {"bits": 2, "axis": "per_channel", "group_size": 16,
                                                 "residual": 4, "pre_rope": True}}
    assert with_headq["name"] == "prerope+k2+headq8" and with_headq["headq"]["rank"] == 8
    runs = {r.name: r for r in format_runs(8, 4)}
    for name in ("prerope+kivi2", "prerope+kivi2+headq4"):
        assert runs[name].key.pre_rope and runs[name].key.bits == 2 and not runs[name].value.pre_rope
    assert format_label(runs["prerope+kivi2"].to_dict()["key"]) == "int2 per_channel G8 pre-RoPE"
    spec = build_spec({**FORM, "pre_rope": True, "value_bits": 2})
    JobSpec.model_validate(spec)
    assert [r["name"] for r in spec["runs"]] == ["dense", "prerope+k2-v2", "prerope+k2-headq-r8-v2"]
    assert spec["runs"][2]["key"]["pre_rope"] is True and "pre_rope" not in spec["runs"][2]["value"]
    assert "pre_rope" not in build_spec(FORM)["runs"][1]["key"]
