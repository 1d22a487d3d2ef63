"""SYNTHETIC TEST DATA for rendering the dashboard: results documents of the contract's shape.

Nothing here is a measurement. Numbers come from a seeded RNG with the structure real results
have (fisher tracks attn_kl closely, key_mse only loosely; HeadQ shrinks the visible error, the
wrong sign grows it), so pages have something realistic to draw. Used by the dashboard tests and
benchmarks/bench_dashboard.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_KEY = {"bits": 2, "axis": "per_channel", "group_size": 32, "residual": 0}
_VALUE = {"bits": 2, "axis": "per_token", "group_size": 32, "residual": 0}
_HEADQ = {"rank": 8, "basis": "query_pca", "sign": 1, "side_bits": 8, "seed": 0}
# name, spec (without name), visible-error factor, excess perplexity
RUNS: list[tuple[str, dict, float, float]] = [
    ("dense", {}, 0.0, 0.0),
    ("k2", {"key": _KEY}, 1.0, 6.0),
    ("k2-headq-r8", {"key": _KEY, "headq": _HEADQ}, 0.12, 0.7),
    ("k2-headq-r8-wrongsign", {"key": _KEY, "headq": {**_HEADQ, "sign": -1}}, 3.5, 19.0),
    ("k2-headq-r8-key_pca", {"key": _KEY, "headq": {**_HEADQ, "basis": "key_pca"}}, 0.6, 3.9),
    ("k4", {"key": {**_KEY, "bits": 4}}, 0.05, 0.3),
    ("k2-v2", {"key": _KEY, "value": _VALUE}, 1.0, 8.5),
    (
        "k2-headq-r8-v2-a2online",
        {
            "key": _KEY,
            "headq": _HEADQ,
            "value": _VALUE,
            "value_policy": {"mode": "online", "keep_fraction": 0.1},
        },
        0.12,
        1.9,
    ),
]


def make_results(
    layers: int = 4,
    heads: int = 6,
    kv_heads: int = 2,
    head_dim: int = 16,
    window: int = 32,
    n_runs: int = len(RUNS),
    seed: int = 0,
) -> dict[str, Any]:
    """A synthetic evaluation results document: ``n_runs`` configurations × ``layers`` × ``heads``."""
    rng = np.random.default_rng(seed)
    group = heads // kv_heads
    align = rng.lognormal(0.0, 1.2, (layers, heads))  # how much query energy meets the key error
    key_err = rng.lognormal(-3.0, 0.5, (layers, heads))  # storage error, unrelated to `align`
    base_ppl = 20.0
    runs, rows, a2 = [], [], {}
    for name, spec, factor, excess in RUNS[:n_runs]:
        kbits = 16.0 if "key" not in spec else spec["key"]["bits"] + 1.0 + (1.0 if "headq" in spec else 0.0)
        vbits = 16.0 if "value" not in spec else spec["value"]["bits"] + 1.0
        runs.append(
            {
                "name": name,
                "spec": {"name": name, **spec},
                "effective_bits": {"key": kbits, "value": vbits},
                "perplexity": base_ppl + excess,
                "nll": float(np.log(base_ppl + excess)),
                "tokens": 4064,
                "excess_perplexity": excess,
                "excess_removed": (1 - excess / 6.0) if "headq" in spec else None,
            }
        )
        has_key, has_value = "key" in spec, "value" in spec
        bits_scale = 16.0 ** -(spec["key"]["bits"] - 2) if has_key else 0.0
        kmse = key_err * bits_scale
        fisher = kmse * align * factor * 0.5
        kl = fisher * rng.lognormal(0.0, 0.15, (layers, heads))
        vmse = rng.lognormal(-3.0, 0.4, (layers, heads)) if has_value else np.zeros((layers, heads))
        for layer in range(layers):
            for head in range(heads):
                rows.append(
                    {
                        "run": name,
                        "layer": layer,
                        "head": head,
                        "kv_head": head // group,
                        "key_mse": float(kmse[layer, head]),
                        "score_mse": float(2 * fisher[layer, head] + kmse[layer, head]),
                        "fisher": float(fisher[layer, head]),
                        "attn_kl": float(kl[layer, head]),
                        "entropy": float(1.0 + align[layer, head] % 3),
                        "route_flip": float(min(1.0, kl[layer, head])),
                        "value_mse": float(vmse[layer, head]),
                        "value_a2": float(vmse[layer, head] * 0.3),
                        "readout_err": float(vmse[layer, head] * 0.25),
                    }
                )
        pos = np.arange(1, window + 1, dtype=float)
        # six significant digits, as headq_core.evaluation.results.compact_list stores result arrays
        a2[name] = [[[float(f"{v:.6g}") for v in pos**-0.5 * (1 + kv)] for kv in range(kv_heads)]
                    for _ in range(layers)]
    spectrum = [
        [sorted(rng.lognormal(0.0, 2.0, head_dim).tolist(), reverse=True) for _ in range(kv_heads)]
        for _ in range(layers)
    ]
    return {
        "schema_version": 1,
        "kind": "evaluation",
        "label": "synthetic test data",
        "model": {
            "id": "synthetic/test-model",
            "revision": None,
            "architecture": "LlamaForCausalLM",
            "layers": layers,
            "heads": heads,
            "kv_heads": kv_heads,
            "head_dim": head_dim,
            "logit_scale": head_dim**-0.5,
        },
        "dataset": {
            "name": "sotu",
            "split": "eval",
            "files": None,
            "tokens": 4096,
            "windows": 4,
            "window": window,
        },
        "calibration": None,
        "versions": {
            "headq_lab": "0.1.0",
            "torch": "synthetic",
            "transformers": "synthetic",
            "python": "3.11",
        },
        "seed": seed,
        "device": "cpu",
        "dtype": "float32",
        "runs": runs,
        "heads": rows,
        "arrays": {"query_spectrum": spectrum, "a2_weights": a2},
        "timing": {"seconds": 0.0},
    }
