"""Runtime compilation of CUDA C++ kernels with NVRTC and launches through the CUDA driver (ctypes).

No build step and no compiler on the user's machine: NVRTC ships with every CUDA build of PyTorch
(the ``nvidia-cuda-nvrtc`` wheel) and compiles the kernel source for the GPU at hand the first time
it is used; the cubin is cached in memory and on disk (``$HEADQ_CUBIN_CACHE``, default
``~/.cache/headq/cubin``). :func:`available` says whether NVRTC can be found; :func:`compile_cubin`
also runs without a GPU (the CPU tests compile the kernels this way). Launches go to the current
PyTorch stream, so they are captured by CUDA graphs like any PyTorch kernel.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import site
import sys
from functools import cache
from pathlib import Path

_NVRTC_NAMES = ("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so")


class CompileError(RuntimeError):
    """NVRTC rejected the source; the message carries its log."""


def _candidates() -> list[str]:
    found = [os.environ["HEADQ_NVRTC"]] if os.environ.get("HEADQ_NVRTC") else []
    roots = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    for root in dict.fromkeys(r for r in roots if r and os.path.isdir(r)):
        for pattern in ("nvidia/cu*/lib/libnvrtc.so*", "nvidia/cuda_nvrtc/lib/libnvrtc.so*",
                        "torch/lib/libnvrtc*.so*"):
            found += sorted(p for p in glob.glob(os.path.join(root, pattern)) if "builtins" not in p
                            and ".alt." not in p)
    return [*found, *_NVRTC_NAMES]


@cache
def _nvrtc() -> ctypes.CDLL | None:
    for name in _candidates():
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        return lib
    return None


def available() -> bool:
    """Whether an NVRTC library can be loaded."""
    return _nvrtc() is not None


def version() -> tuple[int, int]:
    """NVRTC's (major, minor)."""
    lib = _nvrtc()
    if lib is None:
        raise CompileError("NVRTC: library not found (install nvidia-cuda-nvrtc or set HEADQ_NVRTC)")
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


def _check(lib: ctypes.CDLL, code: int, what: str) -> None:
    if code != 0:
        raise CompileError(f"NVRTC {what}: {lib.nvrtcGetErrorString(code).decode()}")


def compile_cubin(source: str, arch: int, options: tuple[str, ...] = ()) -> bytes:
    """Cubin of ``source`` for ``sm_<arch>`` (e.g. 90). Raises :class:`CompileError` with the log."""
    lib = _nvrtc()
    if lib is None:
        raise CompileError("NVRTC: library not found (install nvidia-cuda-nvrtc or set HEADQ_NVRTC)")
    opts = (f"--gpu-architecture=sm_{arch}", "--std=c++17", "-default-device", *options)
    prog = ctypes.c_void_p()
    code = lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"headq.cu", 0, None, None)
    _check(lib, code, "create")
    try:
        argv = (ctypes.c_char_p * len(opts))(*(o.encode() for o in opts))
        code = lib.nvrtcCompileProgram(prog, len(opts), argv)
        if code != 0:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            status = lib.nvrtcGetErrorString(code).decode()
            raise CompileError(f"NVRTC compile: {status}\n{log.value.decode()}")
        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "cubin size")
        buf = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetCUBIN(prog, buf), "cubin")
        return buf.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _cache_dir() -> Path:
    return Path(os.environ.get("HEADQ_CUBIN_CACHE", Path.home() / ".cache" / "headq" / "cubin"))


def cached_cubin(source: str, arch: int, options: tuple[str, ...] = ()) -> bytes:
    """:func:`compile_cubin` through the on-disk cache (keyed by source, options, arch, NVRTC)."""
    key = hashlib.sha256(repr((source, arch, options, version())).encode()).hexdigest()[:32]
    path = _cache_dir() / f"{key}.cubin"
    if path.exists():
        return path.read_bytes()
    cubin = compile_cubin(source, arch, options)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(cubin)
        tmp.replace(path)
    except OSError:
        pass  # a read-only home only costs a recompilation next time
    return cubin


@cache
def _driver() -> ctypes.CDLL:
    lib = ctypes.CDLL("libcuda.so.1")
    lib.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    return lib


def _cu(code: int, what: str) -> None:
    if code != 0:
        msg = ctypes.c_char_p()
        _driver().cuGetErrorString(code, ctypes.byref(msg))
        raise RuntimeError(f"CUDA driver {what}: {msg.value.decode() if msg.value else code}")


class Kernel:
    """One ``extern "C"`` kernel of a loaded cubin, launched on the current PyTorch stream."""

    def __init__(self, cubin: bytes, name: str, shared_bytes: int) -> None:
        import torch

        torch.cuda.init()  # a current context for the driver calls
        drv = _driver()
        self._module, self._func = ctypes.c_void_p(), ctypes.c_void_p()
        self._image = ctypes.create_string_buffer(cubin, len(cubin))
        _cu(drv.cuModuleLoadData(ctypes.byref(self._module), self._image), "module load")
        _cu(drv.cuModuleGetFunction(ctypes.byref(self._func), self._module, name.encode()), "get function")
        self.shared_bytes = shared_bytes
        if shared_bytes > 48 * 1024:  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            _cu(drv.cuFuncSetAttribute(self._func, 8, ctypes.c_int(shared_bytes)), "shared memory size")

    def attribute(self, attr: int) -> int:
        """A ``CUfunction_attribute`` (4: registers per thread, 1: shared bytes, 0: max threads)."""
        out = ctypes.c_int()
        _cu(_driver().cuFuncGetAttribute(ctypes.byref(out), attr, self._func), "attribute")
        return out.value

    def launch(self, grid: tuple[int, int, int], block: int, params: ctypes.Structure) -> None:
        import torch

        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        args = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.pointer(params), ctypes.c_void_p))
        _cu(_driver().cuLaunchKernel(self._func, *grid, block, 1, 1, self.shared_bytes, stream, args, None),
            "launch")
