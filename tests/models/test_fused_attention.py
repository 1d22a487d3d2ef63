"""Structural masks (no [L, L] mask from transformers) and the fused FlexAttention path against the
materialised reference: masks equal transformers' own on every verified family, NLL per token on
every family and run kind, metrics on sampled rows, the fallback when a real mask is needed."""

import pytest
import torch

from headq_core.config import HeadQConfig, QuantConfig, RunSpec, ValuePolicyConfig
from headq_core.evaluation.attention_paths import attention_path, mask_context
from headq_core.evaluation.blockwise_attention import BlockwiseRunAttention
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from headq_core.evaluation.fused_attention import FusedRunAttention
from headq_core.evaluation.run_attention import RunAttention
from headq_core.models.adapter import VERIFIED_MODEL_TYPES, attention_handler
from headq_core.models.attention import AttentionCall, dense_attention, structural_masks
from tests.models.tiny import float64_model, loaded

K2 = QuantConfig(bits=2, axis="per_channel", group_size=32, residual=40)
V2 = QuantConfig(bits=2, axis="per_token", group_size=4, residual=24)
ONLINE = ValuePolicyConfig(mode="online", keep_fraction=0.2)


def _ids(length: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randint(3, 90, (batch, length), generator=torch.Generator().manual_seed(seed))


def _calls(model, ids, structural: bool, **kwargs) -> list[AttentionCall]:
    """Every layer's attention call of one forward pass (dense attention)."""
    calls: list[AttentionCall] = []

    def handler(call: AttentionCall) -> torch.Tensor:
        calls.append(call)
        return dense_attention(call)

    context = structural_masks() if structural else torch.no_grad()
    with torch.no_grad(), attention_handler(model, handler), context:
        model(ids, use_cache=False, **kwargs)
    return calls


@pytest.mark.parametrize("family", VERIFIED_MODEL_TYPES)
def test_structural_masks_are_transformers_masks_on_every_family(family):
    lm = loaded(family)
    ids = _ids(24)
    real, structural = _calls(lm.model, ids, False), _calls(lm.model, ids, True)
    assert len(real) == len(structural) > 0
    for a, b in zip(real, structural, strict=True):
        assert a.mask is not None and b.mask is None  # no [L, L] mask is built
        assert b.sliding_window == a.sliding_window
        assert torch.equal(b.allowed().expand_as(a.allowed()), a.allowed()), (family, a.layer)
        rows = torch.tensor([0, 3, 23])
        assert torch.equal(b.row_mask(rows)[0, 0], a.allowed()[0, 0, rows])
    window = getattr(lm.model.config, "sliding_window", None)
    if window and window < 24:  # a sliding layer (0 or None: none) whose window 24 tokens exceed
        assert window in {c.sliding_window for c in structural}, family


def test_a_padded_batch_keeps_transformers_mask_under_structural_masks():
    lm = loaded("llama")
    ids = _ids(12, batch=2)
    padding = torch.ones(2, 12, dtype=torch.long)
    padding[1, :3] = 0
    calls = _calls(lm.model, ids, True, attention_mask=padding)
    assert all(c.mask is not None for c in calls)
    assert not bool(calls[0].allowed()[1, 0, 5, :3].any())  # the padded keys stay hidden


def _nll(model, ids, handler, structural: bool) -> torch.Tensor:
    """float64 [b, L - 1] NLL per token with ``handler`` as every layer's attention."""
    context = structural_masks() if structural else torch.no_grad()
    with torch.no_grad(), attention_handler(model, handler), context:
        logits = model(ids, use_cache=False).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2).double(), ids[:, 1:], reduction="none")


@pytest.mark.parametrize("family", VERIFIED_MODEL_TYPES)
def test_fused_nll_equals_materialised_on_every_family(family):
    model = float64_model(family)
    ids = _ids(512)
    small_groups = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=2)
    run = RunSpec("kv2_hq_a2", key=small_groups, value=V2, headq=HeadQConfig(rank=4, basis="random"),
                  value_policy=ONLINE)
    reference = _nll(model, ids, RunAttention(run), structural=False)
    fused = _nll(model, ids, FusedRunAttention(run), structural=True)
    torch.testing.assert_close(fused, reference, rtol=1e-9, atol=0)
    assert not torch.equal(fused, _nll(model, ids, RunAttention(RunSpec("dense")), structural=False))


@pytest.mark.parametrize("run", [
    RunSpec("dense"), RunSpec("k2", key=K2), RunSpec("v2", value=V2), RunSpec("kv2", key=K2, value=V2),
    RunSpec("k2_hq", key=K2, headq=HeadQConfig(rank=4, basis="random")),
    RunSpec("kv2_oracle", key=K2, value=V2, value_policy=ValuePolicyConfig(mode="oracle", keep_fraction=0.2)),
], ids=lambda r: r.name)
@pytest.mark.parametrize("family", ["llama", "gemma2"])  # gemma2: softcap and a sliding layer
def test_fused_nll_equals_materialised_on_every_run_kind(family, run):
    model = float64_model(family)
    ids = _ids(300, seed=1, batch=2)
    reference = _nll(model, ids, RunAttention(run), structural=False)
    fused = _nll(model, ids, FusedRunAttention(run), structural=True)
    torch.testing.assert_close(fused, reference, rtol=1e-9, atol=0)
    with_mask = _nll(model, ids, FusedRunAttention(run), structural=False)  # falls back to blocks
    torch.testing.assert_close(with_mask, reference, rtol=1e-9, atol=0)


