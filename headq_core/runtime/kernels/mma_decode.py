"""Decode attention on tensor cores (``mma_decode.cu``, compiled at first use by NVRTC).

The CUDA C++ kernel unpacks the codes straight into ``mma.sync`` register fragments, keys and values
as the mma's rows and the query heads of a KV head as its columns (no shared-memory round trip of
unpacked tiles, docs/adr/0009). :func:`covers` says which inputs it takes (sm_80+, head_dim 128,
2/4-bit codes, key groups of 16-128 tokens, value groups of 32-128 channels, 8-bit side codes of
even rank <= 16, up to 16 query heads per KV head, fp16/bf16 queries, 16-byte aligned rows);
:mod:`headq_core.runtime.kernels` falls back to the Triton kernel for everything else. A block's
warps (one split each) merge their partial outputs in shared memory; the blocks' partials are
merged by the Triton kernel's second launch.
"""

from __future__ import annotations

import ctypes
import math
from functools import cache
from pathlib import Path

import torch

from headq_core.runtime.kernels.layout import EncodedKV
from headq_core.runtime.kernels.nvrtc import Kernel, available, cached_cubin

LOG2E = 1.4426950408889634
CHUNK = 64  # tokens per pipeline stage (the kernel's CHUNK)
SOURCES = tuple(Path(__file__).with_name(n) for n in ("mma_common.cuh", "mma_decode.cu", "mma_kernel.cu"))
SM_WARPS = 12  # warps per multiprocessor the registers must allow (the launch bound; H100 sweep)
WARPS, STAGES = 4, 2  # the default launch: splits (warps) per block, cp.async pipeline depth
_POINTERS = ("kc", "ks", "kz", "vc", "vs", "vz", "sc", "ss", "u", "q", "kr", "vr", "o_part", "lse", "out",
             "row_start")
_STRIDES = ("s_kc", "s_ks", "s_vc", "s_vs", "s_sc", "s_ss", "s_kr", "s_vr")


class Params(ctypes.Structure):
    """The kernel's ``struct Params`` (same field order and natural alignment)."""

    _fields_ = ([(n, ctypes.c_void_p) for n in _POINTERS] + [(n, ctypes.c_longlong) for n in _STRIDES]
                + [(n, ctypes.c_int) for n in ("H", "N", "R", "tps", "n_qsplits", "S", "first")]
                + [(n, ctypes.c_float) for n in ("qk_scale", "sign", "cap2")])


