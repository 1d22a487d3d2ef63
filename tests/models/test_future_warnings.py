"""The core paths run without transformers' FutureWarnings (deprecated names, e.g. the cache keyword
``past_key_values`` that transformers 5.25 renamed ``cache`` and removes in 5.40): calibration,
evaluation, a decode loop through HeadQCache and generate() with it, each with FutureWarning as an
error. ``models.calls.cache_kwargs`` picks the keyword the installed release expects."""

from __future__ import annotations

import pytest
import torch

from headq_core.config import HeadQConfig, QuantConfig, RunSpec
from headq_core.evaluation.calibrate import calibrate
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from headq_core.models.calls import cache_keyword, cache_kwargs
from headq_core.runtime.cache import HeadQCache
from tests.models.tiny import loaded

K2 = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=3)
V2 = QuantConfig(bits=2, axis="per_token", group_size=4, residual=2)
pytestmark = pytest.mark.filterwarnings("error::FutureWarning")


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_core_paths_raise_no_future_warning(family):
    lm = loaded(family)
    cal = calibrate(lm, CorpusSpec(split="calibration"), window=16, max_tokens=16, rank=2)
    run = RunSpec("kv2_headq", key=K2, value=V2, headq=HeadQConfig(rank=2))
    evaluate(lm, CorpusSpec(split="eval"), [RunSpec("dense"), run], cal, window=12, max_tokens=12)
    ids = torch.randint(3, 90, (1, 6), generator=torch.Generator().manual_seed(0))
    cache = HeadQCache.from_run(run, cal, lm.info, lm.model.config)
    with torch.no_grad(), cache.attached(lm.model):
        lm.model(ids, use_cache=True, **cache_kwargs(lm.model, cache))
        lm.model(ids[:, :1], use_cache=True, **cache_kwargs(lm.model, cache))
    cache = HeadQCache.from_run(run, cal, lm.info, lm.model.config)
    out = lm.model.generate(ids, **cache_kwargs(lm.model, cache), max_new_tokens=4, do_sample=False,
                            pad_token_id=0)
    assert out.shape == (1, 10) and cache.get_seq_length() == 9


def test_cache_keyword_follows_the_forward_signature():
    """``cache`` where ``forward`` takes it (transformers >= 5.25), else ``past_key_values``."""

    class Old:
        def forward(self, input_ids=None, past_key_values=None): ...

    class New:
        def forward(self, input_ids=None, cache=None): ...

    assert cache_keyword(Old()) == "past_key_values" and cache_keyword(New()) == "cache"
    assert cache_kwargs(New(), 7) == {"cache": 7}
