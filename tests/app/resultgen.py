"""A small deterministic generator of realistic results documents (the shape of docs/contracts.md),
for round-trip tests. Numbers come from a seeded RNG; the structure mirrors a real evaluation."""

from __future__ import annotations

import random
from typing import Any

METRICS = ("key_mse", "score_mse", "fisher", "attn_kl", "entropy", "route_flip",
           "value_mse", "value_a2", "readout_err")


def make_document(*, kind: str = "evaluation", model_id: str = "builtin:smollm2-135m", layers: int = 3,
                  heads: int = 6, kv_heads: int = 2, head_dim: int = 8, seed: int = 0) -> dict[str, Any]:
    """A results document with ``layers * heads`` head rows per run (two runs for an evaluation)."""
    rng = random.Random(seed)
    group = heads // kv_heads
    model = {"id": model_id, "revision": None, "architecture": "LlamaForCausalLM", "layers": layers,
             "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "logit_scale": head_dim ** -0.5}
    spectrum = [[sorted((rng.random() * 10 for _ in range(head_dim)), reverse=True) for _ in range(kv_heads)]
                for _ in range(layers)]
    doc: dict[str, Any] = {
        "schema_version": 1, "kind": kind, "model": model,
        "dataset": {"name": "sotu", "split": "eval", "files": None, "tokens": 4096, "windows": 4,
                    "window": 1024},
        "versions": {"headq_lab": "0.1.0", "torch": "2.13.0", "transformers": "5.24.0", "python": "3.11"},
        "seed": seed, "device": "cpu", "dtype": "float32",
        "arrays": {"query_spectrum": spectrum}, "timing": {"seconds": round(rng.uniform(1, 100), 3)},
    }
    if kind == "calibration":
        doc["rank"] = 4
        return doc
    key = {"bits": 2, "axis": "per_channel", "group_size": 32, "residual": 0}
    headq = {"rank": 4, "basis": "query_pca", "sign": 1, "side_bits": 8, "seed": 0}
    runs: list[dict[str, Any]] = [
        {"name": "k2", "spec": {"name": "k2", "key": key}},
        {"name": "k2_headq", "spec": {"name": "k2_headq", "key": key, "headq": headq}},
    ]
    for run in runs:
        run.update(effective_bits={"key": 3.0, "value": 16.0}, perplexity=rng.uniform(20, 40),
                   nll=rng.uniform(3, 4), tokens=4092, excess_perplexity=rng.uniform(0, 5),
                   excess_removed=None)
    runs[1]["excess_removed"] = rng.random()
    doc["runs"] = runs
    doc["calibration"] = {"job_id": "00000000-0000-0000-0000-000000000000", "tokens": 8192,
                          "dataset": {"name": "sotu", "split": "calibration"}}
    doc["heads"] = [{"run": run["name"], "layer": layer, "head": head, "kv_head": head // group,
                     **{m: rng.random() for m in METRICS}}
                    for run in runs for layer in range(layers) for head in range(heads)]
    doc["arrays"]["a2_weights"] = {run["name"]: [[[rng.random() for _ in range(16)] for _ in range(kv_heads)]
                                                 for _ in range(layers)] for run in runs}
    return doc
