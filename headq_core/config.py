"""Run configurations (re-exported from the torch-free `headq_spec.runs`, where they are defined)."""

from headq_spec.runs import (
    FORMAT_BITS,
    FORMAT_DEFAULTS,
    FORMATS,
    NUQ_BITS,
    SIDE_BITS,
    SUPPORTED_BITS,
    HeadQConfig,
    InterventionConfig,
    QuantConfig,
    RunSpec,
    ValuePolicyConfig,
)

__all__ = ["FORMATS", "FORMAT_BITS", "FORMAT_DEFAULTS", "NUQ_BITS", "SIDE_BITS", "SUPPORTED_BITS",
           "HeadQConfig", "InterventionConfig", "QuantConfig", "RunSpec", "ValuePolicyConfig"]
