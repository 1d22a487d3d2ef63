"""Evaluator: perplexity against a real token-by-token decode loop, per-head
metrics of layer 0 against a direct computation, HeadQ sanity, errors."""

import math

import pytest
import torch

from headq_core.config import HeadQConfig, QuantConfig, RunSpec
from headq_core.errors import Cancelled
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from headq_core.evaluation.windows import corpus_windows
from headq_core.method.quant import fake_quantize
from tests.models.decode_loop import fake_quantized_nll
from tests.models.tiny import loaded

SPEC = CorpusSpec(split="eval")
K2 = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=2)
V2 = QuantConfig(bits=2, axis="per_token", group_size=4, residual=3)


def _decode_loop_nll(lm, ids, key_cfg, value_cfg):
    """Sum of NLL from a real token-by-token decode loop (``decode_loop.fake_quantized_nll``). Like
    ``HeadQCache``, the cache keeps every token of a sliding-window layer (groups stay where the
    evaluator has them); the model's mask hides those outside the window."""
    return fake_quantized_nll(lm.model, ids, key_cfg, value_cfg)


@pytest.mark.parametrize("heads", [True, False], ids=["with-metrics", "band-only"])
# softcap + sliding window, q/k norm, partial rotary, attention multiplier, all layers sliding
@pytest.mark.parametrize(
    "family", ["llama", "gpt_neox", "gemma2", "gemma3_text", "phi", "granite", "starcoder2"]
)
def test_perplexity_is_decode_exact(family, heads):
    lm = loaded(family)
    runs = [RunSpec("dense"), RunSpec("k2", key=K2), RunSpec("kv2", key=K2, value=V2)]
    doc = evaluate(lm, SPEC, runs, window=12, max_tokens=24, heads=heads)
    windows = corpus_windows(lm.tokenizer, SPEC, 12, 24).ids
    rows = {r["name"]: r for r in doc["runs"]}
    for run in runs:
        nll = sum(_decode_loop_nll(lm, w, run.key, run.value) for w in windows) / (2 * 11)
        assert rows[run.name]["nll"] == pytest.approx(nll, rel=1e-5)
        assert rows[run.name]["perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)
    assert rows["kv2"]["excess_perplexity"] == pytest.approx(
        rows["kv2"]["perplexity"] - rows["dense"]["perplexity"]
    )
    assert doc["dataset"]["tokens"] == 24 and doc["dataset"]["windows"] == 2


def test_layer0_metrics_match_direct_computation():
    lm = loaded("llama")
    cfg = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=0)
    doc = evaluate(lm, SPEC, [RunSpec("k2", key=cfg)], window=12, max_tokens=12)
    ids = corpus_windows(lm.tokenizer, SPEC, 12, 12).ids
    seen = {}
    from headq_core.models.adapter import capture

    with torch.no_grad(), capture(lm.model, lambda n, q, k, v: seen.setdefault(n, (q, k))):
        lm.model(ids, use_cache=False)
    q, k = seen[0]  # layer 0 sees the same inputs in every run
    k_hat = fake_quantize(k, cfg)
    tau = lm.info.logit_scale
    rows = {r["head"]: r for r in doc["heads"] if r["layer"] == 0}
    for head in range(4):
        kv = head // 2
        kl, mse, n_pairs, score = 0.0, 0.0, 0, 0.0
        for t in range(12):
            n_q = (t + 1) // 4 * 4  # keys in complete groups of 4 (R = 0) are read quantized
            keys = torch.cat([k_hat[0, kv, :n_q], k[0, kv, n_q : t + 1]]).double()
            s = tau * (k[0, kv, : t + 1].double() @ q[0, head, t].double())
            s_hat = tau * (keys @ q[0, head, t].double())
            a, a_hat = torch.softmax(s, 0), torch.softmax(s_hat, 0)
            kl += float((a * (a.log() - a_hat.log())).sum())
            score += float(((s_hat - s) ** 2).sum())
            n_pairs += t + 1
        mse = float(((k_hat[0, kv] - k[0, kv]).double() ** 2).sum() / (12 * 8))
        assert rows[head]["attn_kl"] == pytest.approx(kl / 12, rel=1e-3)
        assert rows[head]["score_mse"] == pytest.approx(score / n_pairs, rel=1e-3)
        assert rows[head]["key_mse"] == pytest.approx(mse, rel=1e-4)
        assert rows[head]["kv_head"] == kv and rows[head]["value_mse"] == 0.0


