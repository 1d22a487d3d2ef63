"""Retrieval jobs (issue 16): the seeded prompt builder, the exact-match scorer, the first-step
needle attention against independent computations, and the pipeline on tiny saved models of two
families through HeadQCache and generate(); a real-model check on SmolLM2 (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headq_core.config import QuantConfig, RunSpec
from headq_core.evaluation.calibrate import Calibration, calibrate
from headq_core.evaluation.corpus import CorpusSpec, load_texts
from headq_core.evaluation.retrieval_attention import first_step_attention, head_rows, new_cache
from headq_core.evaluation.retrieval_prompts import (
    build_prompt,
    choose_template,
    encode,
    exact_match,
    frame,
    haystack_ids,
)
from headq_core.evaluation.run_attention import RunAttention
from headq_core.models.adapter import attention_handler
from headq_core.models.loading import load_model
from headq_core.runtime.cache import HeadQCache
from headq_spec.results import ResultsDocument
from tests.models.tiny import save_tiny
from workers.pipeline import execute

K2 = {"bits": 2, "axis": "per_channel", "group_size": 4, "residual": 0}
V2 = {"bits": 2, "axis": "per_token", "group_size": 4, "residual": 4}
CHAT = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}<assistant>"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny saved models (real character-level fast tokenizer) of two families."""
    folders = {}
    for family in ("llama", "qwen2"):
        folders[family] = tmp_path_factory.mktemp("models") / family
        save_tiny(folders[family], family)
    return folders


@pytest.fixture(scope="module")
def llama(models):
    return load_model(str(models["llama"]), device="cpu")


@pytest.fixture(scope="module")
def calibration(llama):
    return calibrate(llama, CorpusSpec(split="calibration"), window=16, max_tokens=64, rank=4)


@pytest.fixture(scope="module")
def haystack(llama):
    return haystack_ids(llama.tokenizer, load_texts(CorpusSpec(split="eval")), 4000)


def _text(tok, ids: list[int]) -> str:
    """The characters of ``ids`` (the tiny tokenizer's ``decode`` puts spaces between tokens)."""
    return "".join(tok.convert_ids_to_tokens(ids))


def _find(ids: list[int], part: list[int]) -> list[int]:
    return [i for i in range(len(ids) - len(part) + 1) if ids[i : i + len(part)] == part]


@pytest.mark.parametrize("template", ["plain", "chat"])
@pytest.mark.parametrize(("length", "depth"), [(256, 0.0), (300, 33.0), (300, 50.0), (420, 100.0)])
def test_prompt_has_its_length_and_one_needle_at_its_depth(llama, haystack, template, length, depth):
    tok = llama.tokenizer
    tok.chat_template = CHAT if template == "chat" else None
    p = build_prompt(tok, haystack, length=length, depth=depth, sample=1, seed=5, template=template)
    assert len(p.ids) == length
    needle = encode(tok, f" The secret number of {p.name} is {p.number}.")
    assert _find(p.ids, needle) == [p.needle_start] and p.needle_tokens == len(needle)
    head, tail = frame(tok, template, p.name)
    room = length - len(head) - len(needle) - len(tail)
    assert abs(p.needle_start - (len(head) + depth / 100 * room)) <= 1
    text = _text(tok, p.ids)
    assert text.count(p.number) == 1 and len(p.number) == 7 and p.number.isdigit()
    assert (text.startswith("<user>") and "<assistant>" in text) == (template == "chat")
    assert _text(tok, p.ids[-len(tail):]).endswith(f"The secret number of {p.name} is")
    tok.chat_template = None


def test_prompts_are_seeded(llama, haystack):
    tok = llama.tokenizer
    make = lambda **kw: build_prompt(tok, haystack, length=300, depth=50.0, **kw)  # noqa: E731
    assert make(seed=3).ids == make(seed=3).ids
    assert make(seed=3).ids != make(seed=4).ids and make(sample=0).ids != make(sample=1).ids


def test_template_choice_and_refusals(llama, haystack):
    tok = llama.tokenizer
    assert choose_template(tok, "auto") == "plain"
    with pytest.raises(ValueError, match="retrieval.template: the tokenizer has no chat template"):
        choose_template(tok, "chat")
    tok.chat_template = CHAT
    assert choose_template(tok, "auto") == "chat"
    tok.chat_template = None
    with pytest.raises(ValueError, match=r"retrieval.lengths.2: 100 tokens leave no room for haystack"):
        build_prompt(tok, haystack, length=100, depth=0.0, field="retrieval.lengths.2")
    with pytest.raises(ValueError, match=r"retrieval.lengths: 9000 tokens need \d+ haystack tokens; the "
                                         r"dataset gives 4000"):
        build_prompt(tok, haystack, length=9000, depth=0.0)


@pytest.mark.parametrize(("text", "number", "ok"), [
    (" 4829173.", "4829173", True), ("4 8 2 9 1 7 3 and more", "4829173", True),
    (" 4,829,173", "4829173", True), (" 48291734", "4829173", False), (" 482917", "4829173", False),
    ("It is 4829172.", "4829173", False), ("no number", "4829173", False),
    ("4829173, then 12", "4829173", True), ("12 and 4829173", "4829173", False)])
