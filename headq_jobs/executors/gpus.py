"""Count the GPUs a host offers without importing torch (the API process never initialises CUDA).

``CUDA_VISIBLE_DEVICES`` wins when set; otherwise ``nvidia-smi -L`` lists the devices; no driver
means no GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess


def gpu_ids(environ: dict[str, str] | None = None) -> list[str]:
    """Device ids to pin one worker process to each (``[]`` on a CPU-only host)."""
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def default_concurrency(environ: dict[str, str] | None = None) -> int:
    """One job at a time per GPU, and one on a CPU-only host."""
    return max(1, len(gpu_ids(environ)))
