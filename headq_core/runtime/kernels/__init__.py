"""Kernels for the packed KV cache: :func:`encode` and :func:`decode_attention`.

Both validate their inputs (``ValueError`` naming the field). :func:`encode` dispatches to Triton
for CUDA tensors whose layout the kernel covers (bits 1/2/4/8, power-of-two head_dim and groups, key
group >= 16), to the pure-torch reference otherwise. :func:`decode_attention` on CUDA prefers the
tensor-core kernel (:mod:`~headq_core.runtime.kernels.mma_decode`, compiled by NVRTC at first use)
where :func:`~headq_core.runtime.kernels.mma_decode.covers` takes the inputs (sm_80+, head_dim 128,
2/4-bit codes, fp16/bf16 query, ...) and every row is 16-byte aligned, then the Triton kernel (bits
1/2/4/8, power-of-two head_dim and groups, code rows of whole 32-bit words), then the reference (and
always the reference on the CPU). ``backend="mma"`` forces the tensor-core kernel, ``"triton"`` the
Triton path (used with ``TRITON_INTERPRET=1`` on the CPU in tests), ``"reference"`` the torch path;
a forced kernel that does not take the inputs raises ``ValueError`` naming ``backend``.
"""

from __future__ import annotations

from typing import Literal

import torch

from headq_core.config import QuantConfig
from headq_core.runtime.kernels.layout import EncodedKV, decode_covers, encode_covers, head_dim_covered
from headq_core.runtime.kernels.reference import decode_attention_reference, encode_reference

Backend = Literal["auto", "mma", "triton", "reference"]
EncodeBackend = Literal["auto", "triton", "reference"]
DECODE_BACKENDS: tuple[Backend, ...] = ("auto", "mma", "triton", "reference")
ENCODE_BACKENDS: tuple[EncodeBackend, ...] = ("auto", "triton", "reference")

__all__ = ["EncodedKV", "decode_attention", "encode"]


