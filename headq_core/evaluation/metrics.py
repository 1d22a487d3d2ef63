"""Per-head distortion metrics of METHOD.md from dense and perturbed logits, in query blocks.

For one layer, per query head, over the evaluated query rows (batch x positions):

- ``key_mse`` mean over tokens of ‖e_j‖²/d, with ``e_j`` the error of the key the queries see:
  for HeadQ the effective key ``k^_j + sign*U c^_j`` (equivalent logits); tokens never quantized
  have zero error. ``value_mse`` likewise for values. Both come from the KV head of the query head.
- ``score_mse`` mean over allowed (t, j) of ``(s^_tj - s_tj)²`` (raw, not centred).
- ``fisher`` mean_t F_t/2, ``F_t = sum_j a_tj (delta_tj - dbar_t)²`` (the predicted KL).
- ``attn_kl`` mean_t KL(a_t ‖ a^_t), exact: ``log E_a[exp(delta - dbar)]`` (log1p/expm1 unless an
  error is huge, then logsumexp, so neither cancellation nor overflow bites at long context).
- ``entropy`` mean_t H(a_t); ``route_flip`` share of rows whose argmax changes.
- ``value_a2`` ``sum_{t,j} a_tj² ‖eps_j‖² / n_rows`` for this query head (the METHOD figure pools the
  group: it is the mean of this over the group's heads), ``readout_err`` mean_t ‖sum_j a_tj eps_j‖²,
  attention held at the dense one. Value terms count only (t, j) where t reads value j quantized.

Masks: ``None`` = causal with the queries at absolute positions ``offset + t``; a bool mask of
allowed (t, j); or an additive float mask (added to both logit sets; entries at -inf or the
dtype's minimum are disallowed). Rows with nothing allowed are skipped.
"""

from __future__ import annotations

import torch

from headq_core.method.values import a2_weights

SCORE_METRICS = ("score_mse", "fisher", "attn_kl", "entropy", "route_flip")
VALUE_METRICS = ("value_a2", "readout_err")
# Rows with |delta - dbar| < SMALL_X use the log1p/expm1 form of the KL (no cancellation for tiny
# KL; a term a_j exp(x_j) that underflows in a_j is below e**-80); other rows use logsumexp.
SMALL_X = 20.0


