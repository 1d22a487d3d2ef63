"""The retrieval job: needle-in-a-haystack prompts answered through the real cache of every run.

For each prompt of the grid (``evaluation.retrieval_prompts``) and each run: greedy ``generate()``
through the run's cache, exact match of the needle's 7 digits; with ``heads``, each query head's
attention at the answer's first decode step (``evaluation.retrieval_attention``), quantized vs
dense, as per-head rows. Returns the results document of docs/contracts.md ("Retrieval").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import DynamicCache

from headq_core.config import RunSpec
from headq_core.errors import Cancelled
from headq_core.evaluation.calibrate import Calibration
from headq_core.evaluation.corpus import CorpusSpec, load_texts
from headq_core.evaluation.evaluate import check_runs
from headq_core.evaluation.results import results_document
from headq_core.evaluation.retrieval_attention import answer, first_step_attention, head_rows, new_cache
from headq_core.evaluation.retrieval_prompts import (
    Prompt,
    build_prompt,
    choose_template,
    exact_match,
    haystack_ids,
)
from headq_core.method.budget import effective_bits
from headq_core.models.loading import LoadedModel
from headq_spec.retrieval import RetrievalOptions, check_retrieval_runs


def model_context(model: Any) -> int | None:
    """The longest sequence the model's positions cover (``max_position_embeddings`` or GPT-2's
    ``n_positions``), or None when its config states none."""
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(model.config, name, None)
        if isinstance(value, int):
            return value
    return None


def build_prompts(loaded: LoadedModel, corpus: CorpusSpec, options: RetrievalOptions, max_tokens: int,
                  seed: int) -> tuple[list[Prompt], str, int]:
    """(the grid's prompts, length-major then depth then sample; the template used; haystack
    tokens). ``ValueError`` naming ``retrieval.lengths.<i>`` for a length beyond the model's
    context (with the answer's tokens) or the haystack."""
    context = model_context(loaded.model)
    for index, length in enumerate(options.lengths):
        if context is not None and length + options.new_tokens > context:
            raise ValueError(f"retrieval.lengths.{index}: {length} tokens and {options.new_tokens} answer "
                             f"tokens exceed the model's maximum context ({context})")
    template = choose_template(loaded.tokenizer, options.template)
    haystack = haystack_ids(loaded.tokenizer, load_texts(corpus), max_tokens)
    prompts: list[Prompt] = []
    for li, length in enumerate(options.lengths):
        for depth in options.depths:
            for sample in range(options.samples):
                prompts.append(build_prompt(loaded.tokenizer, haystack, length=length, depth=depth,
                                            sample=sample, seed=seed, index=len(prompts), template=template,
                                            field=f"retrieval.lengths.{li}"))
    return prompts, template, len(haystack)


def accuracy_grid(prompts: list[Prompt], correct: dict[int, bool],
                  options: RetrievalOptions) -> list[list[float]]:
    """Share of correct answers per cell: [length index][depth index]."""
    grid = [[0.0] * len(options.depths) for _ in options.lengths]
    for prompt in prompts:
        li, di = options.lengths.index(prompt.length), options.depths.index(prompt.depth)
        grid[li][di] += float(correct[prompt.index]) / options.samples
    return grid


def _run_row(run: RunSpec, head_dim: int, correct: dict[int, bool],
             rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's row: spec, effective bits, accuracy, and its mean needle mass lost and attention KL."""
    def mean(key: str) -> float | None:
        return sum(r[key] for r in rows) / len(rows) if rows else None

    return {"name": run.name, "spec": run.to_dict(),
            "effective_bits": {"key": effective_bits(run.key, head_dim, run.headq),
                               "value": effective_bits(run.value, head_dim, policy=run.value_policy)},
            "accuracy": sum(correct.values()) / len(correct), "correct": sum(correct.values()),
            "prompts": len(correct), "needle_mass_lost": mean("needle_mass_lost"), "attn_kl": mean("attn_kl")}


def retrieve(
    loaded: LoadedModel,
    corpus: CorpusSpec,
    runs: Sequence[RunSpec | dict],
    calibration: Calibration | None = None,
    *,
    options: RetrievalOptions | None = None,
    max_tokens: int = 32768,
    seed: int = 0,
    calibration_job: str | None = None,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Accuracy of every run on the grid's prompts and, with ``options.heads``, per-head needle
    attention rows of every quantized run (the results document). The haystack is the first
    ``max_tokens`` tokens of ``corpus``."""
    started = time.perf_counter()
    options = options or RetrievalOptions()
    info = loaded.info
    runs = check_runs(runs, calibration, info.head_dim, loaded.model)
    check_retrieval_runs(runs)
    if calibration is not None and calibration.basis.shape[:2] != (info.layers, info.kv_heads):
        raise ValueError("calibration: it was made for another model geometry "
                         f"{tuple(calibration.basis.shape[:2])} != {(info.layers, info.kv_heads)}")
    prompts, template, hay_tokens = build_prompts(loaded, corpus, options, max_tokens, seed)
    device = next(loaded.model.parameters()).device
    correct: dict[str, dict[int, bool]] = {r.name: {} for r in runs}
    answers, heads = [], []
    steps, done = len(prompts) * len(runs), 0
    for prompt in prompts:
        ids = torch.tensor([prompt.ids], device=device)
        references: dict[int, torch.Tensor] = {}  # dense first-step attention, by the step's token
        for run in runs:
            if should_stop is not None and should_stop():
                raise Cancelled("retrieval cancelled")
            tokens = answer(loaded, ids, new_cache(loaded, run, calibration), options.new_tokens)
            text = loaded.tokenizer.decode(tokens, skip_special_tokens=True)
            correct[run.name][prompt.index] = exact_match(text, prompt.number)
            answers.append({"run": run.name, "prompt": prompt.index, "text": text,
                            "correct": correct[run.name][prompt.index]})
            if options.heads and not run.is_dense:
                if tokens[0] not in references:
                    references[tokens[0]] = first_step_attention(loaded, ids, tokens[0], DynamicCache())
                probs = first_step_attention(loaded, ids, tokens[0], new_cache(loaded, run, calibration))
                heads += head_rows(run.name, prompt.describe(), references[tokens[0]], probs, info.kv_heads)
            done += 1
            if progress is not None:
                progress(done / steps, f"retrieve {run.name} {prompt.length} tokens at {prompt.depth:g}%")
    rows = [_run_row(r, info.head_dim, correct[r.name], [h for h in heads if h["run"] == r.name])
            for r in runs]
    block = {"lengths": options.lengths, "depths": options.depths, "samples": options.samples,
             "new_tokens": options.new_tokens, "template": template,
             "prompts": [p.describe() for p in prompts], "answers": answers,
             "accuracy": {r.name: accuracy_grid(prompts, correct[r.name], options) for r in runs}}
    used = None if calibration is None else {
        "job_id": calibration_job, "tokens": calibration.meta.get("tokens"),
        "dataset": calibration.meta.get("corpus")}
    return results_document(
        "retrieval", info.to_dict(), {**corpus.to_dict(), "tokens": hay_tokens},
        time.perf_counter() - started, calibration=used, seed=seed, device=str(device), dtype=info.dtype,
        runs=rows, heads=heads, retrieval=block)
