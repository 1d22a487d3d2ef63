"""Calibration: query second moments checked against queries rebuilt from q_proj + RoPE by hand; the
artifact loader refuses anything but an uncompressed artifact whose shapes match its bytes."""

import io
import json
import struct
import tarfile
import tracemalloc

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from headq_core.errors import Cancelled
from headq_core.evaluation.calibrate import Calibration, calibrate
from headq_core.evaluation.corpus import CorpusSpec
from headq_spec.artifact import META_NAME, TENSORS_NAME
from tests.app.artifactgen import calibration_tensors, make_artifact, safetensors_bytes, tar_of
from tests.models.tiny import loaded

SPEC = CorpusSpec(split="calibration")


def _direct_moments(lm, windows):
    """C[layer, kv_head] = mean q q^T from hooks on q_proj and the model's rotary embedding."""
    model = lm.model
    outs = {}
    hooks = [
        layer.self_attn.q_proj.register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o))
        for n, layer in enumerate(model.model.layers)
    ]
    info = lm.info
    total = torch.zeros(info.layers, info.kv_heads, info.head_dim, info.head_dim, dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for ids in windows:
            ids = ids[None]
            model(ids, use_cache=False)
            pos = torch.arange(ids.shape[1])[None]
            cos, sin = model.model.rotary_emb(torch.zeros(1, ids.shape[1], 1), pos)
            for n in range(info.layers):
                q = outs[n].view(1, -1, info.heads, info.head_dim).transpose(1, 2)
                q, _ = apply_rotary_pos_emb(q, q, cos, sin)
                for head in range(info.heads):
                    x = q[0, head].double()
                    total[n, head // (info.heads // info.kv_heads)] += x.T @ x
            count += ids.shape[1] * info.heads // info.kv_heads
    for h in hooks:
        h.remove()
    return total / count


def test_spectrum_and_basis_match_direct_computation():
    lm = loaded("llama")
    fractions = []
    cal = calibrate(lm, SPEC, window=16, max_tokens=48, rank=3, progress=lambda f, s: fractions.append(f))
    from headq_core.evaluation.windows import corpus_windows

    moment = _direct_moments(lm, corpus_windows(lm.tokenizer, SPEC, 16, 48).ids)
    values, vectors = torch.linalg.eigh(moment)
    torch.testing.assert_close(cal.eigenvalues, values.flip(-1), rtol=1e-6, atol=1e-9)
    top = vectors.flip(-1)[..., :3]
    proj_ref = top @ top.transpose(-1, -2)
    proj = cal.basis.double() @ cal.basis.double().transpose(-1, -2)
    torch.testing.assert_close(proj, proj_ref, atol=1e-4, rtol=0)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert cal.meta["tokens"] == 48 and cal.meta["rank"] == 3 and cal.meta["corpus"]["split"] == "calibration"


def test_roundtrips(tmp_path):
    cal = calibrate(loaded("gpt2"), SPEC, window=8, max_tokens=16, rank=2)
    for again in (
        Calibration.from_bytes(cal.to_bytes()),
        (cal.save(tmp_path), Calibration.load(tmp_path))[1],
    ):
        assert torch.equal(again.basis, cal.basis) and torch.equal(again.eigenvalues, cal.eigenvalues)
        assert again.meta == cal.meta
    assert cal.layer_basis(1, 2).shape == (4, 8, 2)
    with pytest.raises(ValueError, match="rank"):
        cal.layer_basis(0, 3)


def test_errors():
    lm = loaded("llama")
    with pytest.raises(ValueError, match="rank"):
        calibrate(lm, SPEC, window=8, max_tokens=16, rank=0)
    with pytest.raises(Cancelled):
        calibrate(lm, SPEC, window=8, max_tokens=16, rank=2, should_stop=lambda: True)
    with pytest.raises(ValueError, match="calibration: not a calibration blob"):
        Calibration.from_bytes(b"not a tar")


def _members(blob: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@pytest.mark.parametrize("mode", ["w:bz2", "w:gz", "w:xz"])
def test_a_compressed_blob_is_refused_not_decompressed(mode):
    cal = calibrate(loaded("llama"), SPEC, window=8, max_tokens=16, rank=2)
    with pytest.raises(ValueError, match="calibration: not a calibration blob"):
        Calibration.from_bytes(tar_of(_members(cal.to_bytes()), mode))


class _Zeros(io.RawIOBase):
    """An endless stream of zero bytes."""

    def readinto(self, buffer):
        buffer[:] = bytes(len(buffer))
        return len(buffer)


def test_a_decompression_bomb_costs_no_memory():
    # as in the report: a few hundred bytes of bz2 whose safetensors member inflates to 64 MiB
    meta = json.dumps({"format": "headq-calibration/1"}).encode()
    infos = [tarfile.TarInfo(META_NAME), tarfile.TarInfo(TENSORS_NAME)]
    infos[0].size, infos[1].size = len(meta), 64 * 2**20
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:bz2") as tar:
        tar.addfile(infos[0], io.BytesIO(meta))
        tar.addfile(infos[1], _Zeros())
    bomb = buffer.getvalue()
    assert len(bomb) < 2**16
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="calibration: not a calibration blob"):
            Calibration.from_bytes(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_a_sparse_member_is_refused_before_its_holes_are_filled():
    holes = 256 * 2**20  # a sparse safetensors member: one byte of data after 256 MiB of holes
    data = f"1\n{holes - 1}\n1\n".encode().ljust(512, b"\0") + b"x"
    info = tarfile.TarInfo(TENSORS_NAME)
    info.size = len(data)
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": TENSORS_NAME,
                        "GNU.sparse.realsize": str(holes)}
    meta = json.dumps({"format": "headq-calibration/1"}).encode()
    header = tarfile.TarInfo(META_NAME)
    header.size = len(meta)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(header, io.BytesIO(meta))
        tar.addfile(info, io.BytesIO(data))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="calibration: unexpected tar member"):
            Calibration.from_bytes(buffer.getvalue())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_blobs_the_workers_cannot_use_are_refused():
    good = make_artifact(layers=2, kv_heads=2, head_dim=8, rank=3)
    loaded_back = Calibration.from_bytes(good)  # the stdlib-built artifact is what torch reads
    assert loaded_back.basis.shape == (2, 2, 8, 3) and loaded_back.eigenvalues.dtype == torch.float64
    meta, tensors = _members(good)[META_NAME], _members(good)[TENSORS_NAME]
    huge = {"dtype": "F64", "shape": [10**6, 10**6, 8], "data_offsets": [0, 8]}
    lying = safetensors_bytes({"eigenvalues": huge,
                               "basis": {"dtype": "F32", "shape": [1, 1, 1, 1], "data_offsets": [8, 12]}},
                              bytes(12))
    float32 = calibration_tensors(2, 2, 8, 3).replace(b"F64", b"F32")
    cases = {
        "unexpected tar member": {META_NAME: meta, TENSORS_NAME: tensors, "extra.bin": b"x"},
        "missing calibration.safetensors": {META_NAME: meta},
        "unknown format": {META_NAME: b'{"format": "other/1"}', TENSORS_NAME: tensors},
        "not valid JSON": {META_NAME: b"[" * 100_000, TENSORS_NAME: tensors},
        "does not match its bytes": {META_NAME: meta, TENSORS_NAME: lying},
        "must be F64": {META_NAME: meta, TENSORS_NAME: float32},
        "does not fit eigenvalues": {META_NAME: meta, TENSORS_NAME: calibration_tensors(2, 2, 8, 9)},
        "header of": {META_NAME: meta, TENSORS_NAME: struct.pack("<Q", 2**60) + bytes(64)},
    }
    for words, members in cases.items():
        with pytest.raises(ValueError, match=f"^calibration: .*{words}"):
            Calibration.from_bytes(tar_of(members))


def test_a_saved_folder_is_checked_as_a_blob_is(tmp_path):
    cal = calibrate(loaded("llama"), SPEC, window=8, max_tokens=16, rank=2)
    cal.save(tmp_path)
    (tmp_path / TENSORS_NAME).write_bytes(calibration_tensors(2, 2, 8, 9))
    with pytest.raises(ValueError, match="calibration: tensors: basis"):
        Calibration.load(tmp_path)
