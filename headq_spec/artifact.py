"""The calibration artifact (``headq_core`` ``Calibration.to_bytes``), checked without torch.

An artifact is an uncompressed tar of exactly ``calibration.json`` (a JSON object whose ``format``
is :data:`FORMAT`) and ``calibration.safetensors`` (float64 ``eigenvalues`` [layers, kv_heads,
head_dim] and float32 ``basis`` [layers, kv_heads, head_dim, rank]; since static fp8 scales also
float32 ``key_amax`` and ``value_amax`` [layers, kv_heads], both or neither, so earlier artifacts
still read; since non-uniform codebooks also float32 ``key_codebook{b}`` and ``value_codebook{b}``
[layers, 2^b] for each b of ``NUQ_BITS``, all or none, with the amax). :func:`read_artifact` refuses
anything else from the bytes it is given: a compressed tar is never decompressed, and every declared
size, shape and offset must match the bytes present, so nothing read can outgrow the blob.
"""

from __future__ import annotations

import io
import json
import math
import struct
import tarfile
from dataclasses import dataclass
from typing import Any

from headq_spec.runs import NUQ_BITS

FORMAT = "headq-calibration/1"
META_NAME = "calibration.json"
TENSORS_NAME = "calibration.safetensors"
MAX_META_BYTES = 4 * 2**20  # metadata: model, corpus, window offsets, versions
MAX_HEADER_BYTES = 64 * 1024  # the safetensors JSON header of two tensors
_TENSORS = {"eigenvalues": ("F64", 3), "basis": ("F32", 4)}  # name: (dtype, dimensions)
AMAX = {"key_amax": ("F32", 2), "value_amax": ("F32", 2)}  # optional, both or neither


def codebook_name(side: str, bits: int) -> str:
    """The tensor of ``side``'s (``key`` / ``value``) ``bits``-bit codebooks: ``key_codebook2`` ..."""
    return f"{side}_codebook{bits}"


CODEBOOKS = {codebook_name(side, b): ("F32", 2) for side in ("key", "value") for b in NUQ_BITS}
_LAYOUTS = (set(_TENSORS), set(_TENSORS) | set(AMAX), set(_TENSORS) | set(AMAX) | set(CODEBOOKS))
_ITEM_BYTES = {"F64": 8, "F32": 4}


@dataclass(frozen=True)
class Geometry:
    """What an artifact's tensors describe: the model's layers, KV heads, head_dim, and the rank kept."""

    layers: int
    kv_heads: int
    head_dim: int
    rank: int


def read_artifact(blob: bytes) -> tuple[dict[str, Any], bytes, Geometry]:
    """``(metadata without format, safetensors bytes, their geometry)``; ``ValueError`` naming the
    first thing that is not a calibration artifact."""
    members = _members(blob)
    tensors = members[TENSORS_NAME]
    return check_meta(members[META_NAME]), tensors, check_tensors(tensors)


def _members(blob: bytes) -> dict[str, bytes]:
    """The two members of an uncompressed tar (mode ``r:`` never decompresses), plain files (no
    sparse one, whose holes would inflate) no larger than the blob."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
            while (member := tar.next()) is not None:
                if (member.name not in (META_NAME, TENSORS_NAME) or member.name in found
                        or member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.issparse()):
                    raise ValueError(f"calibration: unexpected tar member {member.name!r}")
                if member.size > (MAX_META_BYTES if member.name == META_NAME else len(blob)):
                    raise ValueError(f"calibration: {member.name} declares {member.size} bytes")
                file = tar.extractfile(member)
                assert file is not None  # a regular file
                found[member.name] = file.read()
    except (tarfile.TarError, RecursionError, EOFError) as exc:
        raise ValueError(f"calibration: not a calibration blob (an uncompressed tar; {exc})") from exc
    missing = sorted({META_NAME, TENSORS_NAME} - set(found))
    if missing:
        raise ValueError(f"calibration: not a calibration blob (missing {', '.join(missing)})")
    return found


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"calibration: {what} is not valid JSON ({exc})") from exc


def check_meta(data: bytes) -> dict[str, Any]:
    """The metadata of ``calibration.json`` without its ``format``, which must be :data:`FORMAT`."""
    if len(data) > MAX_META_BYTES:
        raise ValueError(f"calibration: {META_NAME} is over {MAX_META_BYTES} bytes")
    meta = _json(data, META_NAME)
    if not isinstance(meta, dict) or meta.pop("format", None) != FORMAT:
        raise ValueError(f"calibration: unknown format (expected {FORMAT})")
    return meta


def check_tensors(data: bytes) -> Geometry:
    """The geometry of ``calibration.safetensors`` after checking its header against its bytes:
    exactly the two tensors (or four, with the amax, or those and the codebooks), their dtypes and
    dimensions, offsets that tile the data."""
    if len(data) < 8:
        raise ValueError("calibration: tensors: shorter than a safetensors header")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(MAX_HEADER_BYTES, len(data) - 8):
        raise ValueError(f"calibration: tensors: header of {size} bytes does not fit")
    header = _json(data[8:8 + size], "the safetensors header")
    if isinstance(header, dict):
        header.pop("__metadata__", None)
    if not isinstance(header, dict) or set(header) not in _LAYOUTS:
        raise ValueError(f"calibration: tensors: expected exactly {sorted(_TENSORS)}, "
                         f"optionally with {sorted(AMAX)}, then {sorted(CODEBOOKS)}")
    shapes = {name: _shape(name, header[name]) for name in header}
    ends = [0] + [end for _, end in sorted(header[name]["data_offsets"] for name in header)]
    starts = [start for start, _ in sorted(header[name]["data_offsets"] for name in header)]
    if starts != ends[:-1] or ends[-1] != len(data) - 8 - size:
        raise ValueError("calibration: tensors: offsets do not tile the data")
    eigenvalues, basis = shapes["eigenvalues"], shapes["basis"]
    if basis[:3] != eigenvalues or basis[3] > basis[2]:
        raise ValueError(f"calibration: tensors: basis {basis} does not fit eigenvalues {eigenvalues}")
    for name in AMAX:
        if name in shapes and shapes[name] != basis[:2]:
            raise ValueError(f"calibration: tensors: {name} {shapes[name]} does not fit basis {basis}")
    for name in CODEBOOKS:
        levels = 1 << int(name.rsplit("codebook", 1)[1])
        if name in shapes and shapes[name] != [basis[0], levels]:
            raise ValueError(f"calibration: tensors: {name} {shapes[name]} is not [{basis[0]}, {levels}]")
    return Geometry(*basis)


def _shape(name: str, entry: Any) -> list[int]:
    """The shape of one header entry, checked against its dtype, dimensions and byte span."""
    dtype, dims = {**_TENSORS, **AMAX, **CODEBOOKS}[name]
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"calibration: tensors: {name}: not a tensor entry")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if entry["dtype"] != dtype or not _ints(shape, dims, low=1) or not _ints(offsets, 2, low=0):
        raise ValueError(f"calibration: tensors: {name}: must be {dtype} with {dims} positive dimensions")
    if offsets[1] - offsets[0] != math.prod(shape) * _ITEM_BYTES[dtype]:
        raise ValueError(f"calibration: tensors: {name}: shape {shape} does not match its bytes")
    return list(shape)


def _ints(value: Any, length: int, low: int) -> bool:
    return (isinstance(value, list) and len(value) == length
            and all(type(v) is int and v >= low for v in value))
