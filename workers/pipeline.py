"""Run one job spec (docs/contracts.md "Job spec") through headq_core: the one function the job
runner and the ``headq`` CLI both call, plus a per-process cache of the last loaded model."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from headq_core.evaluation.calibrate import Calibration, calibrate
from headq_core.evaluation.corpus import CorpusSpec, check_files
from headq_core.evaluation.evaluate import evaluate
from headq_core.evaluation.results import calibration_document
from headq_core.evaluation.retrieval import retrieve
from headq_core.evaluation.windows import WINDOW_FIELDS
from headq_core.models.loading import LoadedModel, load_model
from headq_jobs.paths import check_local_paths
from headq_spec.jobs import CalibrationOptions, JobSpec, model_location

Progress = Callable[[float, str], None]


class ModelCache:
    """Keeps this process's last loaded model; the next job on the same model reuses it."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.loaded: LoadedModel | None = None

    def get(self, key: tuple, load: Callable[[], LoadedModel]) -> LoadedModel:
        if self.key != key or self.loaded is None:
            self.loaded, self.key = None, None  # drop the old model before loading the next one
            self.loaded, self.key = load(), key
        return self.loaded


def _model_path(spec: JobSpec) -> str:
    """The id to load: a local path resolved (``..`` and symbolic links), anything else as given."""
    if model_location(spec.model.id) == "path":
        return str(Path(spec.model.id).expanduser().resolve())
    return spec.model.id


def _corpus(spec: JobSpec) -> tuple[CorpusSpec, int, int]:
    """(corpus, window, max_tokens) of the spec's dataset block."""
    ds = spec.dataset
    default_split = (
        ("calibration" if spec.kind == "calibration" else "eval") if ds.source == "builtin" else "train"
    )
    corpus = CorpusSpec(
        source=ds.source,
        name=ds.name,
        split=ds.split or default_split,
        files=tuple(ds.files) if ds.files else None,
        text_field=ds.text_field,
    )
    return corpus, ds.window, ds.max_tokens if ds.max_tokens is not None else sys.maxsize


def execute(
    spec: dict[str, Any],
    *,
    calibration_blob: bytes | None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    model_cache: ModelCache | None = None,
    allowed_model_dirs: Sequence[str] | None = None,
    allowed_data_dirs: Sequence[str] | None = None,
    trust_remote_code: bool = False,
) -> tuple[dict[str, Any], bytes | None]:
    """Run ``spec``: (results document, artifact bytes: the calibration blob or None)."""
    job = JobSpec.model_validate(spec)
    report = progress or (lambda fraction, stage: None)
    check_local_paths(job, allowed_model_dirs, allowed_data_dirs)  # the worker's own settings
    model_id = _model_path(job)
    key = (model_id, job.model.gguf_file, job.model.revision, job.model.dtype, job.model.device,
           trust_remote_code)
    corpus, window, max_tokens = _corpus(job)
    check_files(corpus)
    report(0.0, "load model")

    def load() -> LoadedModel:
        return load_model(
            model_id,
            revision=job.model.revision,
            dtype=job.model.dtype,
            device=job.model.device,
            trust_remote_code=trust_remote_code,
            gguf_file=job.model.gguf_file,
        )

    loaded = model_cache.get(key, load) if model_cache is not None else load()
    if job.kind == "calibration":
        started = time.perf_counter()
        cal = calibrate(
            loaded,
            corpus,
            window=window,
            max_tokens=max_tokens,
            rank=(job.calibration or CalibrationOptions()).rank,
            add_bos=job.dataset.add_bos,
            placement=job.dataset.placement,
            progress=report,
            should_stop=should_stop,
        )
        dataset = {**corpus.to_dict(), **{k: cal.meta[k] for k in WINDOW_FIELDS}}
        doc = calibration_document(cal, loaded.info.to_dict(), dataset, time.perf_counter() - started)
        return doc, cal.to_bytes()
    calibration = None if calibration_blob is None else Calibration.from_bytes(calibration_blob)
    if job.kind == "retrieval":
        doc = retrieve(loaded, corpus, job.runs, calibration, options=job.retrieval, max_tokens=max_tokens,
                       seed=job.seed, calibration_job=job.calibration_job, progress=report,
                       should_stop=should_stop)
        return doc, None
    doc = evaluate(
        loaded,
        corpus,
        job.runs,
        calibration,
        calibration_job=job.calibration_job,
        window=window,
        add_bos=job.dataset.add_bos,
        placement=job.dataset.placement,
        max_tokens=max_tokens,
        seed=job.seed,
        head_windows=job.dataset.head_windows,
        batch=job.dataset.batch,
        attention=job.dataset.attention,
        head_rows=job.dataset.head_rows,
        progress=report,
        should_stop=should_stop,
    )
    return doc, None
