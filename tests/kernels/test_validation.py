"""Bad inputs to the kernel entry points raise ValueError naming the field."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from headq_core.config import QuantConfig
from headq_core.runtime.kernels import decode_attention, encode
from tests.kernels.helpers import configs, random_basis, random_kv


@pytest.fixture
def case():
    gen = torch.Generator().manual_seed(0)
    k, v = random_kv(1, 2, 32, 16, gen)
    u = random_basis(2, 16, 4, gen)
    kc, vc = configs(2, 16, 2, 8)
    enc = encode(k, v, kc, vc, basis=u, backend="reference")
    q = torch.randn(1, 4, 1, 16, generator=gen)
    return {"k": k, "v": v, "u": u, "kc": kc, "vc": vc, "enc": enc, "q": q}


@pytest.mark.parametrize("change,field", [
    (lambda c: {"k": c["k"][0]}, "k"),
    (lambda c: {"v": c["v"][:, :, :16]}, "v"),
    (lambda c: {"kc": QuantConfig(bits=2, axis="per_token", group_size=16)}, "key_cfg.axis"),
    (lambda c: {"vc": QuantConfig(bits=2, axis="per_channel", group_size=8)}, "value_cfg.axis"),
    (lambda c: {"k": c["k"][:, :, :24], "v": c["v"][:, :, :24]}, "k"),
    (lambda c: {"vc": QuantConfig(bits=2, axis="per_token", group_size=5)}, "value_cfg.group_size"),
    (lambda c: {"u": c["u"][:1]}, "basis"),
    (lambda c: {"side_bits": 3}, "side_bits"),
    (lambda c: {"backend": "cuda"}, "backend"),
    (lambda c: {"kc": QuantConfig(bits=3, axis="per_channel", group_size=16), "backend": "triton"},
     "backend"),
])
def test_encode_rejects(case, change, field):
    args = {"k": case["k"], "v": case["v"], "kc": case["kc"], "vc": case["vc"], "u": case["u"],
            "side_bits": 8, "backend": "reference"}
    args.update(change(case))
    with pytest.raises(ValueError, match=f"^{field}:"):
        encode(args["k"], args["v"], args["kc"], args["vc"], basis=args["u"], side_bits=args["side_bits"],
               backend=args["backend"])


@pytest.mark.parametrize("change,field", [
    (lambda c: {"q": c["q"][:, :, :, :8]}, "enc"),
    (lambda c: {"q": torch.randn(1, 4, 2, 16)}, "q"),
    (lambda c: {"q": torch.randn(1, 3, 1, 16)}, "q"),
    (lambda c: {"u": None}, "basis"),
    (lambda c: {"u": c["u"][:, :, :3]}, "basis"),
    (lambda c: {"enc": None}, "enc"),
    (lambda c: {"k_res": torch.randn(1, 2, 3, 16)}, "v_res"),
    (lambda c: {"k_res": torch.randn(1, 2, 3, 16), "v_res": torch.randn(1, 2, 4, 16)}, "v_res"),
    (lambda c: {"k_res": torch.randn(1, 1, 3, 16), "v_res": torch.randn(1, 1, 3, 16)}, "k_res"),
    (lambda c: {"sign": 2}, "sign"),
    (lambda c: {"splits": 0}, "num_splits"),
])
def test_decode_rejects(case, change, field):
    args = {"q": case["q"], "enc": case["enc"], "k_res": None, "v_res": None, "u": case["u"], "sign": 1,
            "splits": None}
    args.update(change(case))
    with pytest.raises(ValueError, match=f"^{field}:"):
        decode_attention(args["q"], args["enc"], args["k_res"], args["v_res"], basis=args["u"],
                         sign=args["sign"], num_splits=args["splits"], backend="reference")


def test_encoded_kv_checks_its_shapes(case):
    enc = case["enc"]
    with pytest.raises(ValueError, match="^k_scale:"):
        dataclasses.replace(enc, k_scale=enc.k_scale[:, :, :, :8])
    with pytest.raises(ValueError, match="^side:"):
        dataclasses.replace(enc, side=enc.side.float())
    with pytest.raises(ValueError, match="^k_codes:"):
        dataclasses.replace(enc, key_group=64)


def test_from_packed_rejects_swapped_sides(case):
    from headq_core.method.quant import quantize
    from headq_core.runtime.kernels.layout import from_packed

    keys = quantize(case["k"], case["kc"], n_quant=32)
    values = quantize(case["v"], case["vc"], n_quant=32)
    with pytest.raises(ValueError, match="^keys:"):
        from_packed(values, keys)
    with pytest.raises(ValueError, match="^values:"):
        from_packed(keys, quantize(case["v"], case["vc"], n_quant=16))
