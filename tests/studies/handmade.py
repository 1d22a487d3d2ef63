"""Hand-made job items for the paper-report tests: run rows, head rows and evaluation documents in
the shape :mod:`studies.paper.run` writes."""

from __future__ import annotations

import math

from studies.paper.records import run_records

K2 = {"bits": 2, "axis": "per_channel", "group_size": 32, "residual": 0}
K3 = {**K2, "bits": 3}
DENSE_PPL = 20.0


def hq(rank: int, side_bits: int = 8, basis: str = "query_pca", sign: int = 1, scale: str = "token") -> dict:
    """A HeadQ config dict."""
    return {
        "rank": rank,
        "basis": basis,
        "sign": sign,
        "side_bits": side_bits,
        "seed": 0,
        "side_scale": scale,
    }


def run(
    name: str,
    spec: dict,
    key_bits: float,
    ppl: float,
    removed: float | None = None,
    value_bits: float = 16.0,
    heads: list[dict] | None = None,
) -> dict:
    """One run row (and its head rows, each {layer, head, metrics...})."""
    return {
        "name": name,
        "spec": {"name": name, **spec},
        "effective_bits": {"key": key_bits, "value": value_bits},
        "perplexity": ppl,
        "nll": math.log(ppl),
        "tokens": 100,
        "excess_perplexity": ppl - DENSE_PPL,
        "excess_removed": removed,
        "_heads": heads or [],
    }


def item(name: str, family: str, runs: list[dict], corpus: str = "sotu") -> dict:
    """A job item of studies.paper.run holding an evaluation document with a dense run first."""
    rows = [run("dense", {}, 16.0, DENSE_PPL), *runs]
    heads = [
        {
            "run": r["name"],
            "layer": h.get("layer", 0),
            "head": h.get("head", 0),
            "kv_head": 0,
            **{k: v for k, v in h.items() if k not in ("layer", "head")},
        }
        for r in rows
        for h in r["_heads"]
    ]
    doc = {
        "schema_version": 1,
        "kind": "evaluation",
        "model": {"id": "m", "layers": 2, "heads": 2},
        "dataset": {"name": corpus, "tokens": 100},
        "device": "cpu",
        "runs": [{k: v for k, v in r.items() if k != "_heads"} for r in rows],
        "heads": heads,
    }
    return {
        "name": name,
        "family": family,
        "spec": {},
        "results": doc,
        "artifact_base64": None,
        "wall_s": 1.0,
        "host": "h",
        "commit": "abc",
    }


def records(*items: dict) -> list[dict]:
    """The run records of the items."""
    return run_records(items)
