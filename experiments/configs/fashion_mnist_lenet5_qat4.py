r"""LeNet-5 on Fashion-MNIST with 4-bit weight quantization-aware training.

Kernels are fake-quantized to 4 bits (symmetric, one scale per output channel) inside the
loss with a straight-through gradient; the float baseline has the same budget.

  python -m experiments.quantize --config experiments/configs/fashion_mnist_lenet5_qat4.py \
      --workdir runs/fm_lenet5_qat4 --float_dir runs/fm_lenet5_ptq/float
  # quick local try: --config=experiments/configs/fashion_mnist_lenet5_qat4.py:quick
"""

from experiments.configs import fashion_mnist_lenet5_ptq

VARIANTS = fashion_mnist_lenet5_ptq.VARIANTS


def get_config(variant: str = ""):
    """``fashion_mnist_lenet5_ptq`` with 4-bit weight QAT and no int8 path."""
    c = fashion_mnist_lenet5_ptq.get_config(variant)
    c.quantization.weight_bits = 4
    c.quantization.per_channel = True
    c.ptq.enabled = False
    return c
