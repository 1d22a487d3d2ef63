"""The runtime room: the quantized ``HeadQCache`` that ``model.generate()`` reads (``cache``; its
per-side storage in ``sides``, which layers slide in ``layer_types``, sizes by formula in
``footprint``), and the GPU kernels with their pure-torch reference."""
