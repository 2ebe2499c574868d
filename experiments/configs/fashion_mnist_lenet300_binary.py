r"""LeNet-300-100 on Fashion-MNIST with binarized weights (BinaryConnect-style QAT).

Every kernel is ``sign(w) * mean|w|`` per output channel in the forward pass; the float
latent weights get the straight-through gradient. Stored packed at 1 bit per weight. The
float baseline has the same budget.

  python -m experiments.quantize --config experiments/configs/fashion_mnist_lenet300_binary.py \
      --workdir runs/fm_lenet300_binary
  # quick local try: --config=experiments/configs/fashion_mnist_lenet300_binary.py:quick
"""

from experiments.configs import fashion_mnist_lenet300, inherit
from jaxopt_models.checks import check_one_of
from jaxopt_models.recipes import ptq

VARIANTS = ("", "quick")


def get_config(variant: str = ""):
    """The ptq recipe's config on ``fashion_mnist_lenet300``'s model, data and optimizer."""
    check_one_of("variant", variant, VARIANTS)
    base = fashion_mnist_lenet300.get_config(variant)
    c = inherit(ptq.default_config(), base, drop=("pruning",))  # QAT only, no pruning
    if variant != "quick":
        c.num_epochs = 10
    c.quantization.weight_mode = "binary"
    c.quantization.per_channel = True
    c.compare_float = True
    c.ptq.enabled = False
    return c
