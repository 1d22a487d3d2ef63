"""Long-context evaluation: the LM head in chunks, sampled query rows, NLL per position bucket, the
attention path the evaluator chose and the errors of too long a window."""

import math

import pytest
import torch

from headq_core.config import HeadQConfig, QuantConfig, RunSpec, ValuePolicyConfig
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import attention_path, evaluate
from headq_core.evaluation.positions import bucket_edges, position_buckets, sample_rows
from headq_core.evaluation.token_nll import token_nll
from headq_core.evaluation.windows import corpus_windows, token_windows
from headq_core.models.adapter import VERIFIED_MODEL_TYPES
from headq_spec.results import ResultsDocument
from tests.models.tiny import loaded

SPEC = CorpusSpec(split="eval")
K2 = QuantConfig(bits=2, axis="per_channel", group_size=8, residual=8)
V2 = QuantConfig(bits=2, axis="per_token", group_size=4, residual=8)


@pytest.mark.parametrize("family", VERIFIED_MODEL_TYPES)
def test_chunked_nll_equals_the_full_logits(family):
    lm = loaded(family, bos=True)
    ids = torch.randint(3, 90, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = lm.model(ids, use_cache=False).logits
        chunked = token_nll(lm.model, ids, first=3, chunk=7)
    full = torch.nn.functional.cross_entropy(logits[:, 2:-1].transpose(1, 2).double(), ids[:, 3:],
                                             reduction="none")
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)


def test_token_nll_refuses_a_bad_chunk():
    with pytest.raises(ValueError, match="chunk"):
        token_nll(loaded("llama").model, torch.ones(1, 4, dtype=torch.long), first=1, chunk=0)


def test_sampled_rows_spread_over_the_window_and_hold_the_last_rows():
    rows = sample_rows(1000, 64, seed=3)
    assert rows.tolist() == sorted(set(rows.tolist())) and len(rows) == 64
    assert rows[-16:].tolist() == list(range(984, 1000))  # the last rows
    strata = torch.arange(49) * 984 / 48  # one row in each of 48 equal strata of the others
    for i, row in enumerate(rows[:48].tolist()):
        assert math.ceil(strata[i]) <= row < math.ceil(strata[i + 1])
    assert torch.equal(sample_rows(1000, 64, seed=3), rows)
    assert not torch.equal(sample_rows(1000, 64, seed=4), rows)
    assert sample_rows(100, 100) is None and sample_rows(10, 3).tolist()[-1] == 9
    with pytest.raises(ValueError, match="head_rows"):
        sample_rows(100, 0)


def test_position_buckets_are_log_spaced_means_of_the_positions():
    edges = bucket_edges(1, 4096)
    assert edges[0] == 1 and edges[-1] == 4096 and len(edges) <= 65 and edges == sorted(set(edges))
    assert edges[-1] - edges[-2] > 100 and edges[1] - edges[0] == 1  # fine at the start, coarse late
    sums = {"dense": torch.arange(1.0, 30.0, dtype=torch.float64), "k2": torch.full((29,), 60.0)}
    block = position_buckets(sums, first=3, window=32, windows=2, dense="dense")
    for i, (lo, hi) in enumerate(zip(block["edges"], block["edges"][1:], strict=False)):
        positions = range(lo - 3, hi - 3)
        assert block["tokens"][i] == 2 * len(positions)
        dense = sum(float(sums["dense"][p]) for p in positions) / block["tokens"][i]
        assert block["nll"]["dense"][i] == pytest.approx(dense)
        assert block["excess_nll"]["k2"][i] == pytest.approx(30.0 / len(positions) * len(positions) - dense)
    assert "excess_nll" not in position_buckets(sums, 3, 32, 2, dense=None)
    with pytest.raises(ValueError, match="window"):
        bucket_edges(5, 5)


def test_attention_path_choice():
    assert attention_path("auto", 1024, metrics=True) == "materialised"
    assert attention_path("auto", 1024, metrics=False) == "blockwise"
    assert attention_path("auto", 4096, metrics=True) == "blockwise"
    assert attention_path("materialised", 4096, metrics=False) == "materialised"
    with pytest.raises(ValueError, match="attention"):
        attention_path("flash", 1024, metrics=True)


RUNS = [RunSpec("dense"), RunSpec("k2", key=K2),
        RunSpec("k2_hq", key=K2, headq=HeadQConfig(rank=4, basis="random")),
        RunSpec("kv2_a2", key=K2, value=V2, value_policy=ValuePolicyConfig(keep_fraction=0.25))]


