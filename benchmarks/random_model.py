"""Random-weight Llama models of real shapes for the speed benchmarks (speed does not depend on the
weights; never report a quality figure from them)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {  # layers, hidden, q heads, kv heads, intermediate, vocab
    "smollm2": (30, 576, 9, 3, 1536, 49152),
    "llama3-8b": (32, 4096, 32, 8, 14336, 128256),
}


def random_llama(shape: str, *, layers: int | None = None, dtype: torch.dtype = torch.float32,
                 device: str = "cpu", max_positions: int = 16384) -> LlamaForCausalLM:
    """An eval-mode ``LlamaForCausalLM`` of ``shape`` (``layers`` of its layers; default all), seed 0."""
    n_layers, hidden, heads, kv, inter, vocab = SHAPES[shape]
    config = LlamaConfig(num_hidden_layers=layers or n_layers, hidden_size=hidden, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab,
                         max_position_embeddings=max_positions, attn_implementation="sdpa")
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