def test_full_rank_headq_recovers_dense_and_wrong_sign_hurts():
    lm = loaded("qwen2")
    full = HeadQConfig(rank=8, basis="random", side_bits=16)
    runs = [
        RunSpec("dense"),
        RunSpec("k2", key=K2),
        RunSpec("k2_h", key=K2, headq=full),
        RunSpec("k2_neg", key=K2, headq=HeadQConfig(rank=8, basis="random", side_bits=16, sign=-1)),
        RunSpec("k2_kp", key=K2, headq=HeadQConfig(rank=2, basis="key_pca")),
    ]
    doc = evaluate(lm, SPEC, runs, window=16, max_tokens=32)
    rows = {r["name"]: r for r in doc["runs"]}
    assert rows["k2_h"]["perplexity"] == pytest.approx(rows["dense"]["perplexity"], rel=1e-3)
    assert rows["k2_h"]["excess_removed"] == pytest.approx(
        1 - rows["k2_h"]["excess_perplexity"] / rows["k2"]["excess_perplexity"]
    )
    assert rows["k2"]["excess_removed"] is None
    assert rows["k2_h"]["effective_bits"]["key"] > rows["k2"]["effective_bits"]["key"]

    def mean(run, metric):
        vals = [h[metric] for h in doc["heads"] if h["run"] == run]
        return sum(vals) / len(vals)

    assert mean("k2_neg", "attn_kl") > mean("k2", "attn_kl") > mean("k2_h", "attn_kl")
    assert mean("k2_h", "key_mse") < 1e-5 < mean("k2", "key_mse")


def test_errors_and_cancel():
    lm = loaded("llama")
    hq = RunSpec("h", key=K2, headq=HeadQConfig(rank=2))
    with pytest.raises(ValueError, match="calibration: run 'h' needs a calibration"):
        evaluate(lm, SPEC, [hq], window=8, max_tokens=8)
    with pytest.raises(ValueError, match="runs: duplicate run names"):
        evaluate(lm, SPEC, [RunSpec("a"), RunSpec("a")], window=8, max_tokens=8)
    with pytest.raises(ValueError, match="runs"):
        evaluate(lm, SPEC, [], window=8, max_tokens=8)
    with pytest.raises(ValueError, match="head_windows"):
        evaluate(lm, SPEC, [RunSpec("a")], window=8, max_tokens=8, head_windows=0)
    with pytest.raises(Cancelled):
        evaluate(lm, SPEC, [RunSpec("a")], window=8, max_tokens=8, should_stop=lambda: True)


def test_interventions_and_value_policies():
    from headq_core.config import InterventionConfig, ValuePolicyConfig
    from headq_core.evaluation.calibrate import calibrate

    lm = loaded("llama")
    cal = calibrate(lm, CorpusSpec(split="calibration"), window=16, max_tokens=32, rank=4)
    everything = ValuePolicyConfig(mode="oracle", keep_fraction=1.0, high_bits=16)
    runs = [
        RunSpec("k2", key=K2),
        RunSpec("out", key=K2, intervention=InterventionConfig(subspace="outside", dims=2)),
        RunSpec("in", key=K2, intervention=InterventionConfig(subspace="inside", dims=2)),
        RunSpec("kv2", key=K2, value=V2),
        RunSpec("kv2_keep_all", key=K2, value=V2, value_policy=everything),
        RunSpec("kv2_online", key=K2, value=V2, value_policy=ValuePolicyConfig(keep_fraction=0.5)),
    ]
    doc = evaluate(lm, SPEC, runs, cal, window=16, max_tokens=32)
    ppl = {r["name"]: r["perplexity"] for r in doc["runs"]}
    assert ppl["kv2_keep_all"] == pytest.approx(ppl["k2"], rel=1e-6)  # every value kept exact
    assert ppl["kv2"] != ppl["kv2_online"]

    def heads(run, metric):
        return torch.tensor([h[metric] for h in doc["heads"] if h["run"] == run and h["layer"] == 0])

    torch.testing.assert_close(heads("out", "key_mse"), heads("in", "key_mse"), rtol=1e-6, atol=0)
    assert heads("in", "attn_kl").mean() > heads("out", "attn_kl").mean()
    assert (heads("kv2", "value_mse") > 0).all() and (heads("kv2", "readout_err") > 0).all()
    assert (heads("kv2_keep_all", "value_mse") == 0).all()
    a2 = doc["arrays"]["a2_weights"]
    assert set(a2) == {"kv2", "kv2_keep_all", "kv2_online"} and len(a2["kv2"][0][0]) == 16


def test_batched_windows_give_the_same_numbers():
    from headq_core.config import ValuePolicyConfig
    from headq_core.evaluation.evaluate import window_batches

    assert window_batches(7, 3, 2) == [(0, 2), (2, 5), (5, 7)]
    assert window_batches(4, 8, 4) == [(0, 4)]
    lm = loaded("llama")
    policy = ValuePolicyConfig(mode="online", keep_fraction=0.25)
    runs = [RunSpec("dense"), RunSpec("k2", key=K2),
            RunSpec("kv2a2", key=K2, value=V2, value_policy=policy),
            RunSpec("k2_h", key=K2, headq=HeadQConfig(rank=4, basis="random"))]
    one = evaluate(lm, SPEC, runs, window=12, max_tokens=60, head_windows=2)
    many = evaluate(lm, SPEC, runs, window=12, max_tokens=60, head_windows=2, batch=3)
    assert many["dataset"]["batch"] == 3 and one["dataset"]["batch"] == 1
    for a, b in zip(one["runs"], many["runs"], strict=True):
        assert b["nll"] == pytest.approx(a["nll"], rel=1e-5)
    for a, b in zip(one["heads"], many["heads"], strict=True):
        assert (a["run"], a["layer"], a["head"]) == (b["run"], b["layer"], b["head"])
        for metric in ("attn_kl", "fisher", "key_mse", "value_a2", "readout_err"):
            assert b[metric] == pytest.approx(a[metric], rel=1e-4, abs=1e-9)
    with pytest.raises(ValueError, match="batch"):
        evaluate(lm, SPEC, runs, window=12, max_tokens=24, batch=0)


