"""Configuration dataclasses: one small, validated class per method choice.

Every field is checked in ``__post_init__`` and a bad value raises ``ValueError`` naming the field.
A :class:`RunSpec` is one evaluated configuration (a row of the results ``runs`` list); it
round-trips through plain dicts (``to_dict`` / ``from_dict``) so job specs can carry it as JSON.
Each bounded field's annotation states its rule as JSON Schema (the API's OpenAPI document shows it);
``__post_init__`` enforces the same rule, with the same limits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Strict, WithJsonSchema

from headq_spec.limits import MAX_BITS, MAX_RANK, MAX_SEED, MAX_WINDOW

SUPPORTED_BITS = (1, 2, 3, 4, 8)  # code widths of the "int" format
NUQ_BITS = (2, 3, 4)  # code widths a calibration learns non-uniform codebooks for (codebook "nuq")
# the cache formats engines ship and their code widths (the "int" format takes SUPPORTED_BITS)
FORMAT_BITS = {"fp8_e4m3": 8, "fp8_e5m2": 8, "q8_0": 8, "q4_0": 4, "q4_1": 4, "q5_0": 5, "q5_1": 5,
               "iq4_nl": 4}
FORMATS = ("int", *FORMAT_BITS)
BLOCK_FORMATS = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")  # llama.cpp: 32 values a block
GGML_BLOCK = 32
CODE_BITS = tuple(sorted({*SUPPORTED_BITS, *FORMAT_BITS.values()}))
SIDE_BITS = (2, 4, 8, 16)
HIGH_BITS = (*SUPPORTED_BITS, MAX_BITS)
MAX_RUN_NAME = 200  # characters: the store's run column
Axis = Literal["per_channel", "per_token"]
Basis = Literal["query_pca", "key_pca", "random"]
PolicyMode = Literal["online", "oracle"]
SideScale = Literal["token", "group"]
Format = Literal["int", "fp8_e4m3", "fp8_e5m2", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"]
Fp8Scale = Literal["tensor", "head", "token", "unit"]
Rotation = Literal["none", "hadamard"]
Codebook = Literal["uniform", "nuq"]
# the format fields' defaults: a config at these values is the original quantizer, and to_dict omits
# them, so every spec and result written before the formats existed reads (and hashes) the same
FORMAT_DEFAULTS: dict[str, Any] = {"format": "int", "symmetric": False, "fp8_scale": "tensor",
                                   "rotation": "none", "rotation_seed": 0, "fp8_static": False,
                                   "outliers": 0.0, "pre_rope": False, "codebook": "uniform"}
MAX_OUTLIERS = 0.1  # the largest share of a token group kept exact (KVQuant keeps 1%)
SlidingLayers = Literal["quantize", "full_precision"]  # how a cache stores sliding-window layers


# the JSON Schema of a bounded field: the OpenAPI document shows it, __post_init__ enforces it
def _integer(low: int, high: int) -> WithJsonSchema:
    return WithJsonSchema({"type": "integer", "minimum": low, "maximum": high})


def _one_of(values: tuple[int, ...]) -> WithJsonSchema:
    return WithJsonSchema({"type": "integer", "enum": list(values)})


def _number_or_null(low: float, high: float) -> WithJsonSchema:
    return WithJsonSchema({"anyOf": [{"type": "number", "minimum": low, "maximum": high}, {"type": "null"}]})


def _require(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{field_name}: {message}")


def _require_in(value: Any, low: int, high: int, field_name: str) -> None:
    """An integer (not a bool) in ``[low, high]``."""
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    _require(ok, field_name, f"must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class QuantConfig:
    """One cache format: what a key or value cache stores per element (docs/method.md, "Formats").

    ``format="int"`` (default): uniform ``bits``-bit codes with an fp16 scale and zero-point per
    group (``symmetric``: scale only, codes centred on zero). ``per_channel``: groups of
    ``group_size`` tokens along the sequence, one scale per channel (the KIVI key layout).
    ``per_token``: groups of ``group_size`` channels along head_dim (the value layout).
    The engine formats store each token as it arrives (``axis="per_token"``) and fix their code
    width (``bits`` must equal it, :data:`FORMAT_BITS`): ``fp8_e4m3`` / ``fp8_e5m2`` with a float32
    scale per tensor, head or token (``fp8_scale``; ``unit``: no scale, a plain saturating cast;
    ``group_size`` unused), and llama.cpp's block formats (``q8_0`` ... ``iq4_nl``: blocks of 32
    values of one token, ``group_size`` 32). ``rotation="hadamard"`` quantizes ``H x`` (a Hadamard
    transform over head_dim with random signs from ``rotation_seed``) and reads ``Hᵀ Q(H x)``.
    ``residual`` most recent tokens stay in full precision. ``fp8_static``: the fp8 ``tensor`` /
    ``head`` scale is fixed from a calibration's amax (vLLM's ``k_scale`` / ``v_scale``) instead of
    measured on the window. ``outliers`` (``int`` only, KVQuant's dense-and-sparse option): that share
    of each token group's largest magnitudes (per_channel: G tokens x d, per_token: one token's d),
    rounded up, is kept exact in fp16 and left out of the scales (``method.outliers``).
    ``pre_rope`` (keys only, KVQuant): quantize each key before the rotary embedding and rotate it
    back at read time, ``k^_j = RoPE_j(Q(RoPE_j⁻¹(k_j)))``, on top of any format and rotation; no
    stored bits (the position fixes the rotation); models with full-width ``rotate_half`` RoPE only.
    ``codebook="nuq"`` (asymmetric ``int`` at :data:`NUQ_BITS`, KVQuant's non-uniform codes): the same
    groups and fp16 ``lo`` / ``hi - lo``, each value the nearest of ``2^bits`` levels in [0, 1] that a
    calibration learned for the layer and side (``method.codebook``), read as ``lo + level (hi - lo)``
    (learned on post-RoPE, unrotated groups: not with ``pre_rope`` or a rotation).
    """

    bits: Annotated[int, _one_of(CODE_BITS)] = 2
    axis: Axis = "per_channel"
    group_size: Annotated[int, _integer(1, MAX_WINDOW)] = 32
    residual: Annotated[int, _integer(0, MAX_WINDOW)] = 0
    format: Format = "int"
    symmetric: Annotated[bool, Strict()] = False  # JSON true / false only, no "true" or 1
    fp8_scale: Fp8Scale = "tensor"
    rotation: Rotation = "none"
    rotation_seed: Annotated[int, _integer(0, MAX_SEED)] = 0
    fp8_static: Annotated[bool, Strict()] = False
    outliers: Annotated[float, Strict(), WithJsonSchema(
        {"type": "number", "minimum": 0, "maximum": MAX_OUTLIERS})] = 0.0
    pre_rope: Annotated[bool, Strict()] = False  # keys only: RunSpec refuses it on values
    codebook: Codebook = "uniform"

    def __post_init__(self) -> None:
        _require(self.format in FORMATS, "format", f"must be one of {FORMATS}, got {self.format!r}")
        if self.format == "int":
            _require(self.bits in SUPPORTED_BITS, "bits",
                     f"must be one of {SUPPORTED_BITS}, got {self.bits!r}")
        else:
            width = FORMAT_BITS[self.format]
            _require(self.bits == width and not isinstance(self.bits, bool), "bits",
                     f"format {self.format!r} stores {width}-bit codes: give bits {width}, got {self.bits!r}")
        _require(self.axis in ("per_channel", "per_token"), "axis",
                 f"must be 'per_channel' or 'per_token', got {self.axis!r}")
        _require_in(self.group_size, 1, MAX_WINDOW, "group_size")
        _require_in(self.residual, 0, MAX_WINDOW, "residual")
        _require(isinstance(self.symmetric, bool), "symmetric",
                 f"must be true or false, got {self.symmetric!r}")
        _require(self.fp8_scale in ("tensor", "head", "token", "unit"), "fp8_scale",
                 f"must be 'tensor', 'head', 'token' or 'unit', got {self.fp8_scale!r}")
        _require(self.rotation in ("none", "hadamard"), "rotation",
                 f"must be 'none' or 'hadamard', got {self.rotation!r}")
        _require_in(self.rotation_seed, 0, MAX_SEED, "rotation_seed")
        _require(isinstance(self.pre_rope, bool), "pre_rope", f"must be true or false, got {self.pre_rope!r}")
        self._check_format_rules()
        self._check_static_and_outliers()
        self._check_codebook()

    def _check_format_rules(self) -> None:
        """The rules that tie the fields to the format."""
        fmt = self.format
        if fmt != "int":
            _require(self.axis == "per_token", "axis",
                     f"format {fmt!r} stores each token as it arrives: use 'per_token', got {self.axis!r}")
            _require(not self.symmetric, "symmetric",
                     f"only for the 'int' format ({fmt!r} fixes its own encoding)")
        if fmt in BLOCK_FORMATS:
            _require(self.group_size == GGML_BLOCK, "group_size",
                     f"format {fmt!r} has blocks of {GGML_BLOCK} values, got {self.group_size!r}")
        _require(fmt.startswith("fp8") or self.fp8_scale == "tensor", "fp8_scale",
                 f"only used by the fp8 formats, got {self.fp8_scale!r} with format {fmt!r}")
        _require(not self.symmetric or self.bits >= 2, "symmetric", "needs bits >= 2")
        _require(self.rotation != "none" or self.rotation_seed == 0, "rotation_seed",
                 "only used with rotation 'hadamard'")

    def _check_static_and_outliers(self) -> None:
        """The rules of ``fp8_static`` and ``outliers``."""
        _require(isinstance(self.fp8_static, bool), "fp8_static",
                 f"must be true or false, got {self.fp8_static!r}")
        if self.fp8_static:
            _require(self.format.startswith("fp8") and self.fp8_scale in ("tensor", "head"), "fp8_static",
                     "needs an fp8 format with a 'tensor' or 'head' scale (a per-token scale is dynamic), "
                     f"got format {self.format!r}, fp8_scale {self.fp8_scale!r}")
            _require(self.rotation == "none", "fp8_static",
                     "the calibration measures unrotated keys and values: not with rotation 'hadamard'")
            _require(not self.pre_rope, "fp8_static",
                     "the calibration measures post-RoPE keys: not with pre_rope")
        share = self.outliers
        number = isinstance(share, (int, float)) and not isinstance(share, bool)
        _require(number and 0 <= share <= MAX_OUTLIERS, "outliers",
                 f"must be a number in [0, {MAX_OUTLIERS}], got {share!r}")
        _require(share == 0 or self.format == "int", "outliers",
                 f"only for the 'int' format, got format {self.format!r}")

    def _check_codebook(self) -> None:
        """The rules of ``codebook``: ``nuq`` is an asymmetric ``int`` format at :data:`NUQ_BITS`."""
        _require(self.codebook in ("uniform", "nuq"), "codebook",
                 f"must be 'uniform' or 'nuq', got {self.codebook!r}")
        if self.codebook == "nuq":
            _require(self.format == "int", "codebook", f"'nuq' needs the 'int' format, got {self.format!r}")
            _require(not self.symmetric, "codebook", "'nuq' is asymmetric: not with symmetric")
            _require(self.bits in NUQ_BITS, "codebook",
                     f"'nuq' codebooks are learned for bits {NUQ_BITS}, got {self.bits!r}")
            _require(self.rotation == "none" and not self.pre_rope, "codebook",
                     "the calibration learns 'nuq' codebooks on unrotated, post-RoPE keys and values: "
                     "not with rotation 'hadamard' or pre_rope")

    @property
    def calibrated(self) -> str | None:
        """What this format reads from a calibration: ``"amax"`` (static fp8 scales), ``"codebook"``
        (``nuq``) or None."""
        return "amax" if self.fp8_static else "codebook" if self.codebook == "nuq" else None

    @property
    def seq_group(self) -> int:
        """Tokens that must be complete before any of them can be quantized (1 for per_token)."""
        return self.group_size if self.axis == "per_channel" else 1

    @property
    def is_plain(self) -> bool:
        """True for the original quantizer (asymmetric uniform int, no rotation, no outliers, post-RoPE):
        what packed caches store."""
        return (self.format == "int" and not self.symmetric and self.rotation == "none"
                and not self.outliers and not self.pre_rope and self.codebook == "uniform")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, the format fields only where they differ from their defaults."""
        return {k: v for k, v in asdict(self).items() if FORMAT_DEFAULTS.get(k, object()) != v}


@dataclass(frozen=True)
class HeadQConfig:
    """Low-rank side code of the key residual in a calibration basis, added back as a logit term.

    ``side_scale``: ``"token"`` quantizes each token's code symmetrically with one fp16 scale;
    ``"group"`` quantizes each code component asymmetrically (fp16 scale and minimum) over the G
    tokens of a per_channel key group (needs ``side_bits < 16`` and per_channel keys).
    """

    rank: Annotated[int, _integer(1, MAX_RANK)] = 8
    basis: Basis = "query_pca"
    sign: Annotated[int, _one_of((1, -1))] = 1
    side_bits: Annotated[int, _one_of(SIDE_BITS)] = 8
    seed: Annotated[int, _integer(0, MAX_SEED)] = 0  # only used by the ``random`` basis
    side_scale: SideScale = "token"

    def __post_init__(self) -> None:
        _require_in(self.rank, 1, MAX_RANK, "rank")
        _require(self.basis in ("query_pca", "key_pca", "random"), "basis",
                 f"must be 'query_pca', 'key_pca' or 'random', got {self.basis!r}")
        _require(self.sign in (1, -1), "sign", f"must be +1 or -1, got {self.sign!r}")
        _require(self.side_bits in SIDE_BITS, "side_bits",
                 f"must be one of {SIDE_BITS}, got {self.side_bits!r}")
        _require_in(self.seed, 0, MAX_SEED, "seed")
        _require(self.side_scale in ("token", "group"), "side_scale",
                 f"must be 'token' or 'group', got {self.side_scale!r}")
        _require(self.side_scale == "token" or self.side_bits != 16, "side_scale",
                 "'group' needs side_bits < 16 (16-bit codes have no scale)")


@dataclass(frozen=True)
class ValuePolicyConfig:
    """A² value policy: the largest-A² tokens keep ``high_bits``, the rest the value quantizer's bits.

    Give exactly one budget: ``keep_fraction`` (share of tokens at high precision) or
    ``target_bits`` (average value code bits, converted to a fraction; a run also needs it between its
    value quantizer's bits and ``high_bits``).
    """

    mode: PolicyMode = "online"
    keep_fraction: Annotated[float | None, _number_or_null(0, 1)] = 0.1
    target_bits: Annotated[float | None, _number_or_null(min(SUPPORTED_BITS), MAX_BITS)] = None
    high_bits: Annotated[int, _one_of(HIGH_BITS)] = 8

    def __post_init__(self) -> None:
        _require(self.mode in ("online", "oracle"), "mode",
                 f"must be 'online' or 'oracle', got {self.mode!r}")
        _require((self.keep_fraction is None) != (self.target_bits is None), "keep_fraction",
                 "give exactly one of keep_fraction or target_bits")
        if self.keep_fraction is not None:
            _require(0.0 <= self.keep_fraction <= 1.0 and not math.isnan(self.keep_fraction),
                     "keep_fraction", f"must lie in [0, 1], got {self.keep_fraction!r}")
        if self.target_bits is not None:  # NaN fails the comparison, ±Infinity the bounds
            _require(min(SUPPORTED_BITS) <= self.target_bits <= MAX_BITS, "target_bits",
                     f"must lie in [{min(SUPPORTED_BITS)}, {MAX_BITS}], got {self.target_bits!r}")
        _require(self.high_bits in HIGH_BITS, "high_bits",
                 f"must be one of {HIGH_BITS}, got {self.high_bits!r}")

    def fraction_for(self, low_bits: int) -> float:
        """Share of tokens kept at ``high_bits`` so the average code width meets the budget."""
        if self.keep_fraction is not None:
            return self.keep_fraction
        assert self.target_bits is not None
        _require(low_bits <= self.target_bits <= self.high_bits, "target_bits",
                 f"must lie between the low ({low_bits}) and high ({self.high_bits}) bit widths, "
                 f"got {self.target_bits!r}")
        return (self.target_bits - low_bits) / (self.high_bits - low_bits)


@dataclass(frozen=True)
class InterventionConfig:
    """Null-space control: replace the key error by same-norm noise outside or inside the top-m
    query subspace (the norm of each token's real quantization error is kept)."""

    subspace: Literal["outside", "inside"] = "outside"
    dims: Annotated[int, _integer(1, MAX_RANK)] = 8
    seed: Annotated[int, _integer(0, MAX_SEED)] = 0

    def __post_init__(self) -> None:
        _require(self.subspace in ("outside", "inside"), "subspace",
                 f"must be 'outside' or 'inside', got {self.subspace!r}")
        _require_in(self.dims, 1, MAX_RANK, "dims")
        _require_in(self.seed, 0, MAX_SEED, "seed")


@dataclass(frozen=True)
class RunSpec:
    """One evaluated configuration. ``key=None`` / ``value=None`` keeps that side dense."""

    name: Annotated[str, WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_RUN_NAME})]
    key: QuantConfig | None = None
    value: QuantConfig | None = None
    headq: HeadQConfig | None = None
    value_policy: ValuePolicyConfig | None = None
    intervention: InterventionConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # sliding-window layers in a cache: quantized as the full ones (None, the default, means
    # "quantize", as serving engines do) or kept in full precision; either way a cache holds only
    # their window. None keeps existing specs (and their fingerprints) unchanged.
    sliding_layers: SlidingLayers | None = None

    def __post_init__(self) -> None:
        _require(bool(self.name) and isinstance(self.name, str), "name", "must be a non-empty string")
        _require(self.headq is None or self.key is not None, "headq", "needs a key quantizer")
        _require(self.headq is None or self.headq.side_scale == "token" or self.key is None
                 or self.key.axis == "per_channel", "headq.side_scale",
                 "'group' needs per_channel keys (the code shares the key group of G tokens)")
        _require(self.intervention is None or self.key is not None, "intervention", "needs a key quantizer")
        _require(self.value is None or not self.value.pre_rope, "value.pre_rope",
                 "keys only: values carry no rotary embedding")
        _require(self.sliding_layers in (None, "quantize", "full_precision"), "sliding_layers",
                 f"must be 'quantize' or 'full_precision', got {self.sliding_layers!r}")
        _require(self.value_policy is None or self.value is not None, "value_policy",
                 "needs a value quantizer")
        _require(self.value_policy is None or self.value is None or self.value.format == "int",
                 "value_policy", "needs an 'int' value format (the A² policy mixes int code widths)")
        policy, value = self.value_policy, self.value
        if policy is not None and policy.target_bits is not None and value is not None:
            _require(value.bits < policy.high_bits, "value_policy.high_bits",
                     f"must exceed the value bits ({value.bits}) to meet a target_bits budget")
            _require(value.bits <= policy.target_bits <= policy.high_bits, "value_policy.target_bits",
                     f"must lie between the value bits ({value.bits}) and high_bits ({policy.high_bits}), "
                     f"got {policy.target_bits!r}")

    @property
    def is_dense(self) -> bool:
        return self.key is None and self.value is None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None and v != {}}
        for side in ("key", "value"):
            cfg = getattr(self, side)
            if cfg is not None:
                out[side] = cfg.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        parts = {"key": QuantConfig, "value": QuantConfig, "headq": HeadQConfig,
                 "value_policy": ValuePolicyConfig, "intervention": InterventionConfig}
        unknown = set(data) - set(parts) - {"name", "extra", "sliding_layers"}
        _require(not unknown, "run", f"unknown fields {sorted(unknown)}")
        kwargs: dict[str, Any] = {"name": data.get("name", ""), "extra": dict(data.get("extra") or {})}
        if "sliding_layers" in data:
            kwargs["sliding_layers"] = data["sliding_layers"]
        for key, klass in parts.items():
            if data.get(key) is not None:
                try:
                    kwargs[key] = klass(**data[key])
                except TypeError as exc:
                    raise ValueError(f"{key}: {exc}") from exc
        return cls(**kwargs)


def check_run_list(runs: list[Any]) -> list[RunSpec]:
    """The model-free rules of a run list (each run's own rules are in :class:`RunSpec`): at least
    one run, names unique and at most ``MAX_RUN_NAME`` characters. Dicts become RunSpecs."""
    specs = [RunSpec.from_dict(r) if isinstance(r, dict) else r for r in runs]
    _require(bool(specs), "runs", "give at least one run")
    too_long = [i for i, run in enumerate(specs) if len(run.name) > MAX_RUN_NAME]
    if too_long:
        raise ValueError(f"runs.{too_long[0]}.name: at most {MAX_RUN_NAME} characters")
    names = [run.name for run in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    _require(not duplicates, "runs", f"duplicate run names {duplicates}")
    return specs

