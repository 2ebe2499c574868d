r"""LeNet-5 on Fashion-MNIST, then post-training int8 quantization (weights + activations).

Trains the float model, calibrates per-layer activation ranges on 2048 training images and
evaluates the float model, the fake-quant model and the real int8 path.

  python -m experiments.quantize --config experiments/configs/fashion_mnist_lenet5_ptq.py \
      --workdir runs/fm_lenet5_ptq
  # quick local try: --config=experiments/configs/fashion_mnist_lenet5_ptq.py:quick
"""

import ml_collections

from experiments.configs import fashion_mnist_lenet5


def ptq_config(enabled: bool = True) -> ml_collections.ConfigDict:
    """The ``ptq`` section read by ``experiments/quantize.py``."""
    c = ml_collections.ConfigDict()
    c.enabled = enabled
    c.calibration_examples = 2048
    c.calibration = "minmax"
    c.act_bits = 8
    return c


def get_config(variant: str = ""):
    c = fashion_mnist_lenet5.get_config(variant)
    if variant != "quick":
        c.num_epochs = 6
    c.compare_float = True
    c.ptq = ptq_config()
    if variant == "quick":
        c.ptq.calibration_examples = 512
    return c
