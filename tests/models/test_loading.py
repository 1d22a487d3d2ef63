"""load_model: local folders, the built-in SmolLM2 (converted once), clear errors."""

import time

import pytest

from headq_core.models.loading import BUILTIN_SMOLLM2, DEFAULT_CACHE_DIR, builtin_gguf_path, load_model
from tests.models.tiny import save_tiny


def test_local_folder_roundtrip(tmp_path):
    save_tiny(tmp_path, "llama")
    loaded = load_model(str(tmp_path), device="cpu")
    assert loaded.info.architecture == "LlamaForCausalLM"
    assert (loaded.info.layers, loaded.info.heads, loaded.info.kv_heads, loaded.info.head_dim) == (2, 4, 2, 8)
    assert loaded.info.logit_scale == pytest.approx(8**-0.5)
    assert not loaded.model.training


@pytest.mark.parametrize("kwargs, field", [({"dtype": "float8"}, "dtype"), ({"device": "tpu9"}, "device")])
def test_bad_arguments_name_the_field(tmp_path, kwargs, field):
    with pytest.raises(ValueError, match=field):
        load_model(str(tmp_path), **kwargs)


def test_unknown_builtin_and_missing_path():
    with pytest.raises(ValueError, match="model_id: unknown built-in"):
        load_model("builtin:gpt-5")
    with pytest.raises(ValueError, match="model_id"):
        load_model("/nonexistent/folder/for/sure")


def test_builtin_smollm2_loads_from_the_converted_cache():
    assert builtin_gguf_path().name.endswith(".gguf")
    load_model(BUILTIN_SMOLLM2, device="cpu")  # converts once into DEFAULT_CACHE_DIR if needed
    assert (DEFAULT_CACHE_DIR / "smollm2-135m-instruct" / "model.safetensors").is_file()
    start = time.perf_counter()
    loaded = load_model(BUILTIN_SMOLLM2, device="cpu")
    elapsed = time.perf_counter() - start
    info = loaded.info
    assert (info.layers, info.heads, info.kv_heads, info.head_dim) == (30, 9, 3, 64)
    assert loaded.tokenizer.eos_token_id is not None
    print(f"cached load {elapsed:.2f}s")


@pytest.mark.slow
def test_local_gguf_file_loads_directly():
    loaded = load_model(str(builtin_gguf_path()), device="cpu")
    assert loaded.info.architecture == "LlamaForCausalLM" and loaded.info.kv_heads == 3
    assert loaded.info.id.endswith(".gguf")


def test_a_hub_id_never_loads_a_local_folder(tmp_path, monkeypatch):
    # as in the report: `model.id: "evilmodel"` loaded <cwd>/evilmodel; a path must say it is one
    save_tiny(tmp_path / "evilmodel", "llama")
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").symlink_to(tmp_path / "evilmodel")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)
    for hub_id in ("evilmodel", "org/name", "dangling"):
        with pytest.raises(ValueError, match=f"^model_id: '{hub_id}' is a hub id but names a local path"):
            load_model(hub_id, device="cpu")
    for path in ("./evilmodel", str(tmp_path / "evilmodel"), "org/name/"):
        assert load_model(path, device="cpu").info.architecture == "LlamaForCausalLM"


def test_gguf_file_of_a_hub_repository_or_folder_is_passed_not_joined(tmp_path):
    """A job's ``model.gguf_file`` goes to ``from_pretrained(gguf_file=...)``: joining it onto a hub
    id made a local path of it (``org/name/model.gguf``), which never loads."""
    from headq_core.models.loading import _source
    from headq_spec.jobs import JobSpec
    from workers.pipeline import _model_path

    model = {"id": "org/name", "gguf_file": "m.Q4_0.gguf"}
    spec = JobSpec.model_validate({"kind": "calibration", "model": model})
    assert _model_path(spec) == "org/name"
    assert _source("org/name", None, "m.Q4_0.gguf") == ("org/name", {"gguf_file": "m.Q4_0.gguf"})
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    assert _source(str(tmp_path), None, "b.gguf") == (str(tmp_path), {"gguf_file": "b.gguf"})
    with pytest.raises(ValueError, match="gguf_file"):
        _source(str(tmp_path), None, "c.gguf")
