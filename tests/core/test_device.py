"""The math on an accelerator gives the CPU results (skipped without CUDA): masks, sums and noise
are created where the inputs live, so the evaluator can keep a whole layer on the GPU."""

import pytest
import torch

from headq_core.config import InterventionConfig, QuantConfig, ValuePolicyConfig
from headq_core.evaluation.metrics import HeadMetrics, layer_metrics
from headq_core.method.headq import QueryStats, decode_side, encode_side, logit_correction, query_pca_basis
from headq_core.method.intervention import perturb_keys
from headq_core.method.quant import dequantize, quantize
from headq_core.method.schedule import decode_mask
from headq_core.method.values import OnlineA2, a2_weights, value_keep_mask

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GPU = "cuda"


def close(cpu, gpu, tol=1e-4):
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=tol, atol=tol * 1e-2)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_quantize_on_gpu_is_bit_identical(bits):
    x = torch.randn(2, 2, 70, 64)
    for cfg in (QuantConfig(bits=bits, axis="per_channel", group_size=32, residual=5),
                QuantConfig(bits=bits, axis="per_token", group_size=16)):
        cpu, gpu = quantize(x, cfg), quantize(x.to(GPU), cfg)
        assert torch.equal(gpu.codes.cpu(), cpu.codes) and torch.equal(gpu.scale.cpu(), cpu.scale)
        assert torch.equal(dequantize(gpu).cpu(), dequantize(cpu))


def test_headq_metrics_values_intervention_on_gpu():
    gen = torch.Generator().manual_seed(0)
    b, hq, hkv, t, d = 2, 8, 2, 96, 32
    q = torch.randn(b, hq, t, d, generator=gen)
    k, v = torch.randn(b, hkv, t, d, generator=gen), torch.randn(b, hkv, t, d, generator=gen)
    kc = QuantConfig(bits=2, axis="per_channel", group_size=16, residual=8)
    vc = QuantConfig(bits=2, axis="per_token", group_size=16, residual=8)
    k_hat, v_hat = dequantize(quantize(k, kc)), dequantize(quantize(v, vc))
    stats_c, stats_g = QueryStats(1, hkv, d), QueryStats(1, hkv, d)
    stats_c.update(0, q)
    stats_g.update(0, q.to(GPU), torch.ones(b, t, dtype=torch.bool, device=GPU))
    close(stats_c.second_moment(), stats_g.second_moment(), 1e-9)
    basis = query_pca_basis(stats_c.second_moment()[0], 4)
    mask = decode_mask(t, t, kc)
    c_hat = {dev: decode_side(encode_side((k - k_hat).to(dev), basis.to(dev), 4)) for dev in ("cpu", GPU)}
    close(c_hat["cpu"], c_hat[GPU])
    corr = {dev: logit_correction(q.to(dev), basis.to(dev), c_hat[dev], 0.2, 1, mask) for dev in ("cpu", GPU)}
    close(corr["cpu"], corr[GPU])
    iv = InterventionConfig(dims=4)
    kp = {dev: perturb_keys(k.to(dev), k_hat.to(dev), basis, iv) for dev in ("cpu", GPU)}
    close(kp["cpu"], kp[GPU])
    args = {"key_mask": mask, "value_mask": decode_mask(t, t, vc), "block": 32, "track_a2": True}
    on = {dev: layer_metrics(*(x.to(dev) for x in (q, k, k_hat)), d ** -0.5,
                             v=v.to(dev), v_hat=v_hat.to(dev), **args) for dev in ("cpu", GPU)}
    for name, val in on["cpu"].items():
        close(val, on[GPU][name])
    acc = HeadMetrics(hq, hkv)  # CPU sums fed from GPU logits
    s = torch.randn(b, hq, t, t, device=GPU)
    acc.add_logits(s, s + 0.1, eps=(v_hat - v).to(GPU), value_mask=args["value_mask"])
    assert acc.result()["fisher"].device.type == "cpu"
    attn = s.masked_fill(~torch.ones(t, t, dtype=torch.bool, device=GPU).tril(), float("-inf")).softmax(-1)
    for mode in ("online", "oracle"):
        pol = ValuePolicyConfig(mode=mode, keep_fraction=0.2)
        want = value_keep_mask(attn.cpu(), hkv, pol, vc)
        assert torch.equal(value_keep_mask(attn, hkv, pol, vc).cpu(), want)
    state = OnlineA2(hkv, 0.2)
    state.observe(attn[:, :, :1, :1])
    assert state.decide(0).device.type == "cuda"
    close(a2_weights(attn.cpu(), hkv), a2_weights(attn, hkv), 1e-5)