def stage_bytes(kb: int, vb: int, gk: int, gv: int, rank: int) -> int:
    """Shared-memory bytes of one pipeline stage (the kernel's STAGE_BYTES)."""
    d = 128
    ngc = max(1, CHUNK // gk)
    side = (CHUNK * rank + 15) // 16 * 16 + (CHUNK * 2 if rank else 0)
    return CHUNK * d * (kb + vb) // 8 + 2 * ngc * d * 2 + 2 * CHUNK * (d // gv) * 2 + side


def merge_bytes(warps: int, gq: int) -> int:
    """Shared-memory bytes of a block's split merge: float32 outputs [warps, gq, 128] and
    log-sum-exps [warps, gq]."""
    return warps * gq * (128 + 1) * 4


def defines(kb: int, vb: int, gk: int, gv: int, rank: int, gq: int, softcap: bool, row_start: bool,
            bf16: bool, warps: int = WARPS, stages: int = STAGES,
            sm_warps: int = SM_WARPS) -> tuple[tuple[str, int], ...]:
    """The compile-time configuration of one kernel variant (``sm_warps``: the warps per
    multiprocessor its registers must allow, with one 8-head column tile: two tiles would spill
    under that bound)."""
    min_blocks = max(1, sm_warps // warps) if gq <= 8 else 1
    return (("KB", kb), ("VB", vb), ("GK", gk), ("GV", gv), ("RANK", rank), ("GQ", gq),
            ("SOFTCAP", int(softcap)), ("ROW_START", int(row_start)), ("RES_BF16", int(bf16)), ("NW", warps),
            ("NSTAGE", stages), ("MINB", min_blocks))


def source(cfg: tuple[tuple[str, int], ...]) -> str:
    """The kernel source of one variant: its #defines, then the three source files."""
    return "".join(f"#define {k} {v}\n" for k, v in cfg) + "\n".join(p.read_text() for p in SOURCES)


@cache
def _kernel(device: int, cfg: tuple[tuple[str, int], ...]) -> Kernel:
    major, minor = torch.cuda.get_device_capability(device)
    c = dict(cfg)
    smem = max(c["NW"] * c["NSTAGE"] * stage_bytes(c["KB"], c["VB"], c["GK"], c["GV"], c["RANK"]),
               merge_bytes(c["NW"], c["GQ"]))
    with torch.cuda.device(device):
        return Kernel(cached_cubin(source(cfg), major * 10 + minor), "headq_decode_mma", smem)


def _aligned(*tensors: torch.Tensor | None) -> bool:
    return all(t is None or t.data_ptr() % 16 == 0 for t in tensors)


def _rows(t: torch.Tensor, heads: int) -> torch.Tensor | None:
    """t [B, H, n, w] as (b, h)-uniform rows with 16-byte aligned starts, or None."""
    if t.stride(-1) != 1 or t.stride(2) != t.shape[3] or t.stride(0) != heads * t.stride(1):
        t = t.contiguous()
    ok = t.data_ptr() % 16 == 0 and (t.stride(1) * t.element_size()) % 16 == 0
    return t if ok else None


def covers(q: torch.Tensor, enc: EncodedKV | None, k_res: torch.Tensor | None) -> bool:
    """Whether the tensor-core kernel takes these inputs (layout rules; alignment is checked at launch)."""
    if enc is None or not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    if not available():
        return False
    if torch.cuda.get_device_capability(q.device) < (8, 0):
        return False
    hkv = enc.k_codes.shape[1]
    gq = q.shape[1] // hkv
    side_ok = enc.side is None or (enc.side_bits == 8 and enc.rank % 2 == 0 and 2 <= enc.rank <= 16)
    return (enc.head_dim == 128 and enc.key_bits in (2, 4) and enc.value_bits in (2, 4)
            and enc.key_group in (16, 32, 64, 128) and enc.value_group in (32, 64, 128) and side_ok
            and 1 <= gq <= 16 and (k_res is None or k_res.dtype == q.dtype))


def default_splits(batch_heads: int, tokens: int, step: int, device: torch.device, per_sm: int = 32,
                   max_splits: int = 64) -> int:
    """Quantized-token splits per (batch, KV head): about ``per_sm`` warps per multiprocessor, at most
    ``max_splits`` and at most one per ``step`` tokens."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(math.ceil(per_sm * sms / batch_heads), max_splits, math.ceil(tokens / step)))


def decode_attention_mma(q: torch.Tensor, enc: EncodedKV, k_res: torch.Tensor | None,
                         v_res: torch.Tensor | None,
                         basis: torch.Tensor | None, scale: float, sign: int, num_splits: int | None = None,
                         start: int | torch.Tensor = 0, softcap: float | None = None, warps: int = WARPS,
                         stages: int = STAGES, per_sm: int = 32,
                         max_splits: int = 128) -> torch.Tensor | None:
    """The tensor-core path of :func:`headq_core.runtime.kernels.decode_attention` (inputs validated
    and :func:`covers` true): q [B, Hq, 1, 128] -> [B, Hq, 1, 128]; None when a tensor is not 16-byte
    aligned (the caller falls back). ``num_splits`` quantized-token splits per (batch, KV head)
    (default :func:`default_splits`); ``warps`` splits per block, ``stages`` pipeline depth (defaults:
    the smallest sum of relative times over 1x4k, 1x32k, 8x32k and 16x128k in two H100 sweeps,
    docs/benchmarks.md section 12)."""
    from headq_core.runtime.kernels.triton_decode import _combine_kernel

    b, hq, _, d = q.shape
    h = enc.k_codes.shape[1]
    n, r_len = enc.tokens, (k_res.shape[2] if k_res is not None else 0)
    parts = {"kc": _rows(enc.k_codes, h), "ks": _rows(enc.k_scale, h), "kz": _rows(enc.k_zero, h),
             "vc": _rows(enc.v_codes, h), "vs": _rows(enc.v_scale, h), "vz": _rows(enc.v_zero, h)}
    rank = enc.rank if enc.side is not None else 0
    if rank:
        parts["sc"] = _rows(enc.side.view(torch.uint8), h)  # type: ignore[union-attr]
        parts["ss"] = _rows(enc.side_scale.unsqueeze(-1), h)  # type: ignore[union-attr]
    if r_len:
        parts["kr"], parts["vr"] = _rows(k_res, h), _rows(v_res, h)  # type: ignore[arg-type]
    rows = {name: t for name, t in parts.items() if t is not None}
    if len(rows) != len(parts):
        return None
    if rows["ks"].stride(1) != rows["kz"].stride(1) or rows["vs"].stride(1) != rows["vz"].stride(1):
        return None  # scale and zero-point share one stride in the kernel
    qs = q.reshape(b * hq, d).contiguous()
    step = max(CHUNK, enc.key_group)
    target = num_splits or default_splits(b * h, n, step, q.device, per_sm, max_splits)
    tps = math.ceil(math.ceil(max(n, 1) / target) / step) * step
    n_q = math.ceil(n / tps)
    splits = n_q + math.ceil(r_len / CHUNK)
    blocks = math.ceil(splits / warps)  # one partial output per block and query row
    out = torch.empty(b * hq, d, dtype=q.dtype, device=q.device)
    o_part = torch.empty(b * hq, blocks, d, dtype=torch.float32, device=q.device)
    lse = torch.empty(b * hq, blocks, dtype=torch.float32, device=q.device)
    row_start = None
    first = 0
    if isinstance(start, torch.Tensor):
        row_start = start.to(device=q.device, dtype=torch.int32).reshape(b).contiguous()
    else:
        first = int(start)
    u = basis.to(device=q.device, dtype=torch.float32).contiguous() if rank and basis is not None else None
    p = Params()
    for name, t in {**rows, "u": u, "q": qs, "o_part": o_part, "lse": lse, "out": out,
                    "row_start": row_start}.items():
        setattr(p, name, 0 if t is None else t.data_ptr())
    for name in _STRIDES:
        t = rows.get(name[2:])
        setattr(p, name, 0 if t is None else t.stride(1))
    p.H, p.N, p.R, p.tps, p.n_qsplits, p.S, p.first = h, n, r_len, tps, n_q, splits, first
    p.qk_scale, p.sign, p.cap2 = scale * LOG2E, float(sign), (softcap or 1.0) * LOG2E
    cfg = defines(enc.key_bits, enc.value_bits, enc.key_group, enc.value_group, rank, hq // h,
                  softcap is not None, row_start is not None, q.dtype == torch.bfloat16, warps, stages)
    kernel = _kernel(q.device.index or 0, cfg)
    kernel.launch((blocks, b * h, 1), 32 * warps, p)
    if blocks > 1:
        _combine_kernel[(b * hq, d // 32)](o_part, lse, out, blocks, D=d, DC=32,
                                           SB=min(256, max(2, 1 << (blocks - 1).bit_length())))
    return out.reshape(b, hq, 1, d)
