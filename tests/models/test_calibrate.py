"""Calibration: query second moments checked against queries rebuilt from q_proj + RoPE by hand."""

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from headq_core.errors import Cancelled
from headq_core.evaluation.calibrate import Calibration, calibrate
from headq_core.evaluation.corpus import CorpusSpec
from tests.models.tiny import loaded

SPEC = CorpusSpec(split="calibration")


def _direct_moments(lm, windows):
    """C[layer, kv_head] = mean q q^T from hooks on q_proj and the model's rotary embedding."""
    model = lm.model
    outs = {}
    hooks = [
        layer.self_attn.q_proj.register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o))
        for n, layer in enumerate(model.model.layers)
    ]
    info = lm.info
    total = torch.zeros(info.layers, info.kv_heads, info.head_dim, info.head_dim, dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for ids in windows:
            ids = ids[None]
            model(ids, use_cache=False)
            pos = torch.arange(ids.shape[1])[None]
            cos, sin = model.model.rotary_emb(torch.zeros(1, ids.shape[1], 1), pos)
            for n in range(info.layers):
                q = outs[n].view(1, -1, info.heads, info.head_dim).transpose(1, 2)
                q, _ = apply_rotary_pos_emb(q, q, cos, sin)
                for head in range(info.heads):
                    x = q[0, head].double()
                    total[n, head // (info.heads // info.kv_heads)] += x.T @ x
            count += ids.shape[1] * info.heads // info.kv_heads
    for h in hooks:
        h.remove()
    return total / count


def test_spectrum_and_basis_match_direct_computation():
    lm = loaded("llama")
    fractions = []
    cal = calibrate(lm, SPEC, window=16, max_tokens=48, rank=3, progress=lambda f, s: fractions.append(f))
    from headq_core.evaluation.windows import corpus_windows

    moment = _direct_moments(lm, corpus_windows(lm.tokenizer, SPEC, 16, 48).ids)
    values, vectors = torch.linalg.eigh(moment)
    torch.testing.assert_close(cal.eigenvalues, values.flip(-1), rtol=1e-6, atol=1e-9)
    top = vectors.flip(-1)[..., :3]
    proj_ref = top @ top.transpose(-1, -2)
    proj = cal.basis.double() @ cal.basis.double().transpose(-1, -2)
    torch.testing.assert_close(proj, proj_ref, atol=1e-4, rtol=0)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert cal.meta["tokens"] == 48 and cal.meta["rank"] == 3 and cal.meta["corpus"]["split"] == "calibration"


def test_roundtrips(tmp_path):
    cal = calibrate(loaded("gpt2"), SPEC, window=8, max_tokens=16, rank=2)
    for again in (
        Calibration.from_bytes(cal.to_bytes()),
        (cal.save(tmp_path), Calibration.load(tmp_path))[1],
    ):
        assert torch.equal(again.basis, cal.basis) and torch.equal(again.eigenvalues, cal.eigenvalues)
        assert again.meta == cal.meta
    assert cal.layer_basis(1, 2).shape == (4, 8, 2)
    with pytest.raises(ValueError, match="rank"):
        cal.layer_basis(0, 3)


def test_errors():
    lm = loaded("llama")
    with pytest.raises(ValueError, match="rank"):
        calibrate(lm, SPEC, window=8, max_tokens=16, rank=0)
    with pytest.raises(Cancelled):
        calibrate(lm, SPEC, window=8, max_tokens=16, rank=2, should_stop=lambda: True)
    with pytest.raises(ValueError, match="calibration: not a calibration blob"):
        Calibration.from_bytes(b"not a tar")