@pytest.mark.parametrize("family", ["llama", "gemma2", "granite"])
def test_fused_float32_is_as_close_to_the_float64_truth_as_the_reference(family):
    """In float32 the two paths round differently; on these deliberately sharp tiny models the
    reference itself is up to ~1e-4 (relative NLL) from the float64 truth, the fused path no further."""
    run = RunSpec("kv2_hq", key=K2, value=V2, headq=HeadQConfig(rank=4, basis="random"))
    ids = _ids(512, seed=2)
    truth = _nll(float64_model(family), ids, RunAttention(run), structural=False)
    model = loaded(family).model
    errors = [((_nll(model, ids, handler, structural) - truth).abs() / truth).max().item()
              for handler, structural in ((RunAttention(run), False), (FusedRunAttention(run), True))]
    assert errors[1] <= 2 * errors[0] + 1e-6, errors


def test_fused_evaluation_gives_the_reference_numbers_and_records_its_path():
    lm = loaded("gemma2")
    runs = [RunSpec("dense"), RunSpec("k2", key=K2),
            RunSpec("kv2_a2", key=K2, value=V2, value_policy=ONLINE)]
    kwargs = dict(window=160, max_tokens=320, head_windows=1, head_rows=32)
    reference = evaluate(lm, CorpusSpec(split="eval"), runs, attention="blockwise", **kwargs)
    fused = evaluate(lm, CorpusSpec(split="eval"), runs, attention="fused", **kwargs)
    for a, b in zip(reference["runs"], fused["runs"], strict=True):
        torch.testing.assert_close(torch.tensor(b["window_nll"]), torch.tensor(a["window_nll"]),
                                   rtol=1e-5, atol=0)
    assert fused["dataset"]["attention"]["head_windows"] == "fused"
    assert fused["dataset"]["attention"]["head_rows"] == reference["dataset"]["attention"]["head_rows"]
    for a, b in zip(reference["heads"], fused["heads"], strict=True):
        for name, value in a.items():
            if isinstance(value, float):
                assert b[name] == pytest.approx(value, rel=1e-5, abs=1e-9), name


def test_the_paths_auto_chooses_and_where_masks_are_structural():
    assert attention_path("auto", 1024, metrics=True, device="cuda") == "materialised"
    assert attention_path("auto", 4096, metrics=True, device="cuda") == "fused"
    assert attention_path("auto", 1024, metrics=False, device="cpu") == "blockwise"
    assert attention_path("fused", 1024, metrics=True) == "fused"
    lm = loaded("llama")
    with mask_context(lm.model, "fused"):
        assert _calls(lm.model, _ids(8), structural=False)[0].mask is None
    with mask_context(lm.model, "materialised"):
        assert _calls(lm.model, _ids(8), structural=False)[0].mask is not None


class _Scores(FusedRunAttention):
    """Records the A² column sums of both implementations for each layer's call."""

    def __init__(self, run, found: list):
        super().__init__(run)
        self.found = found

    def _a2_scores(self, call, key_eff, blocks, until=None):
        fused = super()._a2_scores(call, key_eff, blocks, until)
        blockwise = BlockwiseRunAttention._a2_scores(self, call, key_eff, blocks, until)
        self.found.append((fused, blockwise))
        return fused


@pytest.mark.parametrize("mode", ["online", "oracle"])
@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_fused_a2_column_sums_equal_the_blockwise_ones(family, mode):
    run = RunSpec("kv2_hq_a2", key=K2, value=V2, headq=HeadQConfig(rank=4, basis="random"),
                  value_policy=ValuePolicyConfig(mode=mode, keep_fraction=0.2))
    found: list = []
    _nll(float64_model(family), _ids(200, seed=4, batch=2), _Scores(run, found), structural=True)
    assert len(found) == 2  # one policy per layer
    for fused, blockwise in found:
        assert fused.shape == blockwise.shape == (2, 2, 200) and fused.dtype == torch.float64
        assert float(blockwise.min()) > 0
        torch.testing.assert_close(fused, blockwise, rtol=1e-9, atol=0)


def test_the_job_spec_takes_the_fused_path():
    from headq_spec.jobs import DatasetSpec

    assert DatasetSpec(window=32768, attention="fused").attention == "fused"


def test_a_handler_builds_each_block_mask_once_for_all_layers_of_a_window_length():
    """A block mask depends on the layout (call kind, segments, sliding window, window length), not
    on the layer: a kv2 + A² run builds three for the layers of a plain model (output, rows'
    log-sum-exps, column pass), three more per sliding window, and again for a new window length,
    where a reused handler gives a fresh handler's numbers."""
    run = RunSpec("kv2_hq_a2", key=K2, value=V2, headq=HeadQConfig(rank=4, basis="random"),
                  value_policy=ONLINE)
    llama = FusedRunAttention(run)
    _nll(float64_model("llama"), _ids(120, seed=5), llama, structural=True)
    assert len(llama._block_masks) == 3  # two layers, one layout each of the three calls
    model, handler = float64_model("gemma2"), FusedRunAttention(run)  # a sliding and a full layer
    _nll(model, _ids(120, seed=5), handler, structural=True)
    assert len(handler._block_masks) == 6
    longer = _ids(200, seed=6)
    reused = _nll(model, longer, handler, structural=True)
    assert len(handler._block_masks) == 12
    torch.testing.assert_close(reused, _nll(model, longer, FusedRunAttention(run), structural=True),
                               rtol=1e-12, atol=0)
