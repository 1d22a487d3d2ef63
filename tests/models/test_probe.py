"""The runtime probe for model types outside the verified list: a standard one is accepted (once per
model object), a non-standard one is refused with what failed."""

import logging

import pytest
import torch

from headq_core.models.adapter import VERIFIED_MODEL_TYPES, architecture_of, capture, model_geometry
from tests.models.tiny import build

# helium (Kyutai) is a plain Llama-style model deliberately left off the verified list
UNLISTED = dict(family="helium", num_key_value_heads=2, head_dim=8)


def _forwards(model) -> list[int]:
    """A list that grows by one per forward pass of ``model``."""
    seen: list[int] = []
    model.register_forward_hook(lambda *_: seen.append(1))
    return seen


def test_unlisted_standard_family_passes_the_probe_once(caplog):
    assert UNLISTED["family"] not in VERIFIED_MODEL_TYPES
    model = build(**UNLISTED)
    forwards = _forwards(model)
    with caplog.at_level(logging.INFO, logger="headq_core.models.probe"):
        assert architecture_of(model) == "helium"
        assert model_geometry(model)[:4] == (2, 4, 2, 8)
    assert forwards == [1, 1]  # the model's eager attention, then headq; the verdict is kept
    assert caplog.messages == ["model_type helium is not in the verified list; probe passed"]
    ids = torch.randint(3, 90, (1, 9))
    seen = {}
    with torch.no_grad():
        ref = model(ids).logits
        with capture(model, lambda layer, q, k, v: seen.__setitem__(layer, k)):
            out = model(ids).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert sorted(seen) == [0, 1]


def _refused_once(model, reason: str) -> None:
    """``architecture_of`` refuses ``model`` naming ``reason``, twice from one probe."""
    forwards = _forwards(model)
    match = f"architecture {model.config.model_type!r} is not in the verified list.*{reason}"
    for _ in range(2):
        with pytest.raises(ValueError, match=match):
            architecture_of(model)
    assert len(forwards) == 2  # probed once (eager, headq): the verdict is kept on the model


def test_gpt_oss_attention_sinks_are_refused():
    """gpt-oss adds learned attention sinks to the softmax: not standard attention."""
    model = build("gpt_oss", num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2)
    _refused_once(model, r"logits differ by 0\.\d+ from the model's own eager attention")


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("num_hidden_layers", 3, r"layer\(s\) \[2\] never reached the attention interface"),
        ("head_dim", 4, r"layer 0: query / key / value shapes .* disagree with the config"),
    ],
    ids=["layers", "head_dim"],
)
def test_config_disagreeing_with_the_computation_is_refused(field, value, reason):
    model = build(**UNLISTED)
    setattr(model.config, field, value)  # the model was built from the config before this change
    _refused_once(model, reason)