def allowed_mask(q_len: int, kv_len: int, mask: torch.Tensor | None = None, offset: int = 0,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """bool [..., q_len, kv_len] of allowed (t, j) from ``mask`` (see module docstring)."""
    if mask is None:
        cols, rows = torch.arange(kv_len, device=device), torch.arange(q_len, device=device) + offset
        return cols.unsqueeze(0) <= rows.unsqueeze(1)
    if mask.shape[-2:] != (q_len, kv_len):
        raise ValueError(f"mask: last dims must be ({q_len}, {kv_len}), got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2


def _expand(x: torch.Tensor, q_heads: int) -> torch.Tensor:
    """[..., Hkv] -> [..., Hq] in repeat_kv order."""
    return x.repeat_interleave(q_heads // x.shape[-1], dim=-1)


def _rowdot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum_j x_j y_j over the last dim without a full-size temporary."""
    return torch.einsum("...j,...j->...", x, y)


def kl_rows(logp: torch.Tensor, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """KL(a ‖ a^) per row = log sum_j a_j exp(x_j), x = delta - dbar (0 where disallowed)."""
    small = (x.amax(-1) < SMALL_X) & (x.amin(-1) > -SMALL_X)
    if small.all():
        return torch.log1p(_rowdot(a, torch.expm1(x))).clamp(min=0)
    kl = torch.log1p(_rowdot(a, torch.expm1(x.clamp(max=SMALL_X))))
    return torch.where(small, kl, torch.logsumexp(logp + x, -1)).clamp(min=0)


class HeadMetrics:
    """Accumulates per-query-head sums over blocks of rows (and batches); :meth:`result` divides."""

    def __init__(self, q_heads: int, kv_heads: int, device: torch.device | str | None = None) -> None:
        """Running sums live on ``device`` (default CPU); inputs may sit on any device."""
        if kv_heads < 1 or q_heads % kv_heads:
            raise ValueError(f"kv_heads: {kv_heads} must divide q_heads {q_heads}")
        self.q_heads, self.kv_heads = q_heads, kv_heads
        z = lambda n: torch.zeros(n, dtype=torch.float64, device=device)  # noqa: E731
        self.sums = {name: z(q_heads) for name in SCORE_METRICS + VALUE_METRICS}
        self.rows, self.pairs = z(q_heads), z(q_heads)
        self.tensor_err = {"key_mse": z(kv_heads), "value_mse": z(kv_heads)}
        self.tensor_n = {"key_mse": 0, "value_mse": 0}
        self.seen_values = False

    def add_tensor_error(self, name: str, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        """``name`` in (key_mse, value_mse); x, x_hat [B, Hkv, S, d]."""
        if x.shape != x_hat.shape or x.dim() != 4 or x.shape[1] != self.kv_heads:
            raise ValueError(f"{name}: expected two [B, {self.kv_heads}, S, d] tensors, got "
                             f"{tuple(x.shape)} and {tuple(x_hat.shape)}")
        err = (x_hat.to(torch.float64) - x.to(torch.float64)).square().sum((0, 2, 3))
        self.tensor_err[name] += err.to(self.tensor_err[name].device)
        self.tensor_n[name] += x.shape[0] * x.shape[2] * x.shape[3]

    def add_logits(self, s: torch.Tensor, s_hat: torch.Tensor, mask: torch.Tensor | None = None,
                   offset: int = 0, eps: torch.Tensor | None = None,
                   value_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Add rows: s, s_hat [B, Hq, T, S]; eps [B, Hkv, S, d] value errors; value_mask bool
        [T, S] (t reads value j quantized; default all). Returns the dense attention [B, Hq, T, S]."""
        if s.shape != s_hat.shape or s.dim() != 4 or s.shape[1] != self.q_heads:
            raise ValueError(f"s_hat: expected two [B, {self.q_heads}, T, S] tensors, got "
                             f"{tuple(s.shape)} and {tuple(s_hat.shape)}")
        dt = torch.promote_types(s.dtype, torch.float32)
        s, s_hat = s.to(dt), s_hat.to(dt)
        allowed = allowed_mask(s.shape[-2], s.shape[-1], mask, offset, s.device).to(s.device)
        if mask is not None and mask.dtype != torch.bool and not bool((mask.eq(0) | ~allowed).all()):
            # a bias beyond 0 / -inf shapes the attention (it cancels in the logit error)
            s_m = (s + mask.to(s.device, dt)).masked_fill_(~allowed, float("-inf"))
        else:
            s_m = s.masked_fill(~allowed, float("-inf"))
        delta = (s_hat - s).masked_fill_(~allowed, 0.0)
        return self.add_logit_error(s_m, delta, allowed, eps=eps, value_mask=value_mask)

    def add_logit_error(self, s_m: torch.Tensor, delta: torch.Tensor, allowed: torch.Tensor,
                        eps: torch.Tensor | None = None,
                        value_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Core of :meth:`add_logits`, taking ownership of (and overwriting) its inputs: s_m dense
        logits [B, Hq, T, S] at -inf where not ``allowed`` (bool [..., T, S]), delta the logit
        error (finite, 0 where not allowed). Returns the dense attention."""
        b, hq, t, _ = s_m.shape
        dt = s_m.dtype
        valid = allowed.any(-1).expand(b, hq, t)  # rows with something allowed
        if not valid.all():
            s_m.masked_fill_(~valid.unsqueeze(-1), 0.0)  # empty rows: any finite row, excluded below
        logp = torch.log_softmax(s_m, -1)
        a = logp.exp()
        if not valid.all():
            a.masked_fill_(~valid.unsqueeze(-1), 0.0)
        score = _rowdot(delta, delta)
        if not (torch.isfinite(score) | ~valid).all():
            raise ValueError("s: logits contain NaN or inf at allowed positions")
        flips = s_m.argmax(-1) != (s_m + delta).argmax(-1)
        x = delta.sub_(_rowdot(a, delta).unsqueeze(-1)).mul_(allowed.to(dt))  # delta - dbar, 0 off
        per_row = {
            "score_mse": score,
            "fisher": 0.5 * _rowdot(a * x, x),
            "attn_kl": kl_rows(logp, x, a),
            "entropy": -_rowdot(a, logp.clamp_(min=torch.finfo(dt).min)),
            "route_flip": flips.to(dt),
        }
        home = self.rows.device
        for name, val in per_row.items():
            self.sums[name] += (val * valid).sum((0, 2)).to(home, torch.float64)
        self.rows += valid.sum((0, 2)).to(home, torch.float64)
        self.pairs += allowed.sum(-1).expand(b, hq, t).sum((0, 2)).to(home, torch.float64)
        if eps is not None:
            self._add_values(a, eps, value_mask)
        return a

    def _add_values(self, a: torch.Tensor, eps: torch.Tensor, value_mask: torch.Tensor | None) -> None:
        b, hq, t, s = a.shape
        if eps.dim() != 4 or eps.shape[:3] != (b, self.kv_heads, s):
            raise ValueError(f"eps: expected [{b}, {self.kv_heads}, {s}, d], got {tuple(eps.shape)}")
        aw = a if value_mask is None else a * value_mask.to(a.device, a.dtype)
        g = hq // self.kv_heads
        e = eps.to(a.dtype)
        readout = (aw.reshape(b, self.kv_heads, g * t, s) @ e).reshape(b, hq, t, -1)
        self.sums["readout_err"] += readout.square().sum(-1).sum((0, 2)).to(self.rows.device, torch.float64)
        enorm = e.square().sum(-1).unsqueeze(-1)  # [B, Hkv, S, 1]
        a2 = ((aw * a).reshape(b, self.kv_heads, g * t, s) @ enorm).reshape(b, hq, t)
        self.sums["value_a2"] += a2.sum((0, 2)).to(self.rows.device, torch.float64)
        self.seen_values = True

    def state(self) -> dict[str, torch.Tensor]:
        """The additive sums (float64, CPU) :func:`metrics_from_state` divides: the state of two
        windows together is the sum of their states, which is how the evaluator resamples windows.
        Per-head sums [Hq], ``rows`` and ``pairs`` [Hq], ``<key|value>_mse_err`` [Hkv] with their
        element count ``..._n`` [] (present once added)."""
        names = SCORE_METRICS + (VALUE_METRICS if self.seen_values else ())
        out = {name: self.sums[name].cpu() for name in names}
        out.update(rows=self.rows.cpu(), pairs=self.pairs.cpu())
        for name, n in self.tensor_n.items():
            if n:
                out[f"{name}_err"] = self.tensor_err[name].cpu()
                out[f"{name}_n"] = torch.tensor(float(n), dtype=torch.float64)
        return out

    def result(self) -> dict[str, torch.Tensor]:
        """float64 [Hq] per metric that received data (key/value MSE only once added)."""
        state = self.state()
        if not bool((self.rows > 0).all()):
            state = {k: v for k, v in state.items() if k.endswith(("_err", "_n"))}
        return {k: v.to(self.rows.device) for k, v in metrics_from_state(state, self.q_heads).items()}


def metrics_from_state(state: dict[str, torch.Tensor], q_heads: int) -> dict[str, torch.Tensor]:
    """Per-head metrics [..., Hq] from summed states (:meth:`HeadMetrics.state`, any leading dims
    [...], e.g. replicates x layers): each metric whose sums are present, NaN where nothing was
    counted."""
    out: dict[str, torch.Tensor] = {}
    if "score_mse" in state:
        out["score_mse"] = state["score_mse"] / state["pairs"]
    for name in SCORE_METRICS[1:] + VALUE_METRICS:
        if name in state:
            out[name] = state[name] / state["rows"]
    for name in ("key_mse", "value_mse"):
        if f"{name}_n" in state:
            out[name] = _expand(state[f"{name}_err"] / state[f"{name}_n"].unsqueeze(-1), q_heads)
    return out


def grouped_logits(q: torch.Tensor, k: torch.Tensor, tau: float) -> torch.Tensor:
    """tau * q k^T with GQA: q [B, Hq, T, d], k [B, Hkv, S, d] -> float32 [B, Hq, T, S]."""
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    if hkv < 1 or hq % hkv:
        raise ValueError(f"k: KV heads {hkv} must divide query heads {hq}")
    if k.shape[0] != b or k.shape[-1] != d:
        raise ValueError(f"k: expected [{b}, Hkv, S, {d}] to match q, got {tuple(k.shape)}")
    g = hq // hkv
    return (tau * (q.float().reshape(b, hkv, g * t, d) @ k.float().transpose(-1, -2))).reshape(b, hq, t, s)


def layer_metrics(q: torch.Tensor, k: torch.Tensor, k_eff: torch.Tensor, tau: float, *,
                  key_mask: torch.Tensor | None = None, v: torch.Tensor | None = None,
                  v_hat: torch.Tensor | None = None, value_mask: torch.Tensor | None = None,
                  offset: int = 0, block: int | None = None,
                  track_a2: bool = False) -> dict[str, torch.Tensor]:
    """All metrics of one layer from q [B, Hq, T, d], k / k_eff / v / v_hat [B, Hkv, S, d].

    ``key_mask`` / ``value_mask`` bool [T, S] (``schedule.decode_mask``): where query t reads key /
    value j in quantized form (default: everywhere; ``k_eff`` equals ``k`` on tokens never
    quantized). The logit error is ``tau q (k_eff - k)^T`` where keys are read quantized (one
    matmul, no cancellation). Causal, with queries at ``offset + t``: a block of rows reads only the
    keys it may see, and holds about 2**24 logits unless ``block`` rows are given. ``track_a2`` adds
    ``a2_weights`` float64 [B, Hkv, S] (A² over all rows, the oracle weights).
    """
    b, hq, t, _ = q.shape
    hkv, s = k.shape[1], k.shape[2]
    if offset < 0 or offset + t > s:
        raise ValueError(f"offset: queries {offset}..{offset + t - 1} must lie inside the {s} keys")
    acc = HeadMetrics(hq, hkv, q.device)
    acc.add_tensor_error("key_mse", k, k_eff)
    eps = None
    if v is not None and v_hat is not None:
        acc.add_tensor_error("value_mse", v, v_hat)
        eps = v_hat.float() - v.float()
    dev = q.device
    a2 = torch.zeros(b, hkv, s, dtype=torch.float64, device=dev) if track_a2 else None
    block = block or max(1, (1 << 24) // max(1, b * hq * s))
    diff = k_eff.float() - k.float()
    for t0 in range(0, t, block):
        t1 = min(t, t0 + block)
        end = offset + t1  # keys visible to the last row of the block
        qb = q[:, :, t0:t1]
        allowed = allowed_mask(t1 - t0, end, None, offset + t0, dev)
        bias = torch.zeros(allowed.shape, device=dev).masked_fill_(~allowed, float("-inf"))
        s_m = grouped_logits(qb, k[:, :, :end], tau).add_(bias)
        keep = allowed if key_mask is None else allowed & key_mask[t0:t1, :end].to(dev)
        delta = grouped_logits(qb, diff[:, :, :end], tau).mul_(keep.float())
        vm = None if value_mask is None else value_mask[t0:t1, :end].to(dev)
        e = None if eps is None else eps[:, :, :end]
        a = acc.add_logit_error(s_m, delta, allowed, eps=e, value_mask=vm)
        if a2 is not None:
            a2[..., :end] += a2_weights(a, hkv)
    out = acc.result()
    if a2 is not None:
        out["a2_weights"] = a2
    return out
