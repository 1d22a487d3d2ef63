"""Token windows start as the tokenizer starts a sequence (issue 12): the prefix, the text after it,
what is scored, where the windows lie in the corpus; and the evaluator, the calibration and the
quantized cache all read those windows."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from transformers import AutoTokenizer

from headq_core.config import HeadQConfig, QuantConfig, RunSpec
from headq_core.evaluation.calibrate import calibrate
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from headq_core.evaluation.windows import corpus_windows, start_prefix, token_windows, tokenizer_prefix
from headq_core.models.calls import cache_kwargs
from headq_core.runtime.cache import HeadQCache
from tests.models.tiny import CharTokenizer, loaded, save_tiny

TEXTS = ["abc", "de", "fghij"]
STREAM = [tok for text in (b"abc", b"de", b"fghij") for tok in [3 + b % 93 for b in text] + [2]]
SPEC = CorpusSpec(split="eval")


def test_without_a_prefix_windows_are_the_stream_cut_in_order():
    out = token_windows(CharTokenizer(), TEXTS, window=4, max_tokens=100, placement="contiguous")
    assert torch.equal(out.ids, torch.tensor(STREAM[:12]).view(3, 4))
    assert (out.prefix, out.first_scored, out.tokens_scored) == (0, 1, 9)
    assert out.offsets.tolist() == [0, 4, 8]
    assert token_windows(CharTokenizer(), ["abcdefghij"], window=4, max_tokens=5).ids.shape == (1, 4)


def test_with_a_bos_tokenizer_every_window_is_bos_then_window_minus_one_text_tokens():
    out = token_windows(CharTokenizer(bos=True), TEXTS, window=4, max_tokens=100, placement="contiguous")
    assert out.ids[:, 0].tolist() == [1] * 4 and out.prefix == 1
    assert torch.equal(out.ids[:, 1:], torch.tensor(STREAM[:12]).view(4, 3))  # no text token lost
    assert out.offsets.tolist() == [0, 3, 6, 9]
    assert (out.first_scored, out.scored_per_window, out.tokens_scored) == (1, 3, 12)
    described = out.describe()
    assert described["bos_prepended"] is True and described["tokens_scored"] == 12
    assert described["window_offsets"] == [0, 3, 6, 9]


def test_add_bos_false_drops_the_prefix_and_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="headq_core.evaluation.windows"):
        out = token_windows(CharTokenizer(bos=True), TEXTS, window=4, max_tokens=100, add_bos=False,
                            placement="contiguous")
    assert torch.equal(out.ids, torch.tensor(STREAM[:12]).view(3, 4))
    assert "add_bos is false" in caplog.text and "[1]" in caplog.text


def test_add_bos_true_forces_the_bos_token_and_needs_one():
    tok = CharTokenizer()
    assert start_prefix(tok, "auto") == []
    tok.bos_token_id = 7
    assert start_prefix(tok, True) == [7] and start_prefix(tok, "auto") == []
    tok.bos_token_id = None
    with pytest.raises(ValueError, match="dataset.add_bos: true, but the tokenizer has no BOS"):
        start_prefix(tok, True)
    with pytest.raises(ValueError, match="dataset.add_bos"):
        start_prefix(tok, "yes")


@pytest.mark.parametrize("bos", [True, False])
def test_real_tokenizers_with_and_without_a_bos_post_processor(tmp_path, bos):
    save_tiny(tmp_path, bos=bos)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    expected = [tok.convert_tokens_to_ids("^")] if bos else []
    assert tokenizer_prefix(tok) == expected
    out = token_windows(tok, ["hello world", "second text"], window=8, max_tokens=64)
    assert out.ids[:, : len(expected)].tolist() == [expected] * out.ids.shape[0]


def test_spread_windows_lie_evenly_over_the_corpus():
    texts = ["x" * 99]  # 100 tokens with EOS: 25 chunks of 4
    spread = token_windows(CharTokenizer(), texts, window=4, max_tokens=20)
    contiguous = token_windows(CharTokenizer(), texts, window=4, max_tokens=20, placement="contiguous")
    assert spread.offsets.tolist() == [0, 20, 40, 60, 80] and spread.stream_tokens == 100
    assert contiguous.offsets.tolist() == [0, 4, 8, 12, 16]
    with pytest.raises(ValueError, match="dataset.placement"):
        token_windows(CharTokenizer(), texts, window=4, max_tokens=20, placement="random")


def test_evaluator_scores_the_text_after_bos_as_a_direct_computation_does():
    """Dense perplexity = exp(mean NLL of every text token given BOS and the text before it),
    computed here straight from the model's logits."""
    lm = loaded("llama", bos=True)
    doc = evaluate(lm, SPEC, [RunSpec("dense")], window=12, max_tokens=36, heads=False)
    windows = corpus_windows(lm.tokenizer, SPEC, 12, 36)
    assert windows.ids[:, 0].tolist() == [1, 1, 1]
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(windows.ids).logits.double(), -1)
    nll = -logp[:, :-1].gather(-1, windows.ids[:, 1:, None]).squeeze(-1)  # every text token, given BOS
    row = doc["runs"][0]
    assert row["tokens"] == 3 * 11 and doc["dataset"]["tokens_scored"] == 33
    assert doc["dataset"]["bos_prepended"] is True
    assert row["perplexity"] == pytest.approx(math.exp(nll.mean().item()), rel=1e-6)
    assert row["window_nll"] == pytest.approx(nll.sum(dim=1).tolist(), rel=1e-6)


