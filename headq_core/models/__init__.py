"""Model loading and the adapter (the one place that knows transformers internals)."""

from headq_core.models.loading import BUILTIN_SMOLLM2, LoadedModel, ModelInfo, load_model

__all__ = ["BUILTIN_SMOLLM2", "LoadedModel", "ModelInfo", "load_model"]
