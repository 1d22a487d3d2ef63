"""The method room: what a KV cache stores and how HeadQ corrects it. Quantizers and bit packing,
the decode rule (which tokens are read quantized), HeadQ side codes and bases, the A² value
policy, the null-space intervention, and the effective-bits budget."""
