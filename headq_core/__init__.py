"""HeadQ core: KV-cache quantizers, HeadQ score-space correction, A² value policy and the
model-visible distortion metrics of METHOD.md, on torch + transformers. A plain library: no web,
no database, no environment variables."""

from headq_core.budget import effective_bits
from headq_core.config import (
    HeadQConfig,
    InterventionConfig,
    QuantConfig,
    RunSpec,
    ValuePolicyConfig,
)
from headq_core.packing import pack_bits, unpack_bits
from headq_core.quant import Packed, dequantize, fake_quantize, quantize
from headq_core.schedule import decode_mask, quantized_count

__all__ = ["HeadQConfig", "InterventionConfig", "Packed", "QuantConfig", "RunSpec", "ValuePolicyConfig",
           "decode_mask", "dequantize", "effective_bits", "fake_quantize", "pack_bits", "quantize",
           "quantized_count", "unpack_bits"]
