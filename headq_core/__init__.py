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

__all__ = ["HeadQConfig", "InterventionConfig", "QuantConfig", "RunSpec", "ValuePolicyConfig"]