def _require(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{field_name}: {message}")


def _check_backend(backend: str, allowed: tuple[str, ...]) -> None:
    names = ", ".join(repr(a) for a in allowed[:-1]) + f" or {allowed[-1]!r}"
    _require(backend in allowed, "backend", f"must be {names}, got {backend!r}")


def _use_triton(backend: str, device: torch.device, fits: bool) -> bool:
    if backend == "triton":
        _require(fits, "backend", "this layout is not covered by the Triton kernels")
    return backend == "triton" or (backend == "auto" and fits and device.type == "cuda")


def _check_basis(basis: torch.Tensor | None, heads: int, d: int) -> None:
    if basis is not None:
        _require(basis.dim() == 3 and basis.shape[0] == heads and basis.shape[1] == d and basis.shape[2] >= 1,
                 "basis", f"expected [Hkv={heads}, d={d}, r], got {list(basis.shape)}")


def _check_start(start: int | torch.Tensor, batch: int, tokens: int, device: torch.device) -> None:
    """An int start in [0, tokens), or an integer tensor [B] on q's device (values not read)."""
    if isinstance(start, torch.Tensor):
        _require(start.dim() == 1 and start.shape[0] == batch and not start.is_floating_point()
                 and not start.is_complex() and start.dtype != torch.bool and start.device == device, "start",
                 f"expected an integer tensor [B={batch}] on {device}, got {start.dtype} "
                 f"{list(start.shape)} on {start.device}")
        return
    _require(isinstance(start, int) and not isinstance(start, bool) and 0 <= start < tokens, "start",
             f"must be an integer in [0, {tokens - 1}] (some token must stay visible), got {start!r}")


def encode(k: torch.Tensor, v: torch.Tensor, key_cfg: QuantConfig, value_cfg: QuantConfig,
           basis: torch.Tensor | None = None, side_bits: int = 8,
           backend: EncodeBackend = "auto") -> EncodedKV:
    """Quantize k, v [B, Hkv, N, d] (N a multiple of ``key_cfg.group_size``) into an
    :class:`EncodedKV`; with ``basis`` U [Hkv, d, r] also the HeadQ side code at ``side_bits``."""
    _require(k.dim() == 4 and k.is_floating_point(), "k",
             f"expected a float [B, Hkv, N, d], got {k.dtype} {list(k.shape)}")
    _require(v.shape == k.shape and v.is_floating_point(), "v",
             f"expected {list(k.shape)}, got {list(v.shape)}")
    _require(key_cfg.axis == "per_channel", "key_cfg.axis", "the cache stores keys per_channel")
    _require(value_cfg.axis == "per_token", "value_cfg.axis", "the cache stores values per_token")
    _b, h, n, d = k.shape
    _require(n % key_cfg.group_size == 0, "k",
             f"{n} tokens is not a multiple of the key group {key_cfg.group_size}")
    _require(d % value_cfg.group_size == 0, "value_cfg.group_size", f"must divide head_dim {d}")
    _require(side_bits in (4, 8, 16), "side_bits", f"must be 4, 8 or 16, got {side_bits!r}")
    _check_basis(basis, h, d)
    _check_backend(backend, ENCODE_BACKENDS)
    fits = encode_covers(d, key_cfg.bits, key_cfg.group_size, value_cfg.bits, value_cfg.group_size)
    if _use_triton(backend, k.device, fits):
        from headq_core.runtime.kernels.triton_encode import encode_triton

        return encode_triton(k, v, key_cfg.bits, key_cfg.group_size, value_cfg.bits, value_cfg.group_size,
                             basis, side_bits)
    return encode_reference(k, v, key_cfg, value_cfg, basis, side_bits)


def _decode_mma(backend: Backend, q: torch.Tensor, enc: EncodedKV | None, k_res: torch.Tensor | None,
                v_res: torch.Tensor | None, basis: torch.Tensor | None, scale: float, sign: int,
                num_splits: int | None, start: int | torch.Tensor,
                softcap: float | None) -> torch.Tensor | None:
    """The tensor-core kernel's output, or None where it does not take the inputs (``"auto"`` falls
    back); ``backend="mma"`` raises instead."""
    from headq_core.runtime.kernels import mma_decode

    takes = mma_decode.covers(q, enc, k_res) and (v_res is None or v_res.dtype == q.dtype)
    if backend == "mma":
        _require(takes, "backend", "these inputs are not covered by the tensor-core kernel (needs CUDA "
                 "sm_80+ and NVRTC, head_dim 128, 2/4-bit codes in groups of 16..128, an 8-bit side code "
                 "of even rank <= 16 or none, <= 16 query heads per KV head, fp16/bf16 q and residual)")
    if not takes or enc is None:
        return None
    out = mma_decode.decode_attention_mma(q, enc, k_res, v_res, basis, scale, sign, num_splits, start=start,
                                          softcap=softcap)
    _require(out is not None or backend != "mma", "backend",
             "the tensor-core kernel needs 16-byte aligned rows of every input tensor")
    return out


def decode_attention(q: torch.Tensor, enc: EncodedKV | None, k_res: torch.Tensor | None = None,
                     v_res: torch.Tensor | None = None, basis: torch.Tensor | None = None,
                     scale: float | None = None, sign: int = 1, backend: Backend = "auto",
                     num_splits: int | None = None, start: int | torch.Tensor = 0,
                     softcap: float | None = None) -> torch.Tensor:
    """Attention of one decode query q [B, Hq, 1, d] over the ``N`` quantized tokens of ``enc``
    followed by the residual window k_res, v_res [B, Hkv, R, d]. Returns [B, Hq, 1, d] in q.dtype.

    Logits ``scale*<q, k^_j> + sign*scale*<U^T q, c^_j>`` (``scale`` defaults to ``d**-0.5``), capped
    to ``softcap*tanh(logit/softcap)`` with a ``softcap``; tokens before ``start`` are not seen: an
    int (a sliding window) or an integer tensor [B] on q's device, one start per batch row (left
    padding), whose values are trusted (checking them would make the host wait for the GPU): each
    row must keep a token visible.

    ``backend``: ``"auto"`` (the tensor-core kernel on CUDA where it takes the inputs, else Triton
    where its layout is covered, else the reference), ``"mma"``, ``"triton"`` or ``"reference"``
    (see the module docstring). ``num_splits`` sets the split count per batch row and KV head: for
    the Triton kernel over all cached tokens (default: about 8 programs per SM, at most 32 splits),
    for the tensor-core kernel over the quantized tokens, the residual adding one split per 64 tokens
    (default: about 32 warps per SM, at most 64 splits; 2 warps a block, 3 pipeline stages: the H100
    tuning of docs/benchmarks.md, section 11)."""
    _require(q.dim() == 4 and q.shape[2] == 1 and q.is_floating_point(), "q",
             f"expected a float [B, Hq, 1, d], got {q.dtype} {list(q.shape)}")
    b, hq, _, d = q.shape
    _require((k_res is None) == (v_res is None), "v_res", "give both k_res and v_res, or neither")
    if k_res is not None:
        _require(k_res.dim() == 4 and k_res.shape[0] == b and k_res.shape[3] == d, "k_res",
                 f"expected [B={b}, Hkv, R, d={d}], got {list(k_res.shape)}")
        _require(v_res is not None and v_res.shape == k_res.shape, "v_res", f"expected {list(k_res.shape)}")
    if enc is not None:
        _require(enc.k_codes.shape[0] == b and enc.head_dim == d, "enc",
                 f"batch/head_dim {enc.k_codes.shape[0]}/{enc.head_dim} do not match q {b}/{d}")
        _require(k_res is None or k_res.shape[1] == enc.k_codes.shape[1], "k_res", "KV heads differ from enc")
        _require(enc.side is None or basis is not None, "basis", "needed to read the HeadQ side code")
        if enc.side is not None:
            _check_basis(basis, enc.k_codes.shape[1], d)
            rank = basis.shape[2]  # type: ignore[union-attr]
            _require(rank == enc.rank, "basis", f"rank {rank} != side code rank {enc.rank}")
    ref = enc.k_codes if enc is not None else k_res
    _require(ref is not None, "enc", "nothing to attend to: give enc and/or k_res")
    tokens = (enc.tokens if enc is not None else 0) + (k_res.shape[2] if k_res is not None else 0)
    _require(tokens > 0, "enc", "nothing to attend to: zero cached tokens")
    hkv = ref.shape[1]  # type: ignore[union-attr]
    _require(hq % hkv == 0, "q", f"{hq} query heads is not a multiple of {hkv} KV heads")
    _require(sign in (1, -1), "sign", f"must be +1 or -1, got {sign!r}")
    _require(num_splits is None or num_splits >= 1, "num_splits", f"must be >= 1, got {num_splits!r}")
    _check_start(start, b, tokens, q.device)
    _require(softcap is None or softcap > 0, "softcap", f"must be positive or None, got {softcap!r}")
    scale = d ** -0.5 if scale is None else float(scale)
    _check_backend(backend, DECODE_BACKENDS)
    if backend == "mma" or (backend == "auto" and q.is_cuda and enc is not None):
        out = _decode_mma(backend, q, enc, k_res, v_res, basis, scale, sign, num_splits, start, softcap)
        if out is not None:
            return out
    fits = (head_dim_covered(d) if enc is None
            else decode_covers(d, enc.key_bits, enc.key_group, enc.value_bits, enc.value_group))
    if _use_triton(backend, q.device, fits):
        from headq_core.runtime.kernels.triton_decode import decode_attention_triton

        return decode_attention_triton(q, enc, k_res, v_res, basis, scale, sign, num_splits, start=start,
                                       softcap=softcap)
    return decode_attention_reference(q, enc, k_res, v_res, basis, scale, sign, start, softcap)
