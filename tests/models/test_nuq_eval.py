"""Non-uniform codebooks (``codebook="nuq"``) on a real (tiny) model: the calibration learns them
(shapes, pinned endpoints, deterministic), the evaluator's perplexity against a token-by-token decode
loop reading ``fake_quantize`` with the calibration's codebooks and against ``HeadQCache``, and the
refusals of a nuq run without a calibration (or with one made before the codebooks existed)."""

import math

import pytest
import torch

from headq_core.config import NUQ_BITS, QuantConfig, RunSpec
from headq_core.evaluation.calibrate import Calibration, calibrate
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from headq_core.evaluation.windows import corpus_windows
from headq_core.method.codebook import uniform_levels
from headq_core.runtime.cache import HeadQCache
from tests.models.decode_loop import decode_nll, fake_quantized_nll
from tests.models.tiny import loaded

CAL, SPEC = CorpusSpec(split="calibration"), CorpusSpec(split="eval")
KEY = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=2, codebook="nuq")
VALUE = QuantConfig(bits=3, axis="per_token", group_size=16, codebook="nuq", outliers=0.05)
RUN = RunSpec("nuq", key=KEY, value=VALUE)


def test_the_calibration_learns_a_codebook_per_layer_side_and_width():
    lm = loaded("llama", head_dim=32, initializer_range=0.2)
    cal = calibrate(lm, CAL, window=40, max_tokens=80, rank=2)
    assert cal.has_codebooks
    for side in ("key", "value"):
        for bits in NUQ_BITS:
            table = cal.codebooks[f"{side}_codebook{bits}"]
            assert table.shape == (2, 1 << bits) and table.dtype == torch.float32
            assert (table[:, 0] == 0).all() and (table[:, -1] == 1).all() and (table.diff() >= 0).all()
            assert not torch.equal(table[0], uniform_levels(bits))  # learned, not the start
    again = calibrate(lm, CAL, window=40, max_tokens=80, rank=2)
    assert all(torch.equal(again.codebooks[n], t) for n, t in cal.codebooks.items())


def _decode_loop_nll(lm, ids, cal):
    """NLL sum of a token-by-token decode loop whose attention reads the leading cached tokens through
    ``fake_quantize`` with the calibration's codebooks (the decode rule of ``residual``)."""
    return fake_quantized_nll(lm.model, ids, KEY, VALUE,
                              lambda layer: {"codebook": cal.layer_codebook(layer, "key", 2)},
                              lambda layer: {"codebook": cal.layer_codebook(layer, "value", 3)})


def test_nuq_evaluates_as_a_decode_loop_and_a_cache_reads_it():
    lm = loaded("llama", head_dim=32, initializer_range=0.2)
    cal = calibrate(lm, CAL, window=12, max_tokens=24, rank=2)
    uniform = RunSpec("uniform", key=QuantConfig(bits=2, axis="per_channel", group_size=4, residual=2),
                      value=QuantConfig(bits=3, axis="per_token", group_size=16, outliers=0.05))
    doc = evaluate(lm, SPEC, [RunSpec("dense"), RUN, uniform], cal, window=12, max_tokens=24, heads=True)
    rows = {r["name"]: r for r in doc["runs"]}
    windows = corpus_windows(lm.tokenizer, SPEC, 12, 24).ids
    nll = sum(_decode_loop_nll(lm, w, cal) for w in windows) / (2 * 11)
    assert rows["nuq"]["nll"] == pytest.approx(nll, rel=1e-5)
    assert rows["nuq"]["nll"] != rows["uniform"]["nll"]  # the calibration's levels
    assert rows["nuq"]["effective_bits"] == rows["uniform"]["effective_bits"]
    assert rows["nuq"]["spec"]["key"]["codebook"] == "nuq"
    assert {h["run"] for h in doc["heads"]} >= {"nuq"}
    cache_nll = decode_nll(lm.model, windows[0], HeadQCache.from_run(RUN, cal, lm.info))
    assert cache_nll == pytest.approx(_decode_loop_nll(lm, windows[0], cal), rel=1e-5)
    assert math.isfinite(cache_nll)


def test_a_nuq_run_without_its_calibration_is_refused_before_evaluation():
    lm = loaded("llama")
    steps = []
    with pytest.raises(ValueError, match="calibration: run 'nuq' needs a calibration \\(non-uniform"):
        evaluate(lm, SPEC, [RUN], window=12, max_tokens=24, progress=lambda f, s: steps.append(s))
    cal = calibrate(lm, CAL, window=12, max_tokens=24, rank=2)
    old = Calibration(cal.eigenvalues, cal.basis, cal.meta, cal.key_amax, cal.value_amax)  # before codebooks
    with pytest.raises(ValueError, match="calibration: run 'nuq' needs non-uniform codebooks \\(nuq\\); this "
                                         "calibration was made without"):
        evaluate(lm, SPEC, [RUN], old, window=12, max_tokens=24, progress=lambda f, s: steps.append(s))
    assert steps == []
    with pytest.raises(ValueError, match="calibration: the key side's codebook 'nuq' needs a calibration"):
        HeadQCache.from_run(RUN, None, lm.info)
    with pytest.raises(ValueError, match="calibration: made without the non-uniform codebooks"):
        HeadQCache.from_run(RUN, old, lm.info)
