"""Numeric limits shared by the job spec, the results document and the store (docs/contracts.md)."""

INT32_MAX = 2**31 - 1  # the integer columns are 32-bit on PostgreSQL
MAX_SEED = 2**32 - 1  # seeds of a job and of a random basis or intervention
MAX_TOKENS = 2**30  # tokens one job reads (dataset.max_tokens); token counts in a results document
MAX_WINDOW = 2**20  # tokens in one window, in one quantizer group and in the full-precision residual
MAX_WINDOWS = MAX_TOKENS // 2  # windows one job reads (a window has at least 2 tokens)
MAX_BATCH = 1024  # windows in one forward pass
MAX_RANK = 4096  # directions a calibration keeps, a HeadQ run codes or an intervention perturbs
MAX_BITS = 16  # the widest code: fp16
