"""Decode-exact teacher-forced evaluation of many configurations on one model.

For every window of ``window`` tokens and every run, one forward pass through the model with the
run's attention: its NLL gives the run's perplexity and the same pass yields its per-head metrics
(dense vs quantized logits on that run's own inputs). The attention is materialised
(:class:`~headq_core.evaluation.run_attention.RunAttention`, the reference, metrics over every query
row) or in O(L) memory (blockwise, or fused on a GPU; metrics over a seeded sample of rows):
:mod:`~headq_core.evaluation.attention_paths` chooses. The NLL is computed in chunks of positions
(``token_nll``) and also kept per position bucket. Returns the results document of docs/contracts.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from headq_core.config import RunSpec
from headq_core.errors import Cancelled
from headq_core.evaluation.attention_paths import HEAD_ROWS, attention_path, mask_context, run_handler
from headq_core.evaluation.calibrate import Calibration
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.head_accumulator import HeadAccumulator
from headq_core.evaluation.positions import position_buckets, sample_rows
from headq_core.evaluation.rank_correlation import POOLED, head_rank_correlations
from headq_core.evaluation.results import compact_list, results_document, run_rows
from headq_core.evaluation.token_nll import token_nll
from headq_core.evaluation.uncertainty import resample_indices, uncertainty_note
from headq_core.evaluation.windows import AddBos, Placement, corpus_windows
from headq_core.method.budget import effective_bits
from headq_core.method.formats import check_head_dim
from headq_core.models.adapter import attention_handler, check_pre_rope
from headq_core.models.loading import LoadedModel
from headq_core.runtime.layer_types import layer_windows
from headq_spec.runs import check_run_list


def check_runs(
    runs: Sequence[RunSpec | dict], calibration: Calibration | None, head_dim: int, model: Any = None
) -> list[RunSpec]:
    """The run list as RunSpecs, checked: the model-free rules (``check_run_list``), then what needs
    the model and calibration (rank <= head_dim, a calibration deep enough where needed, its amax for
    static fp8 scales, its codebooks for nuq, pre-RoPE keys only on a ``model`` whose rotary
    embedding they can undo)."""
    specs = check_run_list(list(runs))
    for run in specs:
        if model is not None and run.key is not None and run.key.pre_rope:
            try:
                check_pre_rope(model)
            except ValueError as exc:
                raise ValueError(f"{exc} (run {run.name!r})") from None
        need = max(
            run.headq.rank if run.headq and run.headq.basis == "query_pca" else 0,
            run.intervention.dims if run.intervention else 0,
        )
        if need and calibration is None:
            raise ValueError(f"calibration: run {run.name!r} needs a calibration")
        if need and calibration is not None and need > calibration.rank:
            raise ValueError(
                f"calibration: run {run.name!r} needs rank {need}, calibration keeps {calibration.rank}"
            )
        if any(cfg is not None and cfg.fp8_static for cfg in (run.key, run.value)):
            if calibration is None:
                raise ValueError(f"calibration: run {run.name!r} needs a calibration (static fp8 scales)")
            if not calibration.has_amax:
                raise ValueError(f"calibration: run {run.name!r} needs static fp8 scales; this calibration "
                                 "was made without the key / value amax (calibrate again)")
        if any(cfg is not None and cfg.calibrated == "codebook" for cfg in (run.key, run.value)):
            if calibration is None:
                raise ValueError(f"calibration: run {run.name!r} needs a calibration (non-uniform codebooks)")
            if not calibration.has_codebooks:
                raise ValueError(f"calibration: run {run.name!r} needs non-uniform codebooks (nuq); this "
                                 "calibration was made without them (calibrate again)")
        if run.headq and run.headq.rank > head_dim:
            raise ValueError(f"headq.rank: {run.headq.rank} exceeds head_dim {head_dim}")
        for side, cfg in (("key", run.key), ("value", run.value)):
            if cfg is not None:
                try:
                    check_head_dim(cfg, head_dim)
                except ValueError as exc:
                    raise ValueError(f"{side}.{exc} (run {run.name!r})") from None
    return specs


def _bits(run: RunSpec, head_dim: int) -> dict[str, float]:
    return {
        "key": effective_bits(run.key, head_dim, run.headq),
        "value": effective_bits(run.value, head_dim, policy=run.value_policy),
    }


def check_window(model, window: int) -> None:
    """A window longer than the model's ``max_position_embeddings`` is refused."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and window > limit:
        raise ValueError(f"window: {window} tokens exceed the model's max_position_embeddings ({limit})")


