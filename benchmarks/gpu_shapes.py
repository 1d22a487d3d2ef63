"""The shapes every GPU benchmark section uses: Llama-3-8B attention (32 layers, 32 query / 8 KV
heads, head_dim 128, hidden 4096) and the quantized cache measured (2-bit keys per_channel G=32,
2-bit values per_token G=32, residual window 128, HeadQ r=8 with an 8-bit side code)."""

from headq_core.config import HeadQConfig, QuantConfig

HQ, HKV, D, LAYERS, HIDDEN = 32, 8, 128, 32, 4096
KEY = QuantConfig(bits=2, axis="per_channel", group_size=32, residual=128)
VALUE = QuantConfig(bits=2, axis="per_token", group_size=32, residual=128)
HEADQ = HeadQConfig(rank=8, side_bits=8)
