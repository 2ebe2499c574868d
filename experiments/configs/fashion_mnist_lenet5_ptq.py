r"""LeNet-5 on Fashion-MNIST, then post-training int8 quantization (weights + activations).

Trains the float model, calibrates per-layer activation ranges on 2048 training images and
evaluates the float model, the fake-quant model and the real int8 path.

  python -m experiments.quantize --config experiments/configs/fashion_mnist_lenet5_ptq.py \
      --workdir runs/fm_lenet5_ptq
  # quick local try: --config=experiments/configs/fashion_mnist_lenet5_ptq.py:quick
"""

from experiments.configs import fashion_mnist_lenet5, inherit
from jaxopt_models.checks import check_one_of
from jaxopt_models.recipes import ptq

VARIANTS = ("", "quick")


def get_config(variant: str = ""):
    """The ptq recipe's config on ``fashion_mnist_lenet5``'s model, data and optimizer.

    ``variant="quick"``: that config's quick run, 512 calibration images.
    """
    check_one_of("variant", variant, VARIANTS)
    base = fashion_mnist_lenet5.get_config(variant)
    c = inherit(ptq.default_config(), base, drop=("pruning",))  # float training, no pruning
    if variant != "quick":
        c.num_epochs = 6
    c.compare_float = True
    c.ptq.enabled = True
    c.ptq.calibration_examples = 2048
    c.ptq.calibration = "minmax"
    c.ptq.act_bits = 8
    if variant == "quick":
        c.ptq.calibration_examples = 512
    return c