def test_blockwise_evaluation_records_its_path_rows_and_position_nll():
    lm = loaded("llama")
    kwargs = dict(window=96, max_tokens=192, head_windows=1)
    reference = evaluate(lm, SPEC, RUNS, attention="materialised", **kwargs)
    blockwise = evaluate(lm, SPEC, RUNS, attention="blockwise", head_rows=24, **kwargs)
    for a, b in zip(reference["runs"], blockwise["runs"], strict=True):
        assert b["nll"] == pytest.approx(a["nll"], rel=1e-5)
    assert reference["dataset"]["attention"] == {
        "head_windows": "materialised", "other_windows": "materialised", "head_rows": None}
    rows = sample_rows(96, 24, seed=0).tolist()
    assert blockwise["dataset"]["attention"] == {
        "head_windows": "blockwise", "other_windows": "blockwise", "head_rows": rows}
    assert len(blockwise["heads"]) == len(reference["heads"]) == 3 * 2 * 4
    auto = evaluate(lm, SPEC, RUNS, **kwargs)  # metrics window materialised, the other blockwise
    assert auto["dataset"]["attention"]["other_windows"] == "blockwise"
    assert auto["heads"] == reference["heads"]
    # the buckets: their token-weighted mean is the run's NLL, the dense run's excess is zero
    block = blockwise["position_nll"]
    assert block["baseline"] == "dense" and block["edges"][0] == 1 and block["edges"][-1] == 96
    for row in blockwise["runs"]:
        mean = sum(n * t for n, t in zip(block["nll"][row["name"]], block["tokens"], strict=True))
        assert mean / sum(block["tokens"]) == pytest.approx(row["nll"], rel=1e-9)
    assert all(v == 0.0 for v in block["excess_nll"]["dense"])
    ResultsDocument.model_validate(blockwise)


def test_position_nll_of_one_window_is_its_per_token_nll():
    lm = loaded("llama")
    doc = evaluate(lm, SPEC, [RunSpec("dense")], window=40, max_tokens=40, heads=False)
    ids = corpus_windows(lm.tokenizer, SPEC, 40, 40).ids
    with torch.no_grad():
        logits = lm.model(ids, use_cache=False).logits[0, :-1]
    per_token = torch.nn.functional.cross_entropy(logits.double(), ids[0, 1:], reduction="none")
    block = doc["position_nll"]
    for i, (lo, hi) in enumerate(zip(block["edges"], block["edges"][1:], strict=False)):
        assert block["nll"]["dense"][i] == pytest.approx(float(per_token[lo - 1 : hi - 1].mean()), rel=1e-6)


def test_a_window_beyond_the_model_or_the_text_is_refused():
    lm = loaded("llama", max_position_embeddings=64)
    with pytest.raises(ValueError, match="window: 96 tokens exceed the model's max_position_embeddings"):
        evaluate(lm, SPEC, RUNS[:1], window=96, max_tokens=96)
    with pytest.raises(ValueError, match="dataset: only 12 tokens of text, fewer than one window of 32"):
        token_windows(lm.tokenizer, ["eleven char"], 32, 32)  # the documents joined with EOS
    with pytest.raises(ValueError, match="head_rows"):
        evaluate(lm, SPEC, RUNS[:1], window=32, max_tokens=32, head_rows=0)


def test_results_without_the_new_fields_still_validate():
    doc = {"schema_version": 1, "kind": "evaluation", "model": {"id": "m"},
           "dataset": {"tokens": 10, "windows": 1, "window": 10}, "runs": [{"name": "dense"}]}
    assert "position_nll" not in ResultsDocument.model_validate(doc).model_dump(exclude_unset=True)
    bad = {**doc, "position_nll": {"edges": [1, 5, 9], "tokens": [4], "nll": {}}}
    with pytest.raises(ValueError, match="position_nll"):
        ResultsDocument.model_validate(bad)


def test_blockwise_windows_in_batches_give_the_reference_numbers():
    lm = loaded("gemma2")  # softcap and a sliding layer, two windows per pass
    kwargs = dict(window=80, max_tokens=320, batch=2, heads=False)
    reference = evaluate(lm, SPEC, RUNS, attention="materialised", **kwargs)
    blockwise = evaluate(lm, SPEC, RUNS, attention="blockwise", **kwargs)
    for a, b in zip(reference["runs"], blockwise["runs"], strict=True):
        got, expected = torch.tensor(b["window_nll"]), torch.tensor(a["window_nll"])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
    assert blockwise["dataset"]["attention"] == {"head_windows": None, "other_windows": "blockwise",
                                                 "head_rows": None}


def test_the_job_spec_takes_the_path_and_the_rows_and_names_a_bad_one():
    from pydantic import ValidationError

    from headq_spec.jobs import DatasetSpec

    spec = DatasetSpec(window=8192, attention="blockwise", head_rows=512)
    assert (spec.attention, spec.head_rows) == ("blockwise", 512)
    assert (DatasetSpec().attention, DatasetSpec().head_rows) == ("auto", 256)
    for bad, field in (({"attention": "flash"}, "attention"), ({"head_rows": 0}, "head_rows")):
        with pytest.raises(ValidationError, match=field):
            DatasetSpec(**bad)
