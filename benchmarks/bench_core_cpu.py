"""CPU benchmark of headq_core's math on one long-context cache layer, scaled to a whole model.

Per layer (default: Llama-3-8B-like, 32 query heads / 8 KV heads, 4096 tokens, head_dim 128):
quantize keys (per_channel, G=32, 2-bit, packed) and values (per_token, G=32, 2-bit), accumulate
the query second moment and build the r=8 query basis, encode + decode the 8-bit side code, then
every per-head metric in query blocks (causal, decode masks). Random anisotropic queries and
Gaussian keys / values: timings do not depend on the values. ``--layers`` layers are timed (the
machine is shared, keep it small) and the per-layer mean is scaled to ``--model-layers``. Wall and
process CPU seconds are both reported (on a shared machine the wall time mostly measures waiting).

    .venv/bin/python benchmarks/bench_core_cpu.py --layers 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

from headq_core.config import HeadQConfig, QuantConfig
from headq_core.evaluation.metrics import layer_metrics
from headq_core.method.budget import effective_bits
from headq_core.method.headq import QueryStats, correction_keys, decode_side, encode_side, query_pca_basis
from headq_core.method.quant import dequantize, quantize
from headq_core.method.schedule import decode_mask

KEY = QuantConfig(bits=2, axis="per_channel", group_size=32, residual=0)
VALUE = QuantConfig(bits=2, axis="per_token", group_size=32, residual=0)
HEADQ = HeadQConfig(rank=8, side_bits=8)


def one_layer(args: argparse.Namespace, seed: int) -> dict[str, float]:
    """Seconds per stage for one layer."""
    gen = torch.Generator().manual_seed(seed)
    d, t = args.head_dim, args.tokens
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=gen))
    q = (torch.randn(1, args.heads, t, d, generator=gen) * 0.9 ** torch.arange(d)) @ rot.T
    k = torch.randn(1, args.kv_heads, t, d, generator=gen)
    v = torch.randn(1, args.kv_heads, t, d, generator=gen)
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def stage(name, fn):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        times[name] = time.perf_counter() - start
        cpu[name] = time.process_time() - start_cpu
        return out

    pk = stage("quantize_keys", lambda: quantize(k, KEY))
    k_hat = stage("dequantize_keys", lambda: dequantize(pk))
    pv = stage("quantize_values", lambda: quantize(v, VALUE))
    v_hat = stage("dequantize_values", lambda: dequantize(pv))

    def basis():
        stats = QueryStats(1, args.kv_heads, d)
        stats.update(0, q)
        return query_pca_basis(stats.second_moment()[0], HEADQ.rank)

    u = stage("query_stats_and_basis", basis)
    side = stage("side_code_encode", lambda: encode_side(k - k_hat, u, HEADQ.side_bits))
    k_eff = stage("side_code_decode", lambda: k_hat + correction_keys(u, decode_side(side), HEADQ.sign))
    masks = (decode_mask(t, t, KEY), decode_mask(t, t, VALUE))
    out = stage("metrics", lambda: layer_metrics(q, k, k_eff, d ** -0.5, key_mask=masks[0], v=v, v_hat=v_hat,
                                                 value_mask=masks[1], block=args.block))
    assert all(torch.isfinite(x).all() for x in out.values())
    times["total"], cpu["total"] = sum(times.values()), sum(cpu.values())
    return {"wall": times, "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1, help="layers actually timed")
    parser.add_argument("--model-layers", type=int, default=32, help="layers the figures are scaled to")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block", type=int, default=None, help="query rows per metrics block")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_core_cpu.json")
    args = parser.parse_args()
    runs = [one_layer(args, seed) for seed in range(args.layers)]
    mean = {name: sum(r["wall"][name] for r in runs) / len(runs) for name in runs[0]["wall"]}
    mean_cpu = {name: sum(r["cpu"][name] for r in runs) / len(runs) for name in runs[0]["cpu"]}
    n = args.model_layers
    print(f"{'stage':<24}{'wall s / layer':>15}{f'wall s x {n}':>14}{'CPU s / layer':>15}")
    for name, sec in mean.items():
        print(f"{name:<24}{sec:>15.3f}{sec * n:>14.2f}{mean_cpu[name]:>15.3f}")
    bits = {"key": effective_bits(KEY, args.head_dim, HEADQ), "value": effective_bits(VALUE, args.head_dim)}
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"effective bits: key {bits['key']:.3f}, value {bits['value']:.3f}; peak RSS {peak_mib:.0f} MiB")
    result = {
        "benchmark": "bench_core_cpu", "shape": {"heads": args.heads, "kv_heads": args.kv_heads,
                                                 "tokens": args.tokens, "head_dim": args.head_dim},
        "layers_timed": args.layers, "model_layers": args.model_layers, "block": args.block,
        "configs": {"key": vars(KEY), "value": vars(VALUE), "headq": vars(HEADQ)},
        "effective_bits": bits, "seconds_per_layer": mean, "cpu_seconds_per_layer": mean_cpu,
        "seconds_scaled": {name: sec * n for name, sec in mean.items()},
        "load_average_1m": os.getloadavg()[0], "cpu_count": os.cpu_count(),
        "per_layer_runs": runs, "peak_rss_mib": peak_mib,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
