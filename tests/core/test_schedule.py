"""The decode rule against a brute-force simulation of a decode loop that appends one token a step."""

import pytest
import torch

from headq_core.config import QuantConfig
from headq_core.method.schedule import decode_mask, leave_step, quantized_count


def simulate(n_steps, cfg):
    """Run a toy cache: each step appends a token, then quantizes every complete group of
    seq_group tokens older than the `residual` newest ones. Row t: what query t reads quantized."""
    g = cfg.group_size if cfg.axis == "per_channel" else 1
    quantized = []  # token ids in quantized form
    full = []  # token ids in full precision, oldest first
    rows = []
    for t in range(n_steps):
        full.append(t)
        while len(full) - cfg.residual >= g:
            quantized.extend(full[:g])
            full = full[g:]
        rows.append([j in quantized for j in range(n_steps)])
    return torch.tensor(rows, dtype=torch.bool)


@pytest.mark.parametrize("axis", ["per_channel", "per_token"])
@pytest.mark.parametrize("group_size", [1, 4, 8])
@pytest.mark.parametrize("residual", [0, 3, 8])
def test_decode_mask_matches_simulation(axis, group_size, residual):
    cfg = QuantConfig(bits=2, axis=axis, group_size=group_size, residual=residual)
    n = 37
    expected = simulate(n, cfg)
    assert torch.equal(decode_mask(n, n, cfg), expected)
    # queries offset inside a longer cache: the last 10 rows
    assert torch.equal(decode_mask(10, n, cfg, offset=n - 10), expected[-10:])
    for t in range(n):
        assert quantized_count(t + 1, cfg) == int(expected[t].sum())
    j = torch.arange(n)
    first = leave_step(j, cfg)
    for jj in range(n):
        col = expected[:, jj]
        want = int(col.nonzero()[0]) if col.any() else None
        if want is not None:
            assert int(first[jj]) == want
        else:
            assert int(first[jj]) >= n


def test_dense_and_bad_arguments():
    assert not decode_mask(4, 4, None).any()
    assert quantized_count(10, None) == 0
    cfg = QuantConfig()
    with pytest.raises(ValueError, match="offset"):
        decode_mask(4, 4, cfg, offset=1)
    with pytest.raises(ValueError, match="n_tokens"):
        quantized_count(-1, cfg)
