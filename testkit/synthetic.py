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


REPLICATES = 2000
UNCERTAINTY_FIELDS = ("window_nll", "window_tokens", *(f"{a}_{s}" for a in
                      ("perplexity", "excess_perplexity", "excess_removed") for s in ("se", "ci")))
WINDOW_FIELDS = ("tokens_scored", "bos_prepended", "prefix_tokens", "placement", "stream_tokens",
                 "window_offsets")


def _base_run(spec: dict, runs: list[tuple[str, dict, float, float]]) -> str | None:
    """The run with ``spec``'s quantizers and value policy but no HeadQ (as the evaluator finds it)."""
    same = ("key", "value", "value_policy")
    return next((n for n, other, _, _ in runs if "headq" not in other
                 and all(other.get(k) == spec.get(k) for k in same)), None) if "headq" in spec else None


def _spread(values: np.ndarray) -> tuple[float, list[float]]:
    return float(values.std(ddof=1)), [float(v) for v in np.percentile(values, [2.5, 97.5])]


def _rho(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rho of two tie-free samples."""
    return float(np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))[0, 1])


def _rank_blocks(rows: list[dict], runs: list[str]) -> dict[str, dict[str, Any]]:
    """rho of attn_kl with fisher and key_mse per run (and pooled) over the heads with positive
    values, with an interval of made-up width where the evaluator's window bootstrap would put one."""
    out: dict[str, dict[str, Any]] = {}
    groups = {r: [r] for r in runs} | {"all runs": runs}
    for group, members in groups.items():
        kept = [h for h in rows
                if h["run"] in members and all(h[m] > 0 for m in ("fisher", "key_mse", "attn_kl"))]
        if len(kept) < 3:
            continue
        y = np.array([h["attn_kl"] for h in kept])
        out[group] = {}
        for m in ("fisher", "key_mse"):
            rho = _rho(np.array([h[m] for h in kept]), y)
            out[group][m] = {"rho": rho, "se": 0.02, "ci": [rho - 0.05, min(1.0, rho + 0.03)],
                             "heads": len(kept)}
    return out


def _run_aggregates(
    rng: np.random.Generator, chosen: list[tuple[str, dict, float, float]], n_windows: int, scored: int
) -> dict[str, dict[str, Any]]:
    """Per-window NLL sums of every run (a shared text difficulty plus a smaller per-run wobble, centred
    so each run's perplexity is 20 + its excess) and the aggregates with paired bootstrap SE and
    interval, computed as ``headq_core.evaluation.results.run_rows`` does."""
    difficulty = rng.normal(0.0, 0.2, n_windows)
    means = {}
    for name, _, _, excess in chosen:
        wobble = rng.normal(0.0, 0.01 + 0.004 * excess, n_windows) * (excess > 0)
        centred = difficulty + wobble - (difficulty + wobble).mean()
        means[name] = np.log(20.0 + excess) + centred
    idx = rng.integers(0, n_windows, (REPLICATES, n_windows))
    point = {n: np.exp(m.mean()) for n, m in means.items()}
    boot = {n: np.exp(m[idx].mean(axis=1)) for n, m in means.items()}
    dense = chosen[0][0]
    out: dict[str, dict[str, Any]] = {}
    for name, spec, _, _ in chosen:
        row = {"perplexity": point[name], "nll": float(means[name].mean()), "tokens": scored * n_windows,
               "excess_perplexity": point[name] - point[dense], "excess_removed": None,
               "window_nll": [float(v) for v in means[name] * scored], "window_tokens": scored}
        stats = {"perplexity": boot[name], "excess_perplexity": boot[name] - boot[dense]}
        base = _base_run(spec, chosen)
        if base is not None:
            row["excess_removed"] = 1 - row["excess_perplexity"] / (point[base] - point[dense])
            stats["excess_removed"] = 1 - stats["excess_perplexity"] / (boot[base] - boot[dense])
        for field, values in stats.items():
            row[f"{field}_se"], row[f"{field}_ci"] = _spread(values)
        out[name] = {k: float(v) if isinstance(v, np.floating) else v for k, v in row.items()}
    return out


def make_results(
    layers: int = 4,
    heads: int = 6,
    kv_heads: int = 2,
    head_dim: int = 16,
    window: int = 32,
    n_runs: int = len(RUNS),
    seed: int = 0,
    windows: int = 16,
    uncertainty: bool = True,
) -> dict[str, Any]:
    """A synthetic evaluation results document: ``n_runs`` configurations × ``layers`` × ``heads``,
    scored on ``windows`` windows. ``uncertainty=False``: a document from before per-window values
    (no ``window_nll``, ``*_se``, ``*_ci``, window offsets nor ``uncertainty`` block)."""
    rng = np.random.default_rng(seed)
    group = heads // kv_heads
    align = rng.lognormal(0.0, 1.2, (layers, heads))  # how much query energy meets the key error
    key_err = rng.lognormal(-3.0, 0.5, (layers, heads))  # storage error, unrelated to `align`
    aggregates = _run_aggregates(np.random.default_rng([seed, 1]), RUNS[:n_runs], windows, window - 1)
    runs, rows, a2, keep_rate = [], [], {}, {}
    for name, spec, factor, _ in RUNS[:n_runs]:
        kbits = 16.0 if "key" not in spec else spec["key"]["bits"] + 1.0 + (1.0 if "headq" in spec else 0.0)
        vbits = 16.0 if "value" not in spec else spec["value"]["bits"] + 1.0
        run = {"name": name, "spec": {"name": name, **spec}, "effective_bits": {"key": kbits, "value": vbits},
               **aggregates[name]}
        runs.append({k: v for k, v in run.items() if uncertainty or k not in UNCERTAINTY_FIELDS})
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
        if "value_policy" in spec:  # the share of windows keeping each position, early ones most
            kept = np.random.default_rng([seed, 2, len(keep_rate)]).binomial(
                windows, np.minimum(1.0, 0.6 * pos**-0.5), (layers, kv_heads, window)) / windows
            keep_rate[name] = kept.tolist()
    spectrum = [
        [sorted(rng.lognormal(0.0, 2.0, head_dim).tolist(), reverse=True) for _ in range(kv_heads)]
        for _ in range(layers)
    ]
    doc: dict[str, Any] = {
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
            "tokens": windows * window,
            "windows": windows,
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
        "arrays": {"query_spectrum": spectrum, "a2_weights": a2, "a2_keep_rate": keep_rate},
        "timing": {"seconds": 0.0},
    }
    if uncertainty:
        offsets = [64 * window * i for i in range(windows)]  # spread over a stream 64 times longer
        doc["dataset"] |= dict(zip(WINDOW_FIELDS, (windows * (window - 1), False, 0, "spread",
                                                   64 * window * windows, offsets), strict=True))
        doc["uncertainty"] = {"method": "paired bootstrap over windows (percentile interval)",
                              "replicates": REPLICATES, "confidence": 0.95, "seed": seed}
        doc["dataset"]["head_windows"] = windows
        blocks = _rank_blocks(rows, [r["name"] for r in runs])
        for run in runs:
            if run["name"] in blocks:
                run["rank_correlations"] = blocks[run["name"]]
        if "all runs" in blocks:
            doc["rank_correlations"] = {"runs": [r for r in blocks if r != "all runs"], **blocks["all runs"]}
    return doc
