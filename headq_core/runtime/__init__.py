"""The runtime room: the quantized ``HeadQCache`` that ``model.generate()`` reads, and the GPU
kernels with their pure-torch reference."""