def test_exact_match(text, number, ok):
    assert exact_match(text, number) is ok


def _eager_last_row(lm, ids):
    """Dense attention of the last position [layers, heads, n] from transformers' own eager attention."""
    before = lm.model.config._attn_implementation
    lm.model.set_attn_implementation("eager")
    try:
        out = lm.model(ids, output_attentions=True, use_cache=False)
    finally:
        lm.model.set_attn_implementation(before)
    return torch.stack([a[0, :, -1].double() for a in out.attentions])


def _evaluator_last_row(lm, ids, run, cal):
    """The run's decode-exact attention of the last position at layer 0 [heads, n], from the
    teacher-forced evaluator (layer 0's queries and keys are the dense ones in both paths)."""
    views = {}
    handler = RunAttention(run, basis_for=cal.layer_basis, sink=lambda v: views.setdefault(v.call.layer, v))
    with torch.no_grad(), attention_handler(lm.model, handler):
        lm.model(ids, use_cache=False)
    view = views[0]
    return torch.softmax(view.call.finish(view.raw).double(), -1)[0, :, -1]


@pytest.mark.parametrize("headq", [None, {"rank": 4, "side_bits": 8}])
def test_first_step_attention_matches_independent_computations(llama, haystack, calibration, headq):
    p = build_prompt(llama.tokenizer, haystack, length=260, depth=40.0)
    ids, first = torch.tensor([p.ids]), 7
    cal = calibration
    run = RunSpec.from_dict({"name": "k2", "key": K2, **({"headq": headq} if headq else {})})
    dense = first_step_attention(llama, ids, first, new_cache(llama, RunSpec("dense"), None))
    quant = first_step_attention(llama, ids, first, new_cache(llama, run, cal))
    full = torch.cat([ids, torch.tensor([[first]])], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(dense, _eager_last_row(llama, full), rtol=1e-4, atol=1e-6)
        expected = _evaluator_last_row(llama, full, run, cal)
    torch.testing.assert_close(quant[0], expected, rtol=1e-4, atol=1e-6)
    rows = head_rows("k2", p.describe(), dense, quant, llama.info.kv_heads)
    assert len(rows) == llama.info.layers * llama.info.heads
    a, b = dense[0].numpy(), expected.numpy()
    for row in rows[: llama.info.heads]:  # layer 0, against numpy
        h, s, n = row["head"], p.needle_start, p.needle_tokens
        assert row["needle_mass_dense"] == pytest.approx(a[h, s : s + n].sum(), rel=1e-5)
        assert row["needle_mass"] == pytest.approx(b[h, s : s + n].sum(), rel=1e-4)
        assert row["needle_mass_lost"] == pytest.approx(row["needle_mass_dense"] - row["needle_mass"])
        kl = float(np.sum(a[h] * (np.log(a[h]) - np.log(b[h]))))
        assert row["attn_kl"] == pytest.approx(kl, rel=1e-3, abs=1e-9)
        assert row["kv_head"] == h // (llama.info.heads // llama.info.kv_heads)
    assert max(r["attn_kl"] for r in rows) > 0


def _spec(folder, runs, **retrieval):
    options = {"lengths": [256, 320], "depths": [0, 100], "new_tokens": 3, **retrieval}
    return {"kind": "retrieval", "model": {"id": str(folder), "device": "cpu"},
            "dataset": {"source": "builtin", "name": "sotu", "window": 16, "max_tokens": 3000},
            "runs": runs, "retrieval": options, "seed": 1}


def _greedy(lm, ids, n):
    """Greedy answer ids without any cache: argmax of a full forward per token."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(lm.model(torch.tensor([out]), use_cache=False).logits[0, -1].argmax()))
    return out[len(ids):]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_pipeline_answers_through_the_quantized_cache(models, family):
    folder = models[family]
    cal, blob = execute({"kind": "calibration", "model": {"id": str(folder), "device": "cpu"},
                         "dataset": {"window": 16, "max_tokens": 64}, "calibration": {"rank": 4}},
                        calibration_blob=None)
    runs = [{"name": "dense"}, {"name": "k2", "key": K2},
            {"name": "k2 residual", "key": {**K2, "residual": 512}},
            {"name": "k2+headq4", "key": K2, "headq": {"rank": 4, "side_bits": 8}},
            {"name": "kv2+headq4+a2", "key": K2, "value": V2, "headq": {"rank": 4, "side_bits": 8},
             "value_policy": {"mode": "online", "keep_fraction": 0.25}}]
    stages = []
    spec = {**_spec(folder, runs), "calibration_job": "job-1"}
    doc, artifact = execute(spec, calibration_blob=blob, progress=lambda f, s: stages.append(s))
    ResultsDocument.model_validate(doc)
    assert doc["kind"] == "retrieval" and artifact is None and any("retrieve k2" in s for s in stages)
    block, info = doc["retrieval"], doc["model"]
    assert block["template"] == "plain" and len(block["prompts"]) == 4 and len(block["answers"]) == 4 * 5
    assert len(doc["heads"]) == 4 * 4 * info["layers"] * info["heads"]  # quantized runs x prompts x heads
    lm = load_model(str(folder), device="cpu")
    from headq_core.evaluation.retrieval import build_prompts
    from headq_spec.jobs import JobSpec

    job = JobSpec.model_validate(spec)
    prompts, _, _ = build_prompts(lm, CorpusSpec(split="eval"), job.retrieval, 3000, seed=1)
    texts = {(a["run"], a["prompt"]): a["text"] for a in block["answers"]}
    for p in prompts[:2]:
        assert texts["dense", p.index] == lm.tokenizer.decode(_greedy(lm, p.ids, 3), skip_special_tokens=True)
    # a residual window longer than the prompt quantizes nothing: the dense answers and attention
    assert all(texts["k2 residual", i] == texts["dense", i] for i in range(4))
    by_run = {r["name"]: r for r in doc["runs"]}
    assert by_run["k2 residual"]["attn_kl"] == pytest.approx(0.0, abs=1e-9)
    assert by_run["k2"]["attn_kl"] > 0 and by_run["kv2+headq4+a2"]["attn_kl"] > 0
    for row in doc["runs"]:
        grid = block["accuracy"][row["name"]]
        correct = [a["correct"] for a in block["answers"] if a["run"] == row["name"]]
        assert row["accuracy"] == pytest.approx(np.mean(correct)) == pytest.approx(np.mean(grid))
    assert doc["calibration"]["job_id"] == "job-1"
    assert doc["calibration"]["tokens"] == Calibration.from_bytes(blob).meta["tokens"]
    assert by_run["k2+headq4"]["effective_bits"]["key"] > by_run["k2"]["effective_bits"]["key"]


def test_cache_of_a_quantized_run_is_the_headq_cache(llama):
    cache = new_cache(llama, RunSpec("k2", key=QuantConfig(**K2)), None)
    assert isinstance(cache, HeadQCache)


def test_bad_lengths_fail_naming_the_field(models, tmp_path):
    folder = models["llama"]
    with pytest.raises(ValueError, match=r"retrieval.lengths.1: 3000 tokens and 3 answer tokens exceed the "
                                         r"model's maximum context \(2048\)"):
        execute(_spec(folder, [{"name": "dense"}], lengths=[256, 3000]), calibration_blob=None)
    short = tmp_path / "short.txt"
    short.write_text("A short haystack. " * 3)
    spec = _spec(folder, [{"name": "dense"}], lengths=[320])
    spec["dataset"] = {"source": "files", "files": [str(short)], "window": 16, "max_tokens": 3000}
    with pytest.raises(ValueError, match=r"retrieval.lengths.0: 320 tokens need \d+ haystack tokens; the "
                                         r"dataset gives \d+"):
        execute(spec, calibration_blob=None)


@pytest.mark.slow
def test_smollm2_dense_finds_the_needle_at_256_tokens():
    """Measured (10 answer tokens, depths 0, 25, 50, 75, 100%): SmolLM2-135M-Instruct answers 19 of
    20 prompts of 128-1024 tokens with its chat template, 20 of 20 with the plain prompt; at 256 tokens
    every depth; at 2048 tokens (study, 12 tokens) every depth of 0, 50, 100%."""
    from headq_core.evaluation.retrieval import retrieve
    from headq_core.models.loading import BUILTIN_SMOLLM2
    from headq_spec.retrieval import RetrievalOptions

    lm = load_model(BUILTIN_SMOLLM2, device="cpu")
    options = RetrievalOptions(lengths=[256], depths=[50.0], new_tokens=10, heads=False)
    doc = retrieve(lm, CorpusSpec(split="eval"), [{"name": "dense"}], options=options, max_tokens=4000)
    assert doc["retrieval"]["template"] == "chat"
    assert doc["runs"][0]["accuracy"] == 1.0, doc["retrieval"]["answers"]


def test_generate_through_the_kernel_path_answers_as_the_dequantized_path(monkeypatch):
    """The Triton decode kernel (interpreted on a CPU) that ``answer`` takes on CUDA gives the answer
    ids of the dequantizing path."""
    import headq_core.runtime.cache as cache_module
    from headq_core.evaluation.retrieval_attention import answer
    from headq_core.runtime.cache import HeadQCacheLayer
    from tests.models.tiny import loaded

    lm = loaded("llama", head_dim=16)
    run = RunSpec.from_dict({"name": "kv2", "key": K2, "value": {**V2, "residual": 0}})
    ids = torch.randint(3, 90, (1, 40), generator=torch.Generator().manual_seed(0))
    off = answer(lm, ids, new_cache(lm, run, None), 4)
    calls = []
    real = cache_module.decode_attention
    monkeypatch.setattr(cache_module, "decode_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(HeadQCacheLayer, "kernel", "triton")
    assert answer(lm, ids, new_cache(lm, run, None), 4) == off
    assert len(calls) == 3 * lm.info.layers  # every decode step after the prefill, every layer
