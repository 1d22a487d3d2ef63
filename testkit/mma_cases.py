"""The layouts the tensor-core decode kernel is checked on, shared by its GPU tests and
``benchmarks/bench_mma.py``: (name, key bits, key group, value bits, value group, side rank, query
heads, KV heads, dtype, residual tokens, start, softcap, splits). ``start`` is symbolic
(:func:`start_for` turns it into the kernel's argument for a given number of quantized tokens)."""

from __future__ import annotations

import torch

CASES = (
    ("headq_2bit_r8", 2, 32, 2, 32, 8, 32, 8, "bf16", 100, 0, None, None),
    ("plain_2bit", 2, 32, 2, 32, 0, 32, 8, "bf16", 100, 0, None, None),
    ("plain_4bit", 4, 32, 4, 32, 0, 32, 8, "bf16", 100, 0, None, None),
    ("k4_v2_r16_fp16", 4, 32, 2, 32, 16, 32, 8, "fp16", 100, 0, None, None),
    ("one_split", 2, 32, 2, 32, 8, 32, 8, "bf16", 100, 0, None, 1),
    ("many_splits", 2, 32, 2, 32, 8, 32, 8, "bf16", 100, 0, None, 97),
    ("softcap30", 2, 32, 2, 32, 8, 32, 8, "bf16", 100, 0, 30.0, None),
    ("window_start", 2, 32, 2, 32, 8, 32, 8, "bf16", 100, "quantized", None, None),
    ("start_in_residual", 2, 32, 2, 32, 8, 32, 8, "bf16", 100, "residual", None, None),
    ("row_starts", 2, 32, 2, 32, 8, 32, 8, "bf16", 100, "rows", None, None),
    ("gqa8", 2, 32, 2, 32, 8, 64, 8, "bf16", 100, 0, None, None),
    ("gqa12_two_rows", 2, 32, 2, 32, 8, 48, 4, "bf16", 100, 0, None, None),
    ("mha_gq1", 2, 32, 2, 32, 4, 8, 8, "bf16", 100, 0, None, None),
    ("groups16_128", 2, 16, 2, 128, 8, 32, 8, "bf16", 100, 0, None, None),
    ("groups128_64", 2, 128, 2, 64, 8, 32, 8, "bf16", 100, 0, None, None),
    ("no_residual", 2, 32, 2, 32, 8, 32, 8, "bf16", 0, 0, None, None),
)


def start_for(start: int | str, n: int, device: str) -> int | torch.Tensor:
    """The first visible token for ``n`` quantized tokens: inside them ("quantized", off any chunk
    boundary), inside the residual ("residual"), per batch row of 2 ("rows"), or the int itself."""
    if start == "quantized":
        return n * 5 // 8 + 3
    if start == "residual":
        return n + 8
    if start == "rows":
        return torch.tensor([0, n * 3 // 8], device=device)
    return int(start)
