"""The method room: what a KV cache stores and how HeadQ corrects it. Quantizers and bit packing,
the cache formats engines ship (fp8, llama.cpp blocks, symmetric int, Hadamard rotation), the decode
rule (which tokens are read quantized), HeadQ side codes and bases, the A² value policy, the
null-space intervention, and the effective-bits budget."""
