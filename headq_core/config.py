"""Run configurations (re-exported from the torch-free `headq_spec.runs`, where they are defined)."""

from headq_spec.runs import (
    SIDE_BITS,
    SUPPORTED_BITS,
    HeadQConfig,
    InterventionConfig,
    QuantConfig,
    RunSpec,
    ValuePolicyConfig,
)

__all__ = ["SIDE_BITS", "SUPPORTED_BITS", "HeadQConfig", "InterventionConfig", "QuantConfig", "RunSpec",
           "ValuePolicyConfig"]