def window_batches(n_windows: int, batch: int, head_windows: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most ``batch`` windows; none straddles ``head_windows`` (the
    windows with per-head metrics form batches of their own)."""
    edges = [(0, head_windows), (head_windows, n_windows)]
    return [(s, min(s + batch, hi)) for lo, hi in edges for s in range(lo, hi, batch)]


def evaluate(
    loaded: LoadedModel,
    corpus: CorpusSpec,
    runs: Sequence[RunSpec | dict],
    calibration: Calibration | None = None,
    *,
    calibration_job: str | None = None,
    window: int = 1024,
    max_tokens: int = 32768,
    add_bos: AddBos = "auto",
    placement: Placement = "spread",
    seed: int = 0,
    heads: bool = True,
    head_windows: int | None = None,
    batch: int = 1,
    attention: str = "auto",
    head_rows: int = HEAD_ROWS,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Perplexity and per-head metrics of every run over ``corpus`` (the results document).

    Windows are cut by ``evaluation.windows`` (``add_bos``: start as the tokenizer starts a
    sequence; ``placement``: spread over the corpus or contiguous). Perplexity uses every window
    (per-window NLL sums kept in the run rows); per-head metrics the first ``head_windows``
    (default: all). The dense run uses the model's own attention and gives no head rows. ``batch``
    windows go through the model together: the same numbers up to float rounding, except the
    ``key_pca`` control, whose basis is fitted on the residuals of the windows it corrects (those
    of its batch). ``attention``: ``auto``, ``materialised``, ``blockwise`` or ``fused``
    (:func:`~headq_core.evaluation.attention_paths.attention_path`); on the O(L) paths the
    per-head metrics use ``head_rows`` sampled query rows of each window
    (the same rows in every window, recorded in the document).
    ``calibration_job`` names the job that made ``calibration`` in the document."""
    started = time.perf_counter()
    info = loaded.info
    runs = check_runs(runs, calibration, info.head_dim, loaded.model)
    if calibration is not None and calibration.basis.shape[:2] != (info.layers, info.kv_heads):
        raise ValueError(
            "calibration: it was made for another model geometry "
            f"{tuple(calibration.basis.shape[:2])} != {(info.layers, info.kv_heads)}"
        )
    check_window(loaded.model, window)
    device = next(loaded.model.parameters()).device
    paths = {kind: attention_path(attention, window, kind == "head_windows" and heads, device)
             for kind in ("head_windows", "other_windows")}
    sampled_rows = sample_rows(window, head_rows, seed)
    sliding = {i for i, w in enumerate(layer_windows(loaded.model.config)) if w is not None}
    torch.manual_seed(seed)
    windows = corpus_windows(loaded.tokenizer, corpus, window, max_tokens, add_bos=add_bos,
                             placement=placement)
    first = windows.first_scored
    if head_windows is not None and (not isinstance(head_windows, int) or head_windows < 1):
        raise ValueError(f"head_windows: must be a positive integer or None, got {head_windows!r}")
    n_windows = int(windows.ids.shape[0])
    head_windows = n_windows if head_windows is None else min(head_windows, n_windows)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch: must be a positive integer, got {batch!r}")
    accumulators = {
        r.name: HeadAccumulator(info.layers, info.heads, info.kv_heads, keep_a2=r.value is not None)
        for r in runs
    }
    window_nll = {r.name: torch.zeros(n_windows, dtype=torch.float64) for r in runs}
    position_nll = {r.name: torch.zeros(window - first, dtype=torch.float64) for r in runs}
    chunks = window_batches(n_windows, batch, head_windows)
    steps, done = n_windows * len(runs), 0
    with torch.no_grad():
        for start, stop in chunks:
            ids = windows.ids[start:stop].to(device)
            for run in runs:
                if should_stop is not None and should_stop():
                    raise Cancelled("evaluation cancelled")
                metrics = heads and start < head_windows
                path = paths["head_windows" if metrics else "other_windows"]
                if run.is_dense:
                    nll = token_nll(loaded.model, ids, first)
                else:
                    sink = accumulators[run.name].add if metrics else None
                    handler = run_handler(run, sliding, path, calibration, sink, sampled_rows, window)
                    pre_rope = run.key is not None and run.key.pre_rope
                    routed = attention_handler(loaded.model, handler, rope=pre_rope)
                    with routed, mask_context(loaded.model, path):
                        nll = token_nll(loaded.model, ids, first)
                    if sink is not None:
                        accumulators[run.name].close_windows()
                window_nll[run.name][start:stop] = nll.sum(dim=1).cpu()
                position_nll[run.name] += nll.sum(dim=0).cpu()
                del nll
                done += stop - start
                if progress is not None:
                    progress(done / steps, f"evaluate {run.name}")
    head_row_list = (
        [row for r in runs if not r.is_dense for row in accumulators[r.name].rows(r.name)] if heads else []
    )
    head_batches = sum(1 for start, _ in chunks if start < head_windows)
    correlations = head_rank_correlations(
        {r.name: accumulators[r.name].stacked_states() for r in runs if heads and not r.is_dense},
        info.heads, resample_indices(head_batches, seed)) if heads and head_batches else {}
    rows = run_rows(runs, window_nll, windows.scored_per_window,
                    {r.name: _bits(r, info.head_dim) for r in runs}, seed=seed)
    for row in rows:
        if row["name"] in correlations:
            row["rank_correlations"] = correlations[row["name"]]
    sampled = heads and paths["head_windows"] != "materialised" and sampled_rows is not None
    dataset = {**corpus.to_dict(), **windows.describe(), "head_windows": head_windows if heads else 0,
               "batch": batch, "attention": {
                   "head_windows": paths["head_windows"] if heads else None,
                   "other_windows": paths["other_windows"] if n_windows > head_windows or not heads else None,
                   "head_rows": [int(r) for r in sampled_rows] if sampled and sampled_rows is not None
                   else None}}
    dense_name = next((r.name for r in runs if r.is_dense), None)
    used = None if calibration is None else {
        "job_id": calibration_job, "tokens": calibration.meta.get("tokens"),
        "dataset": calibration.meta.get("corpus")}
    a2_weights = {r.name: accumulators[r.name].a2_profile()
                  for r in runs if heads and accumulators[r.name].keep_a2}
    kept = {r.name: accumulators[r.name].keep_rate() for r in runs if r.name in a2_weights}
    return results_document(
        "evaluation", info.to_dict(), dataset, time.perf_counter() - started,
        calibration=used, seed=seed, device=str(device), dtype=info.dtype,
        runs=rows, uncertainty=uncertainty_note(seed),
        **({"rank_correlations": {"runs": [r for r in correlations if r != POOLED], **correlations[POOLED]}}
           if POOLED in correlations else {}),
        heads=head_row_list,
        position_nll=position_buckets(position_nll, first, window, n_windows, dense_name),
        arrays={"query_spectrum": [] if calibration is None else compact_list(calibration.eigenvalues),
                "a2_weights": a2_weights, "a2_keep_rate": {r: v for r, v in kept.items() if v is not None}},
    )
