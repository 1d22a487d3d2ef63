"""Calibration: stream text through the model, accumulate the uncentred second moment of the
post-RoPE queries per (layer, KV head) in float64, keep the full spectrum and the top-``rank``
eigenvectors (the HeadQ ``query_pca`` basis), and the largest magnitude of the post-RoPE keys and of
the values per (layer, KV head) (static fp8 scales, ``fp8_static``), and per layer and side a
non-uniform codebook for each of ``NUQ_BITS`` (``codebook="nuq"``, k-means of a seeded subsample of
the group-normalised keys and values, ``method.codebook``). :class:`Calibration` saves to a
folder (safetensors + JSON) or to one self-describing byte blob (what the database stores).
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from headq_core.config import NUQ_BITS, QuantConfig
from headq_core.errors import Cancelled
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.results import versions
from headq_core.evaluation.windows import AddBos, Placement, corpus_windows
from headq_core.method.codebook import SAMPLES, check_levels, learn_codebook, sample_normalised
from headq_core.method.fp8 import KV_SIDES
from headq_core.method.headq import QueryStats
from headq_core.models.adapter import capture
from headq_core.models.loading import LoadedModel
from headq_spec.artifact import (
    CODEBOOKS,
    FORMAT,
    META_NAME,
    TENSORS_NAME,
    check_meta,
    check_tensors,
    codebook_name,
    read_artifact,
)

CODEBOOK_SEED = 0  # the subsample of normalised values the codebooks learn from


@dataclass
class Calibration:
    """eigenvalues: float64 [layers, kv_heads, d], descending; basis: float32 [layers, kv_heads, d, rank]
    (orthonormal columns, matching eigenvalues); meta: model, tokenizer, corpus, tokens, rank, versions;
    key_amax / value_amax: float32 [layers, kv_heads], max |x| over the calibration tokens (None in
    artifacts made before static fp8 scales); codebooks: ``{side}_codebook{b}`` float32 [layers, 2^b]
    for each b of ``NUQ_BITS`` (empty in artifacts made before non-uniform codebooks)."""

    eigenvalues: torch.Tensor
    basis: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    key_amax: torch.Tensor | None = None
    value_amax: torch.Tensor | None = None
    codebooks: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return int(self.basis.shape[-1])

    def layer_basis(self, layer: int, rank: int) -> torch.Tensor:
        """Top-``rank`` query directions of one layer: [kv_heads, d, rank]."""
        if rank > self.rank:
            raise ValueError(f"rank: calibration keeps {self.rank} directions, {rank} requested")
        return self.basis[layer, :, :, :rank]

    @property
    def has_amax(self) -> bool:
        """Whether this calibration recorded the key and value amax (static fp8 scales)."""
        return self.key_amax is not None and self.value_amax is not None

    def layer_amax(self, layer: int, side: str) -> torch.Tensor:
        """max |key| (``side="key"``) or max |value| of one layer per KV head: float32 [kv_heads]."""
        if side not in KV_SIDES:
            raise ValueError(f"side: must be one of {KV_SIDES}, got {side!r}")
        amax = self.key_amax if side == "key" else self.value_amax
        if amax is None:
            raise ValueError("calibration: made without the key / value amax that static fp8 scales "
                             "(fp8_static) need; calibrate again")
        return amax[layer]

    @property
    def has_codebooks(self) -> bool:
        """Whether this calibration learned the non-uniform codebooks (``codebook="nuq"``)."""
        return set(self.codebooks) == set(CODEBOOKS)

    def layer_codebook(self, layer: int, side: str, bits: int) -> torch.Tensor:
        """The ``bits``-bit codebook of ``side`` in one layer: float32 [2^bits], ascending in [0, 1]."""
        if side not in KV_SIDES:
            raise ValueError(f"side: must be one of {KV_SIDES}, got {side!r}")
        if not self.has_codebooks:
            raise ValueError("calibration: made without the non-uniform codebooks that codebook 'nuq' "
                             "needs; calibrate again")
        if bits not in NUQ_BITS:
            raise ValueError(f"bits: codebooks are learned for {NUQ_BITS}, got {bits!r}")
        return self.codebooks[codebook_name(side, bits)][layer]

    def layer_static(self, layer: int, side: str, cfg: QuantConfig | None) -> dict[str, torch.Tensor]:
        """What ``side``'s format ``cfg`` reads from this calibration in ``layer``, as the keyword
        arguments of ``quant.fake_quantize``: ``amax`` [kv_heads] for static fp8 scales, ``codebook``
        [2^bits] for ``nuq``, else nothing."""
        kind = None if cfg is None else cfg.calibrated
        if kind == "amax":
            return {"amax": self.layer_amax(layer, side)}
        if kind == "codebook":
            assert cfg is not None
            return {"codebook": self.layer_codebook(layer, side, cfg.bits)}
        return {}

    def _tensors(self) -> dict[str, torch.Tensor]:
        amax = {f"{side}_amax": getattr(self, f"{side}_amax") for side in KV_SIDES}
        return {"eigenvalues": self.eigenvalues.contiguous(), "basis": self.basis.contiguous(),
                **{name: t.float().contiguous() for name, t in amax.items() if t is not None},
                **{name: t.float().contiguous() for name, t in self.codebooks.items()}}

    def save(self, directory: str | Path) -> None:
        """Write ``calibration.safetensors`` and ``calibration.json`` into ``directory``."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / TENSORS_NAME).write_bytes(st_save(self._tensors()))
        (path / META_NAME).write_text(json.dumps({"format": FORMAT, **self.meta}, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> Calibration:
        """Read a folder written by :meth:`save` (checked as :meth:`from_bytes` checks a blob)."""
        path = Path(directory)
        meta = check_meta((path / META_NAME).read_bytes())
        tensors = (path / TENSORS_NAME).read_bytes()
        check_tensors(tensors)
        return cls._from_parts(st_load(tensors), meta)

    def to_bytes(self) -> bytes:
        """One uncompressed tar holding the JSON metadata and the safetensors."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, data in (
                (META_NAME, json.dumps({"format": FORMAT, **self.meta}).encode()),
                (TENSORS_NAME, st_save(self._tensors())),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Calibration:
        """Read :meth:`to_bytes` output; anything else (a compressed tar, other members, shapes
        that do not match their bytes) is a ``ValueError`` before any tensor is built."""
        meta, tensors, _ = read_artifact(blob)
        return cls._from_parts(st_load(tensors), meta)

    @classmethod
    def _from_parts(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Calibration:
        codebooks = {name: tensors[name] for name in CODEBOOKS if name in tensors}
        for name, table in codebooks.items():
            for row in table:
                check_levels(row, int(name.rsplit("codebook", 1)[1]), f"calibration: {name}")
        return cls(eigenvalues=tensors["eigenvalues"], basis=tensors["basis"], meta=meta,
                   key_amax=tensors.get("key_amax"), value_amax=tensors.get("value_amax"),
                   codebooks=codebooks)


def calibrate(
    loaded: LoadedModel,
    corpus: CorpusSpec,
    *,
    window: int,
    max_tokens: int,
    rank: int,
    add_bos: AddBos = "auto",
    placement: Placement = "spread",
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Calibration:
    """Query statistics of ``loaded`` over ``corpus``: at most ``max_tokens`` in windows of ``window``,
    cut as the evaluator cuts them (``evaluation.windows``: ``add_bos``, ``placement``)."""
    info = loaded.info
    if not isinstance(rank, int) or not 1 <= rank <= info.head_dim:
        raise ValueError(f"rank: must lie in [1, {info.head_dim}], got {rank!r}")
    started = time.perf_counter()
    windows = corpus_windows(loaded.tokenizer, corpus, window, max_tokens, add_bos=add_bos,
                             placement=placement)
    stats = QueryStats(info.layers, info.kv_heads, info.head_dim)
    amax = torch.zeros(len(KV_SIDES), info.layers, info.kv_heads)  # keys, values
    samples: dict[tuple[int, str], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    per_window = max(1, SAMPLES // max(1, len(windows.ids)))
    generator = torch.Generator().manual_seed(CODEBOOK_SEED)

    def on_layer(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        stats.update(layer, q.cpu())
        for i, x in enumerate((k, v)):  # [b, kv_heads, L, d]
            amax[i, layer] = torch.maximum(amax[i, layer], x.float().abs().amax(dim=(0, 2, 3)).cpu())
            side = KV_SIDES[i]
            samples.setdefault((layer, side), []).append(
                sample_normalised(x.detach(), side, per_window, generator))

    device = next(loaded.model.parameters()).device
    with torch.no_grad(), capture(loaded.model, on_layer):
        for i, ids in enumerate(windows.ids):
            if should_stop is not None and should_stop():
                raise Cancelled("calibration cancelled")
            loaded.model(ids[None].to(device), use_cache=False)
            if progress is not None:
                progress((i + 1) / len(windows.ids), "calibrate")
    values, vectors = stats.spectrum()
    codebooks = {codebook_name(side, b): torch.stack([_learn(samples.get((layer, side), []), b)
                                                     for layer in range(info.layers)])
                 for side in KV_SIDES for b in NUQ_BITS}
    meta = {
        "model": info.to_dict(),
        "tokenizer": getattr(loaded.tokenizer, "name_or_path", None),
        "corpus": corpus.to_dict(),
        **windows.describe(),
        "rank": rank,
        "codebook": {"group": "KIVI, 32", "samples_per_window": per_window, "seed": CODEBOOK_SEED},
        "versions": versions(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return Calibration(eigenvalues=values, basis=vectors[..., :rank].float().contiguous(), meta=meta,
                       key_amax=amax[0].clone(), value_amax=amax[1].clone(), codebooks=codebooks)


def _learn(drawn: list[tuple[torch.Tensor, torch.Tensor]], bits: int) -> torch.Tensor:
    """The ``bits``-bit codebook [2^bits] of one layer and side from its windows' (values, weights)."""
    if not drawn:
        return learn_codebook(torch.zeros(0), bits)
    return learn_codebook(torch.cat([u for u, _ in drawn]), bits, torch.cat([w for _, w in drawn]))
