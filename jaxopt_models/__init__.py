"""jaxopt_models: making neural networks smaller and faster in JAX.

Subpackages (import them directly, e.g. ``from jaxopt_models import pruning``), by floor:

- ``tree``: leaf paths, the kernel filter and the per-layer rule convention.
- ``pruning``: scores, masks, schedules, the ``prune`` optax transform, SparseGPT and Wanda.
- ``quantization``: quantize / dequantize, fake-quant (QAT), PTQ, GPTQ, AWQ, SmoothQuant.
- ``distillation``: knowledge-distillation losses, the frozen ``Teacher``.
- ``compression``: weight sharing, low rank, slimming and the compressed file format.
- ``models``: MLP, CNN, RNN and transformer models, generation, int8 / weight-only paths,
  calibration and one-shot compression of whole models, checkpoint import.
- ``data``: image and text sources, tokenizers, batching, splits, augmentation.
- ``training``: the engine: train state, compiled steps, parallelism, checkpoints, ``fit``.
- ``metrics``: classification and language-model metrics.
- ``recipes``: ``default_config()`` + ``run(config, workdir)`` workflows built on all of it.
"""

__version__ = "0.1.0"
