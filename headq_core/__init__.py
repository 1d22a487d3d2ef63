"""HeadQ core: KV-cache quantizers, HeadQ score-space correction, A² value policy and the
model-visible distortion metrics of METHOD.md, on torch + transformers. A plain library: no web,
no database, no environment variables."""

from headq_core.config import (
    HeadQConfig,
    InterventionConfig,
    QuantConfig,
    RunSpec,
    ValuePolicyConfig,
)
from headq_core.errors import Cancelled
from headq_core.evaluation.metrics import HeadMetrics, layer_metrics
from headq_core.method.budget import effective_bits
from headq_core.method.headq import (
    QueryStats,
    SideCode,
    correction_keys,
    decode_side,
    encode_side,
    logit_correction,
    make_basis,
)
from headq_core.method.intervention import perturb_keys
from headq_core.method.packing import pack_bits, unpack_bits
from headq_core.method.quant import Packed, dequantize, fake_quantize, quantize
from headq_core.method.schedule import decode_mask, quantized_count
from headq_core.method.values import OnlineA2, a2_weights, mixed_fake_quantize, value_keep_mask

__all__ = ["Cancelled", "HeadMetrics", "HeadQConfig", "InterventionConfig", "OnlineA2", "Packed",
           "QuantConfig", "QueryStats", "RunSpec", "SideCode", "ValuePolicyConfig", "a2_weights",
           "correction_keys", "decode_mask", "decode_side", "dequantize", "effective_bits", "encode_side",
           "fake_quantize", "layer_metrics", "logit_correction", "make_basis", "mixed_fake_quantize",
           "pack_bits", "perturb_keys", "quantize", "quantized_count", "unpack_bits", "value_keep_mask"]
