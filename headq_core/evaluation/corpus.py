"""Text corpora: the built-in State of the Union addresses and Shakespeare plays, any Hugging Face
dataset, local files.

A corpus is read as a list of documents; ``evaluation.windows`` cuts them into token windows.
"""

from __future__ import annotations

import gzip
import importlib.resources
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from headq_spec.jobs import model_location

SOURCES = ("builtin", "hf", "files")
BUILTIN_NAMES = ("sotu", "shakespeare")
BUILTIN_SPLITS = {
    "calibration": "calibration",
    "calib": "calibration",
    "train": "calibration",
    "eval": "evaluation",
    "evaluation": "evaluation",
    "test": "evaluation",
}
_SEPARATOR = "\n\f\n"


@dataclass(frozen=True)
class CorpusSpec:
    """Where text comes from. ``builtin``: ``name`` in :data:`BUILTIN_NAMES` (``sotu``: addresses
    of 1934-2001 / 2002-2021; ``shakespeare``: five comedies / four tragedies), split
    ``calibration`` or ``eval``; ``hf``: ``datasets.load_dataset(name, config, split=split)`` of a
    hub dataset id (``name`` or ``org/name``, never a path); ``files``: local text files."""

    source: Literal["builtin", "hf", "files"] = "builtin"
    name: str | None = "sotu"
    split: str = "eval"
    config: str | None = None
    files: tuple[str, ...] | None = None
    text_field: str = "text"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"dataset.source: must be one of {SOURCES}, got {self.source!r}")
        if self.source == "builtin" and (self.name not in BUILTIN_NAMES or self.split not in BUILTIN_SPLITS):
            raise ValueError(
                f"dataset.name/split: the built-in corpora are name in {BUILTIN_NAMES} with split in "
                f"{sorted(BUILTIN_SPLITS)}, got name={self.name!r} split={self.split!r}"
            )
        if self.source == "hf" and not self.name:
            raise ValueError("dataset.name: a Hugging Face dataset needs a name")
        if self.source == "hf" and model_location(str(self.name)) != "hub":
            raise ValueError(f"dataset.name: {self.name!r} is not a hub dataset id ('name' or 'org/name')")
        if self.source == "files" and not self.files:
            raise ValueError("dataset.files: source 'files' needs at least one file")
        if self.files is not None:
            object.__setattr__(self, "files", tuple(str(f) for f in self.files))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = list(self.files) if self.files else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorpusSpec:
        """Build from a job spec's ``dataset`` block (``window`` / ``max_tokens`` are ignored here)."""
        known = {"source", "name", "split", "config", "files", "text_field"}
        return cls(**{k: v for k, v in data.items() if k in known and v is not None})


def check_files(spec: CorpusSpec) -> None:
    """Fail fast (before a model is loaded) when a named local file is missing; glob patterns are
    left to ``datasets``."""
    missing = [f for f in spec.files or () if not any(c in f for c in "*?[") and not Path(f).is_file()]
    if missing:
        raise ValueError(f"dataset.files: no such file: {', '.join(missing)}")


def load_texts(spec: CorpusSpec) -> list[str]:
    """The corpus as a list of non-empty documents."""
    if spec.source == "builtin":
        data = importlib.resources.files("headq_core.data")
        resource = data / str(spec.name) / f"{BUILTIN_SPLITS[spec.split]}.txt.gz"
        return gzip.decompress(resource.read_bytes()).decode("utf-8").split(_SEPARATOR)
    import datasets

    if spec.source == "files":
        dataset = datasets.load_dataset(
            "text", data_files=list(spec.files or ()), split="train", sample_by="document"
        )
    else:
        _check_hub_name(str(spec.name))
        dataset = datasets.load_dataset(spec.name, spec.config, split=spec.split)
    if spec.text_field not in dataset.column_names:
        raise ValueError(
            f"dataset.text_field: {spec.text_field!r} is not a column (columns: {dataset.column_names})"
        )
    return [t for t in dataset[spec.text_field] if t and t.strip()]


def _check_hub_name(name: str) -> None:
    """``datasets`` reads a hub-looking name from the disk when a path of that name exists in the
    working directory, or when it names a builder of local files (``text``, ``json``, ...)."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    if name in _PACKAGED_DATASETS_MODULES or os.path.lexists(name):
        raise ValueError(f"dataset.name: {name!r} would be read from local files, not from the hub")
