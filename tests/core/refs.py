"""Independent float64 references for the metrics: explicit loops over (batch, head, row) and the
plain formulas of METHOD.md, written without the library's vectorisation or stability tricks."""

import math


def softmax_row(x, allowed):
    vals = [x[j] for j in range(len(x)) if allowed[j]]
    m = max(vals)
    z = sum(math.exp(v - m) for v in vals)
    return [math.exp(x[j] - m) / z if allowed[j] else 0.0 for j in range(len(x))]


def reference_metrics(s, s_hat, allowed, eps=None, value_mask=None):
    """s, s_hat [B, Hq, T, S]; allowed bool [T, S]; eps [B, Hkv, S, d] -> dict of lists per head."""
    s, s_hat = s.double().tolist(), s_hat.double().tolist()
    b_n, hq = len(s), len(s[0])
    t_n, s_n = len(s[0][0]), len(s[0][0][0])
    allowed = allowed.tolist()
    hkv = eps.shape[1] if eps is not None else 1
    eps_l = eps.double().tolist() if eps is not None else None
    vm = value_mask.tolist() if value_mask is not None else [[True] * s_n for _ in range(t_n)]
    names = ["score_mse", "fisher", "attn_kl", "entropy", "route_flip", "value_a2", "readout_err"]
    out = {n: [] for n in names}
    for h in range(hq):
        acc = dict.fromkeys(names, 0.0)
        rows = pairs = 0
        for b in range(b_n):
            for t in range(t_n):
                al = allowed[t]
                if not any(al):
                    continue
                rows += 1
                x, xh = s[b][h][t], s_hat[b][h][t]
                a, ah = softmax_row(x, al), softmax_row(xh, al)
                idx = [j for j in range(s_n) if al[j]]
                delta = [xh[j] - x[j] for j in range(s_n)]
                pairs += len(idx)
                acc["score_mse"] += sum(delta[j] ** 2 for j in idx)
                # F = delta^T (diag(a) - a a^T) delta
                quad = sum(a[j] * delta[j] ** 2 for j in idx) - sum(a[j] * delta[j] for j in idx) ** 2
                acc["fisher"] += quad / 2
                acc["attn_kl"] += sum(a[j] * (math.log(a[j]) - math.log(ah[j])) for j in idx if a[j] > 0)
                acc["entropy"] -= sum(a[j] * math.log(a[j]) for j in idx if a[j] > 0)
                am = max(idx, key=lambda j: (x[j], -j))
                amh = max(idx, key=lambda j: (xh[j], -j))
                acc["route_flip"] += float(am != amh)
                if eps_l is not None:
                    kv = h // (hq // hkv)
                    d = len(eps_l[0][0][0])
                    readout = [0.0] * d
                    for j in idx:
                        if vm[t][j]:
                            e = eps_l[b][kv][j]
                            acc["value_a2"] += a[j] ** 2 * sum(c * c for c in e)
                            for c in range(d):
                                readout[c] += a[j] * e[c]
                    acc["readout_err"] += sum(c * c for c in readout)
        out["score_mse"].append(acc["score_mse"] / pairs)
        for n in names[1:]:
            out[n].append(acc[n] / rows)
    return out


def reference_tensor_mse(x, x_hat, q_heads):
    """mean_j ‖x^_j - x_j‖² / d per KV head, repeated for each query head of the group."""
    b_n, hkv, s_n, d = x.shape
    per_kv = []
    for h in range(hkv):
        tot = 0.0
        for b in range(b_n):
            for j in range(s_n):
                tot += float(((x_hat[b, h, j].double() - x[b, h, j].double()) ** 2).sum())
        per_kv.append(tot / (b_n * s_n * d))
    return [per_kv[i // (q_heads // hkv)] for i in range(q_heads)]
