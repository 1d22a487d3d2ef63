"""The job specs of the paper-reproduction study (issue 8): one place that says what was run.

Every job is a plain job-spec dict (docs/contracts.md, validated by ``headq_spec.jobs.JobSpec``)
that ``headq submit`` would queue and that ``workers.pipeline.execute`` runs. Model:
SmolLM2-135M-Instruct (``builtin:smollm2-135m``, head_dim 64, 30 layers, 9 query / 3 KV heads).
Calibration on the SOTU addresses up to 2001 (and on five Shakespeare comedies), evaluation on the
2002-2021 addresses (and on four tragedies), windows of 1024 tokens.

Families (the ``family`` key is not part of the spec; it groups the jobs of one experiment):
``exp1`` K-only sweep, ``exp2`` controls, ``exp4`` full-KV 2-bit, ``budget`` cheap side codes for
the Pareto frontier, ``shakespeare`` the second corpus. Experiments 3 (predictor check) and 5
(entropy / route-flip) read the head rows of the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODEL = {"id": "builtin:smollm2-135m", "dtype": "float32", "device": "auto"}
WINDOW = 1024
CAL_SOTU, CAL_SHAKESPEARE = "paper-cal-sotu", "paper-cal-shakespeare"
RANKS = (2, 4, 8, 16, 32)
SIDE_BITS = (16, 8, 4)
GROUPS = {"per_channel": (32, 64, 128), "per_token": (32, 64)}  # per_token G must divide d = 64
RESIDUALS = (0, 128)
A2_ONLINE = {"mode": "online", "keep_fraction": 0.1, "high_bits": 8}
A2_ORACLE = {"mode": "oracle", "keep_fraction": 0.1, "high_bits": 8}


@dataclass(frozen=True)
class Sizes:
    """Token budgets of one study execution (the defaults are the published run)."""

    eval_tokens: int = 65536
    calib_tokens: int = 131072
    head_windows: int = 8
    batch: int = 16
    window: int = WINDOW


@dataclass
class StudyJob:
    """One job of the study: its name (also its file name), family and spec."""

    name: str
    family: str
    spec: dict[str, Any]
    depends: str | None = field(default=None)


def key(bits: int, axis: str = "per_channel", group: int = 32, residual: int = 0) -> dict[str, Any]:
    return {"bits": bits, "axis": axis, "group_size": group, "residual": residual}


def headq(rank: int, side_bits: int = 8, **extra: Any) -> dict[str, Any]:
    return {"rank": rank, "basis": "query_pca", "side_bits": side_bits, **extra}


def key_name(k: dict[str, Any]) -> str:
    axis = "pc" if k["axis"] == "per_channel" else "pt"
    return f"k{k['bits']}-{axis}-g{k['group_size']}-r{k['residual']}"


def _dataset(corpus: str, split: str, sizes: Sizes, calibration: bool = False) -> dict[str, Any]:
    data = {"source": "builtin", "name": corpus, "split": split, "window": sizes.window}
    if calibration:
        return {**data, "max_tokens": sizes.calib_tokens}
    return {**data, "max_tokens": sizes.eval_tokens, "head_windows": sizes.head_windows, "batch": sizes.batch}


def _calibration(name: str, corpus: str, sizes: Sizes) -> StudyJob:
    spec = {"kind": "calibration", "label": f"paper study: query basis on {corpus}", "model": MODEL,
            "dataset": _dataset(corpus, "calibration", sizes, calibration=True), "calibration": {"rank": 64}}
    return StudyJob(name, "calibration", spec)


def _evaluation(name: str, family: str, label: str, runs: list[dict[str, Any]], sizes: Sizes,
                corpus: str = "sotu", calibration: str = CAL_SOTU) -> StudyJob:
    spec = {"kind": "evaluation", "label": f"paper study: {label}", "model": MODEL,
            "dataset": _dataset(corpus, "eval", sizes), "calibration_job": calibration,
            "runs": [{"name": "dense"}, *runs], "seed": 0}
    return StudyJob(name, family, spec, depends=calibration)


def sweep_runs(base: dict[str, Any]) -> list[dict[str, Any]]:
    """The plain quantizer and every HeadQ rank x side-bit width on top of it."""
    name = key_name(base)
    runs = [{"name": name, "key": base}]
    for rank in RANKS:
        for bits in SIDE_BITS:
            runs.append({"name": f"{name}+hq{rank}s{bits}", "key": base, "headq": headq(rank, bits)})
    return runs


def exp1(sizes: Sizes) -> list[StudyJob]:
    """K-only sweep: 2/3-bit keys, per_channel/per_token, every G and R, HeadQ r x side bits."""
    jobs = []
    for bits in (2, 3):
        for axis, groups in GROUPS.items():
            for group in groups:
                runs = [r for residual in RESIDUALS for r in sweep_runs(key(bits, axis, group, residual))]
                tag = f"k{bits}-{'pc' if axis == 'per_channel' else 'pt'}-g{group}"
                jobs.append(_evaluation(f"exp1-{tag}", "exp1", f"K-only {tag}, HeadQ sweep", runs, sizes))
    return jobs


def control_runs(base: dict[str, Any]) -> list[dict[str, Any]]:
    """Basis controls at every rank, wrong sign, null-space interventions on one quantizer."""
    name = key_name(base)
    runs = [{"name": name, "key": base}]
    for rank in RANKS:
        for basis in ("query_pca", "key_pca", "random"):
            runs.append({"name": f"{name}+hq{rank}s8-{basis}", "key": base,
                         "headq": {**headq(rank), "basis": basis}})
    for rank in (8, 16):
        runs.append({"name": f"{name}+hq{rank}s8-wrong-sign", "key": base, "headq": headq(rank, sign=-1)})
    for dims in (8, 16):
        for subspace in ("outside", "inside"):
            runs.append({"name": f"{name}-noise-{subspace}{dims}", "key": base,
                         "intervention": {"subspace": subspace, "dims": dims, "seed": 0}})
    return runs


def exp2(sizes: Sizes) -> list[StudyJob]:
    runs = control_runs(key(2)) + control_runs(key(3))
    return [_evaluation("exp2-controls", "exp2", "controls (basis, sign, null-space noise)", runs, sizes)]


def fullkv_runs() -> list[dict[str, Any]]:
    """Full-KV 2-bit (KIVI layout, R = 128) with HeadQ and the A² policy, and equal-budget rivals."""
    k2, v2 = key(2, residual=128), key(2, "per_token", 32, 128)
    hq8, hq16, cheap = headq(8), headq(16), headq(8, 4, side_scale="group")
    runs = [
        {"name": "kv2", "key": k2, "value": v2},
        {"name": "kv2+hq8", "key": k2, "value": v2, "headq": hq8},
        {"name": "kv2+hq16", "key": k2, "value": v2, "headq": hq16},
        {"name": "kv2+a2-online", "key": k2, "value": v2, "value_policy": A2_ONLINE},
        {"name": "kv2+a2-oracle", "key": k2, "value": v2, "value_policy": A2_ORACLE},
        {"name": "kv2+hq8+a2-online", "key": k2, "value": v2, "headq": hq8, "value_policy": A2_ONLINE},
        {"name": "kv2+hq8+a2-oracle", "key": k2, "value": v2, "headq": hq8, "value_policy": A2_ORACLE},
        {"name": "kv2+hq16+a2-online", "key": k2, "value": v2, "headq": hq16, "value_policy": A2_ONLINE},
        {"name": "kv2+hq8s4g+a2-online", "key": k2, "value": v2, "headq": cheap, "value_policy": A2_ONLINE},
        # the same bits spent elsewhere: smaller groups, 3-bit values or keys
        {"name": "kv2-g16", "key": key(2, group=16, residual=128), "value": key(2, "per_token", 16, 128)},
        {"name": "k2+v3", "key": k2, "value": key(3, "per_token", 32, 128)},
        {"name": "k3+v2", "key": key(3, residual=128), "value": v2},
        {"name": "kv3", "key": key(3, residual=128), "value": key(3, "per_token", 32, 128)},
        {"name": "k2-g16+v3", "key": key(2, group=16, residual=128), "value": key(3, "per_token", 32, 128)},
    ]
    return runs


def exp4(sizes: Sizes) -> list[StudyJob]:
    return [_evaluation("exp4-fullkv", "exp4", "full-KV 2-bit, HeadQ and A² values", fullkv_runs(), sizes)]


def budget_runs() -> list[dict[str, Any]]:
    """Plain per_channel keys at 2/3/4 bits and every G, and cheaper side codes on 2/3-bit bases."""
    runs = []
    for bits in (2, 3, 4):
        for group in (32, 64, 128):
            runs.append({"name": key_name(key(bits, group=group)), "key": key(bits, group=group)})
    codes = [(4, "token"), (2, "token"), (8, "group"), (4, "group"), (2, "group")]
    for bits, groups, ranks in ((2, (32, 64, 128), (4, 8, 16)), (3, (128,), (4, 8))):
        for group in groups:
            base = key(bits, group=group)
            for rank in ranks:
                for side_bits, scale in codes:
                    tag = "g" if scale == "group" else ""
                    runs.append({"name": f"{key_name(base)}+hq{rank}s{side_bits}{tag}", "key": base,
                                 "headq": headq(rank, side_bits, side_scale=scale)})
    return runs


def budget(sizes: Sizes) -> list[StudyJob]:
    runs = budget_runs()
    half = len(runs) // 2  # two jobs: at most 256 runs each, and shorter resumable units
    return [_evaluation(f"budget-{i + 1}", "budget", f"side-code budget frontier, part {i + 1}", part, sizes)
            for i, part in enumerate((runs[:half], runs[half:]))]


def shakespeare(sizes: Sizes) -> list[StudyJob]:
    """The second corpus: key sweep highlights and full-KV, with its own and with SOTU calibration."""
    k2 = key(2)
    own = [{"name": key_name(k2), "key": k2}]
    own += [{"name": f"{key_name(k2)}+hq{r}s8", "key": k2, "headq": headq(r)} for r in (8, 16)]
    own += [{"name": f"{key_name(k2)}+hq16s8-{b}", "key": k2, "headq": {**headq(16), "basis": b}}
            for b in ("key_pca", "random")]
    own += [{"name": f"{key_name(k2)}+hq16s8-wrong-sign", "key": k2, "headq": headq(16, sign=-1)}]
    own += [{"name": f"{key_name(key(3))}", "key": key(3)},
            {"name": f"{key_name(key(3))}+hq16s8", "key": key(3), "headq": headq(16)}]
    own += [r for r in fullkv_runs() if r["name"] in ("kv2", "kv2+a2-online", "kv2+hq8", "kv2+hq8+a2-online")]
    cross = [r for r in own if "headq" in r and r["headq"]["basis"] == "query_pca" and "value" not in r]
    return [
        _evaluation("shakespeare-own-cal", "shakespeare", "Shakespeare tragedies, Shakespeare calibration",
                    own, sizes, corpus="shakespeare", calibration=CAL_SHAKESPEARE),
        _evaluation("shakespeare-sotu-cal", "shakespeare", "Shakespeare tragedies, SOTU calibration",
                    [own[0], *cross], sizes, corpus="shakespeare", calibration=CAL_SOTU),
    ]


def study_jobs(sizes: Sizes | None = None) -> list[StudyJob]:
    """Every job in the order the runner executes them: calibrations, then the headline K-only
    job (2-bit per_channel G=32), the controls, full-KV, the budget frontier, the rest."""
    sizes = sizes or Sizes()
    headline, *sweep = exp1(sizes)
    return [_calibration(CAL_SOTU, "sotu", sizes), _calibration(CAL_SHAKESPEARE, "shakespeare", sizes),
            headline, *exp2(sizes), *exp4(sizes), *budget(sizes), *sweep, *shakespeare(sizes)]
