"""jaxopt_models: making neural networks smaller and faster in JAX.

Subpackages (import them directly, e.g. ``from jaxopt_models import pruning``):

- ``pruning``: scores, masks, sparsity schedules and the ``prune`` optax transform.
- ``quantization``: quantize / dequantize, fake-quant (QAT), PTQ and integer inference.
- ``distillation``: knowledge-distillation losses and train steps.
- ``compression``: weight sharing, low rank, slimming and the compressed file format.
- ``models``: Flax linen MLP, CNN and RNN classifiers.
- ``data``: IDX reader, Fashion-MNIST / digits / MNIST-1D sources, batching.
- ``training``: train state, optimizers, compiled steps, the training loop.
- ``metrics``: accuracy, precision / recall / F1, confusion matrix, k-fold CV.
"""

__version__ = "0.1.0"
