r"""LeNet-5 on Fashion-MNIST with 4-bit weight quantization-aware training.

Kernels are fake-quantized to 4 bits (symmetric, one scale per output channel) inside the
loss with a straight-through gradient; the float baseline has the same budget.

  python -m experiments.quantize --config experiments/configs/fashion_mnist_lenet5_qat4.py \
      --workdir runs/fm_lenet5_qat4 --float_dir runs/fm_lenet5_ptq/float
  # quick local try: --config=experiments/configs/fashion_mnist_lenet5_qat4.py:quick
"""

import importlib.util
import os


def _base(variant: str):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion_mnist_lenet5_ptq.py")
    spec = importlib.util.spec_from_file_location("fashion_mnist_lenet5_ptq", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(variant)


def get_config(variant: str = ""):
    c = _base(variant)
    c.quantization.weight_bits = 4
    c.quantization.per_channel = True
    c.ptq.enabled = False
    return c