def test_metrics_path_and_band_path_agree():
    """Without metrics the evaluator recomputes exact logits / values only in the band near the
    diagonal (``evaluate_run.exact_band``); with metrics it computes them everywhere."""
    from headq_core.config import ValuePolicyConfig
    from headq_core.evaluation.run_attention import band_blocks
    from headq_core.method.schedule import decode_mask

    mask = decode_mask(300, 300, QuantConfig(bits=2, group_size=32, residual=40))
    blocks = list(band_blocks(mask, rows=128))
    assert blocks == [(0, 128, 0), (128, 256, 64), (256, 300, 192)]
    for t0, t1, j0 in blocks:  # every exact causal (t, j) of the rows lies in [j0, t1)
        rows = ~mask[t0:t1] & torch.ones(t1 - t0, 300, dtype=torch.bool).tril(t0)
        assert not rows[:, :j0].any() and not rows[:, t1:].any()
    lm = loaded("llama")
    k2 = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=3)
    policy = ValuePolicyConfig(mode="online", keep_fraction=0.3)
    runs = [RunSpec("k2", key=k2), RunSpec("k2_h", key=k2, headq=HeadQConfig(rank=4, basis="random")),
            RunSpec("kv2a2", key=k2, value=V2, value_policy=policy), RunSpec("v2", value=V2)]
    full = evaluate(lm, SPEC, runs, window=300, max_tokens=300)  # three row blocks of the band
    band = evaluate(lm, SPEC, runs, window=300, max_tokens=300, heads=False)
    for a, b in zip(full["runs"], band["runs"], strict=True):
        assert b["nll"] == pytest.approx(a["nll"], rel=1e-6)


def test_an_evaluation_run_twice_on_one_machine_is_bit_identical():
    """Same code, data, seed and machine: every number of the document is identical (only the
    timing differs). What varies across machines is measured by benchmarks/reproducibility.py."""
    from headq_core.config import HeadQConfig
    from headq_core.evaluation.calibrate import calibrate

    lm = loaded("llama", bos=True)
    cal = calibrate(lm, CorpusSpec(split="calibration"), window=16, max_tokens=32, rank=4)
    runs = [RunSpec("dense"), RunSpec("kv2", key=K2, value=V2),
            RunSpec("kv2_headq", key=K2, value=V2, headq=HeadQConfig(rank=4, side_bits=4))]
    docs = [evaluate(lm, SPEC, runs, cal, window=24, max_tokens=96, seed=3) for _ in range(2)]
    for doc in docs:
        doc.pop("timing")
    assert docs[0] == docs[1]
    assert docs[0]["runs"][2]["excess_removed_ci"] is not None


def test_rank_correlations_are_those_of_the_head_rows():
    """Each run's rho (and the pooled one) is Spearman's rho of the document's own head rows; the
    window bootstrap gives an interval around it and is the same on a second evaluation."""
    from scipy.stats import spearmanr

    lm = loaded("llama")
    runs = [RunSpec("dense"), RunSpec("k2", key=K2), RunSpec("kv2", key=K2, value=V2)]
    doc = evaluate(lm, SPEC, runs, window=12, max_tokens=72, seed=3)
    again = evaluate(lm, SPEC, runs, window=12, max_tokens=72, seed=3)

    def rho(names, predictor):
        rows = [h for h in doc["heads"] if h["run"] in names
                and all(h[m] > 0 for m in ("attn_kl", "fisher", "key_mse"))]
        return spearmanr([h[predictor] for h in rows], [h["attn_kl"] for h in rows]).statistic

    by_run = {r["name"]: r for r in doc["runs"]}
    assert "rank_correlations" not in by_run["dense"]
    pooled = doc["rank_correlations"]
    assert pooled["runs"] == ["k2", "kv2"]
    for predictor in ("fisher", "key_mse"):
        for name in ("k2", "kv2"):
            block = by_run[name]["rank_correlations"][predictor]
            assert block["rho"] == pytest.approx(rho([name], predictor), abs=1e-9)
            assert block["ci"][0] <= block["rho"] <= block["ci"][1]
        assert pooled[predictor]["rho"] == pytest.approx(rho(["k2", "kv2"], predictor), abs=1e-9)
    assert again["rank_correlations"] == pooled
