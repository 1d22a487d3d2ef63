"""Timing helpers of the benchmarks: medians of device-synchronised timings, copy bandwidth."""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

GIB = 1 << 30


def median_ms(fn, device: str, graph: bool = False) -> float:
    """Median time of ``fn`` in ms: CUDA events (eager or graph replay) on GPU, perf_counter on CPU."""
    if device == "cuda":
        import triton.testing

        if graph:
            return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")
        return triton.testing.do_bench(fn, warmup=25, rep=150, return_mode="median")
    fn()
    return statistics.median(wall_ms(fn, device) for _ in range(5))


def wall_ms(fn, device: str) -> float:
    """Host-clock time of one call of ``fn`` in ms, the device synchronised on both sides."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - t0) * 1e3


def copy_bandwidth(device: str) -> float:
    """Device-to-device copy bandwidth in GB/s, bytes read plus written, 2 GiB buffers."""
    size = 2 * GIB if device == "cuda" else GIB // 8
    src = torch.randint(0, 255, (size,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() / ms / 1e6


def nbytes(*ts: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def provenance(script: str, args: argparse.Namespace, device: str) -> dict:
    """What a benchmark's JSON records of its run: the command (from the parsed arguments), date,
    commit, device, CPU threads and library versions."""
    import transformers

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from testkit.provenance import commit

    def flag(key: str, value: object) -> str:
        shown = " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        return f"--{key.replace('_', '-')} {shown}"

    return {
        "command": " ".join([f"benchmarks/{script}"] + [flag(k, v) for k, v in vars(args).items()
                                                         if v is not None]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit(),
        "device": torch.cuda.get_device_name() if device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
