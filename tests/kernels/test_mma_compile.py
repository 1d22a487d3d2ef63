"""The tensor-core decode kernel (``mma_decode``) without a GPU: every variant the benchmark cases
use compiles with NVRTC for sm_80 and sm_90 without spilling registers, NVRTC errors carry the log,
the ctypes ``Params`` mirrors the kernel's struct, ``stage_bytes`` is the kernel's STAGE_BYTES, and
the dispatch never takes the kernel on the CPU. NVRTC comes with the ``gpu`` extra
(``nvidia-cuda-nvrtc-cu12``) or from ``$HEADQ_NVRTC``; the tests that compile are skipped without it."""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest
import torch

from headq_core.runtime.kernels import decode_attention, encode, mma_decode, nvrtc
from tests.kernels.helpers import configs, random_basis, random_kv

needs_nvrtc = pytest.mark.skipif(not nvrtc.available(), reason="NVRTC not found: install the gpu extra "
                                 "(nvidia-cuda-nvrtc-cu12) or set HEADQ_NVRTC to a libnvrtc.so")
ARCHS = (80, 90)
# (name, key bits, value bits, key group, value group, side rank, query heads per KV head, softcap,
#  per-row starts, bf16): the variants of benchmarks/bench_mma.py's CASES (cases that differ only in
#  run-time arguments share one), then corners the cases leave out
VARIANTS = (
    ("headq_2bit_r8", 2, 2, 32, 32, 8, 4, False, False, True),
    ("plain_2bit", 2, 2, 32, 32, 0, 4, False, False, True),
    ("plain_4bit", 4, 4, 32, 32, 0, 4, False, False, True),
    ("k4_v2_r16_fp16", 4, 2, 32, 32, 16, 4, False, False, False),
    ("softcap30", 2, 2, 32, 32, 8, 4, True, False, True),
    ("row_starts", 2, 2, 32, 32, 8, 4, False, True, True),
    ("gqa8", 2, 2, 32, 32, 8, 8, False, False, True),
    ("gqa12_two_rows", 2, 2, 32, 32, 8, 12, False, False, True),
    ("mha_gq1", 2, 2, 32, 32, 4, 1, False, False, True),
    ("groups16_128", 2, 2, 16, 128, 8, 4, False, False, True),
    ("groups128_64", 2, 2, 128, 64, 8, 4, False, False, True),
    ("k2_v4_g64_128_all_on", 2, 4, 64, 128, 8, 8, True, True, True),
    ("k4_v4_g128_r16_gq16_fp16_all_on", 4, 4, 128, 128, 16, 16, True, True, False),
)
# (warps, stages): the benchmark's tuning grid besides the default launch, on its HeadQ layout
LAUNCHES = tuple((w, st) for w in (2, 4, 8) for st in (2, 3)
                 if (w, st) != (mma_decode.WARPS, mma_decode.STAGES))
Cfg = tuple[tuple[str, int], ...]


def _defines(variant: tuple, warps: int = mma_decode.WARPS, stages: int = mma_decode.STAGES,
             sm_warps: int = mma_decode.SM_WARPS) -> Cfg:
    _name, kb, vb, gk, gv, rank, gq, softcap, row_start, bf16 = variant
    return mma_decode.defines(kb, vb, gk, gv, rank, gq, softcap, row_start, bf16, warps, stages, sm_warps)


NAMED: list[tuple[str, Cfg]] = (
    [(v[0], _defines(v)) for v in VARIANTS]
    + [(f"headq_2bit_r8_w{w}_s{st}", _defines(VARIANTS[0], w, st)) for w, st in LAUNCHES])
CFGS = [pytest.param(cfg, id=name) for name, cfg in NAMED]


# (query heads per KV head, arch) of the variants that spill today: two 8-head column tiles on sm_80
# (16 bytes). Strict: a kernel that stops spilling fails as XPASS, and its entry goes.
KNOWN_SPILLS: set[tuple[int, int]] = {(12, 80)}


