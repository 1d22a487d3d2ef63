"""Calibration artifacts built without torch (the layout of ``Calibration.to_bytes``: a tar of the
metadata JSON and a safetensors file), and tars of any members, for the import and loader tests."""

from __future__ import annotations

import io
import json
import struct
import tarfile
from typing import Any

from headq_spec.artifact import FORMAT, META_NAME, TENSORS_NAME


def safetensors_bytes(header: dict[str, Any], data: bytes) -> bytes:
    """A safetensors file: the little-endian header length, the JSON header, the data."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def calibration_tensors(layers: int, kv_heads: int, head_dim: int, rank: int) -> bytes:
    """Zero ``eigenvalues`` (float64) and ``basis`` (float32) of the given geometry."""
    eig = layers * kv_heads * head_dim * 8
    basis = layers * kv_heads * head_dim * rank * 4
    shape = [layers, kv_heads, head_dim]
    header = {"eigenvalues": {"dtype": "F64", "shape": shape, "data_offsets": [0, eig]},
              "basis": {"dtype": "F32", "shape": [*shape, rank], "data_offsets": [eig, eig + basis]}}
    return safetensors_bytes(header, bytes(eig + basis))


def tar_of(members: dict[str, bytes], mode: str = "w") -> bytes:
    """A tar (``mode`` ``w:bz2``, ``w:gz``, ``w:xz`` compresses it) of ``members`` as regular files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_artifact(layers: int = 3, kv_heads: int = 2, head_dim: int = 8, rank: int = 4,
                  mode: str = "w") -> bytes:
    """An artifact for ``resultgen.make_document(kind="calibration")``'s model and rank by default."""
    meta = json.dumps({"format": FORMAT, "rank": rank}).encode()
    tensors = calibration_tensors(layers, kv_heads, head_dim, rank)
    return tar_of({META_NAME: meta, TENSORS_NAME: tensors}, mode)