def test_calibration_reads_the_evaluations_windows():
    lm = loaded("llama", bos=True)
    cal = calibrate(lm, SPEC, window=12, max_tokens=36, rank=2)
    doc = evaluate(lm, SPEC, [RunSpec("dense")], window=12, max_tokens=36, heads=False)
    for key in ("bos_prepended", "window_offsets", "tokens_scored", "placement"):
        assert cal.meta[key] == doc["dataset"][key]


def test_decode_loop_through_the_cache_matches_the_evaluator_with_bos_in_place():
    """The prefix is the first token the cache holds; every text token after it is scored."""
    lm = loaded("llama", bos=True)
    cal = calibrate(lm, CorpusSpec(split="calibration"), window=16, max_tokens=32, rank=4)
    k2 = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=3)
    v2 = QuantConfig(bits=2, axis="per_token", group_size=4, residual=2)
    run = RunSpec("kv2_headq", key=k2, value=v2, headq=HeadQConfig(rank=4, side_bits=8))
    doc = evaluate(lm, SPEC, [run], cal, window=24, max_tokens=24, heads=False)
    ids = corpus_windows(lm.tokenizer, SPEC, 24, 24).ids[0]
    assert ids[0].item() == 1
    cache, total = HeadQCache.from_run(run, cal, lm.info), 0.0
    with torch.no_grad():
        for t in range(ids.shape[0] - 1):
            step = lm.model(ids[None, t : t + 1], use_cache=True, **cache_kwargs(lm.model, cache))
            logits = step.logits[0, -1]
            total -= torch.log_softmax(logits.double(), -1)[ids[t + 1]].item()
    assert math.exp(total / 23) == pytest.approx(doc["runs"][0]["perplexity"], rel=1e-3)


@pytest.mark.slow
def test_smollm2_adds_no_prefix_so_its_windows_are_unchanged():
    """SmolLM2's tokenizer starts no sequence with a special token: auto, false and the old cut
    (the EOS-joined stream in order) give the same windows, so its results stay identical."""
    from headq_core.evaluation.corpus import load_texts
    from headq_core.models.loading import BUILTIN_SMOLLM2, load_model

    tok = load_model(BUILTIN_SMOLLM2, device="cpu").tokenizer
    assert tokenizer_prefix(tok) == []
    auto = corpus_windows(tok, SPEC, 256, 1024, placement="contiguous")
    off = corpus_windows(tok, SPEC, 256, 1024, add_bos=False, placement="contiguous")
    stream = []
    for text in load_texts(SPEC):
        stream += tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if len(stream) >= 1024:
            break
    assert torch.equal(auto.ids, off.ids)
    assert torch.equal(auto.ids, torch.tensor(stream[:1024]).view(4, 256))