def _compile(cfg: Cfg, arch: int) -> bytes | nvrtc.CompileError:
    try:
        return nvrtc.compile_cubin(mma_decode.source(cfg), arch)
    except nvrtc.CompileError as err:
        return err


@cache
def _cubins() -> dict[tuple[Cfg, int], bytes | nvrtc.CompileError]:
    """Every variant of CFGS for ARCHS, compiled once for this file's tests, on a thread per core
    (NVRTC runs outside the GIL: about 0.5 s a variant on 2 cores instead of 0.9 s)."""
    jobs = [(cfg, arch) for _, cfg in NAMED for arch in ARCHS]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return dict(zip(jobs, pool.map(lambda job: _compile(*job), jobs), strict=True))


def _cubin(cfg: Cfg, arch: int) -> bytes:
    """The cubin of one variant, as the runtime compiles it (raises its CompileError)."""
    got = _cubins()[cfg, arch]
    if isinstance(got, nvrtc.CompileError):
        raise got
    return got


def _cuobjdump() -> Path | None:
    try:
        import triton
    except ImportError:
        return None
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _resource_usage(cubin: bytes, tmp_path: Path) -> dict[str, int]:
    """REG, STACK, LOCAL, ... of ``headq_decode_mma`` in ``cubin`` (cuobjdump --dump-resource-usage)."""
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (it ships with Triton's NVIDIA backend)")
    path = tmp_path / "kernel.cubin"
    path.write_bytes(cubin)
    text = subprocess.run([str(tool), "--dump-resource-usage", str(path)], capture_output=True, text=True,
                          check=True, timeout=60).stdout
    found = re.search(r"Function headq_decode_mma:\s*\n\s*(.*)", text)
    assert found, text
    usage = {k: int(v) for k, v in re.findall(r"\b([A-Z]+):(\d+)", found.group(1))}
    assert {"REG", "STACK", "LOCAL"} <= usage.keys(), found.group(1)
    return usage


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cfg", CFGS)
def test_variant_compiles(cfg, arch):
    cubin = _cubin(cfg, arch)
    assert cubin[:4] == b"\x7fELF" and len(cubin) > 1000


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cfg", CFGS)
def test_variant_does_not_spill(cfg, arch, tmp_path, request):
    """No local memory: ptxas puts spilled registers in the stack frame (``STACK``), local arrays in
    ``LOCAL``; both must be empty. Registers within the launch bound (NW warps x MINB blocks per SM)."""
    c = dict(cfg)
    if (c["GQ"], arch) in KNOWN_SPILLS:
        reason = f"GQ={c['GQ']} spills on sm_{arch}"
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    usage = _resource_usage(_cubin(cfg, arch), tmp_path)
    assert usage["LOCAL"] == 0 and usage["STACK"] == 0, usage
    assert 0 < usage["REG"] <= min(255, 65536 // (32 * c["NW"] * c["MINB"])), usage


@needs_nvrtc
def test_spill_check_sees_a_planted_spill(tmp_path):
    """The check above is not vacuous: a launch bound of 8 blocks of 4 warps (64 registers a thread)
    makes ptxas spill, and the spill shows as stack frame bytes."""
    cubin = nvrtc.compile_cubin(mma_decode.source(_defines(VARIANTS[0], warps=4, sm_warps=32)), 80)
    usage = _resource_usage(cubin, tmp_path)
    assert usage["REG"] <= 64 and usage["STACK"] > 0, usage


@needs_nvrtc
def test_compile_error_carries_the_log():
    src = mma_decode.source(_defines(VARIANTS[0]))
    line = src.count("\n") + 1
    with pytest.raises(nvrtc.CompileError) as err:
        nvrtc.compile_cubin(src + "int planted_ = ;\n", 80)
    message = str(err.value)
    assert message.startswith("NVRTC compile:")
    assert f"headq.cu({line}): error: expected an expression" in message and "int planted_ = ;" in message


def _c_fields(source: str) -> list[tuple[str, str]]:
    """(name, C type) of every field of the kernel's ``struct Params``, in order."""
    body = re.search(r"struct Params\s*\{(.*?)\};", source, re.S)
    assert body, "struct Params not found in mma_decode.cu"
    fields = []
    for decl in re.sub(r"//[^\n]*", "", body.group(1)).split(";"):
        decl = " ".join(decl.split())
        if decl:
            m = re.fullmatch(r"(.*?[\s*])(\w+(?:\s*,\s*\w+)*)", decl)
            assert m, decl
            fields += [(name.strip(), m.group(1).strip()) for name in m.group(2).split(",")]
    return fields


def _c_size(ctype: str) -> int:
    if ctype.endswith("*"):
        return ctypes.sizeof(ctypes.c_void_p)
    return {"long long": 8, "int": 4, "float": 4}[ctype]


def test_params_mirror_the_kernel_struct():
    """Same fields in the same order, each at the offset natural alignment gives it, and the same size
    (16 pointers, 8 int64, 7 int32, 3 float32: 232 bytes on x86-64)."""
    fields = _c_fields(mma_decode.source(_defines(VARIANTS[0])))
    assert [name for name, _ in fields] == [f[0] for f in mma_decode.Params._fields_]
    offset = 0
    for name, ctype in fields:
        size = _c_size(ctype)
        offset = (offset + size - 1) // size * size
        assert getattr(mma_decode.Params, name).offset == offset, name
        assert getattr(mma_decode.Params, name).size == size, name
        offset += size
    align = max(_c_size(t) for _, t in fields)
    assert ctypes.sizeof(mma_decode.Params) == (offset + align - 1) // align * align
    kinds = [t if not t.endswith("*") else "*" for _, t in fields]
    assert [kinds.count(k) for k in ("*", "long long", "int", "float")] == [16, 8, 7, 3]
    if ctypes.sizeof(ctypes.c_void_p) == 8:
        assert ctypes.sizeof(mma_decode.Params) == 16 * 8 + 8 * 8 + 7 * 4 + 3 * 4 == 232  # no tail padding


@pytest.mark.parametrize("kb,vb,gk,gv,rank,parts", [
    # key codes 64 x 32 B, value codes 64 x 32 B, key scale + zero 2 groups x 128 fp16 each, value
    # scale + zero 64 tokens x 4 groups fp16 each, side codes 64 x 8 int8, side scales 64 fp16
    (2, 2, 32, 32, 8, (2048, 2048, 2 * 2 * 128 * 2, 2 * 64 * 4 * 2, 512, 128)),
    # key codes 64 x 64 B, value codes 64 x 32 B, one key group (128 tokens span two chunks), value
    # groups 2 a token, side codes 64 x 16, side scales
    (4, 2, 128, 64, 16, (4096, 2048, 2 * 1 * 128 * 2, 2 * 64 * 2 * 2, 1024, 128)),
    # 4-bit codes, key groups of 16 (4 a chunk), value groups of 128 (1 a token), no side code
    (4, 4, 16, 128, 0, (4096, 4096, 2 * 4 * 128 * 2, 2 * 64 * 1 * 2, 0, 0)),
])
def test_stage_bytes_match_the_layout(kb, vb, gk, gv, rank, parts):
    """``stage_bytes`` against the byte layout of one 64-token stage (the OFF_* chain of mma_decode.cu)."""
    assert mma_decode.stage_bytes(kb, vb, gk, gv, rank) == sum(parts)


@needs_nvrtc
@pytest.mark.parametrize("cfg", CFGS[: len(VARIANTS)] + CFGS[-2 * len(VARIANTS) - 1 : -len(VARIANTS) - 1])
def test_stage_bytes_is_the_kernels(cfg):
    """The kernel's own STAGE_BYTES, evaluated by NVRTC: a static_assert against ``stage_bytes`` ahead
    of a planted error (which ends the compilation after the front end, in milliseconds); the log must
    show the planted error only. An off-by-one expectation shows the assertion fails (not vacuous)."""
    c = dict(cfg)
    want = mma_decode.stage_bytes(c["KB"], c["VB"], c["GK"], c["GV"], c["RANK"])

    def log(expect: int) -> str:
        check = f'static_assert(STAGE_BYTES == {expect}, "STAGE_BYTES");\nint stop_ = ;\n'
        src = mma_decode.source(cfg) + check
        with pytest.raises(nvrtc.CompileError) as err:
            nvrtc.compile_cubin(src, 80)
        assert "expected an expression" in str(err.value)
        return str(err.value)

    assert "static assertion failed" not in log(want)
    assert "static assertion failed" in log(want + 1)


def _cpu_case(dtype: torch.dtype = torch.bfloat16):
    gen = torch.Generator().manual_seed(0)
    k, v = random_kv(1, 2, 64, 128, gen)
    u = random_basis(2, 128, 8, gen)
    enc = encode(k, v, *configs(2, 32, 2, 32), basis=u, backend="reference")
    q = torch.randn(1, 8, 1, 128, generator=gen).to(dtype)
    kr, vr = (t.to(dtype) for t in random_kv(1, 2, 5, 128, gen))
    return q, enc, kr, vr, u


def test_covers_is_false_on_the_cpu():
    q, enc, kr, _vr, _u = _cpu_case()
    assert not mma_decode.covers(q, enc, kr)
    assert not mma_decode.covers(q, enc, None)
    assert not mma_decode.covers(q, None, kr)


def test_mma_backend_raises_on_the_cpu():
    q, enc, kr, vr, u = _cpu_case()
    with pytest.raises(ValueError, match="^backend: .*tensor-core kernel"):
        decode_attention(q, enc, kr, vr, basis=u, backend="mma")
    with pytest.raises(ValueError, match="^backend: .*tensor-core kernel"):
        decode_attention(q, None, kr, vr, backend="mma")


def test_backend_message_lists_the_allowed_values():
    q, enc, kr, vr, u = _cpu_case()
    allowed = "'auto', 'mma', 'triton' or 'reference'"
    with pytest.raises(ValueError, match=f"^backend: must be {allowed}, got 'cuda'"):
        decode_attention(q, enc, kr, vr, basis=u, backend="cuda")
    k, v = random_kv(1, 2, 32, 128, torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="^backend: must be 'auto', 'triton' or 'reference', got 'mma'"):
        encode(k, v, *configs(2, 32, 2, 32), backend="mma")


def test_auto_takes_the_reference_on_the_cpu(monkeypatch):
    """``"auto"`` never calls the tensor-core kernel for CPU tensors; the result is the reference's."""
    q, enc, kr, vr, u = _cpu_case()
    calls = []
    real = mma_decode.decode_attention_mma
    monkeypatch.setattr(mma_decode, "decode_attention_mma",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    got = decode_attention(q, enc, kr, vr, basis=u)
    assert calls == []
    assert torch.equal(got, decode_attention(q, enc, kr, vr, basis=u, backend="reference"))


def test_kernel_sources_ship_in_the_package():
    """The wheel (and so the Docker image) carries the CUDA sources the launcher reads: each one is
    found by a package-data pattern of pyproject.toml, globbed from the package directory as
    setuptools does (``*`` does not cross a ``/``; the .cu files once did not ship)."""
    import glob
    import tomllib

    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["*"]
    pkg = Path(mma_decode.__file__).parent
    shipped = {f for p in patterns for f in glob.glob(p, root_dir=pkg)}
    for src in mma_decode.SOURCES:
        assert src.exists(), src
        rel = src.relative_to(pkg).as_posix()
        assert rel in shipped, f"{rel} is not package data"
