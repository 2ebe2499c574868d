r"""LeNet-5 (conv 6@5x5, conv 16@5x5, 120, 84) on Fashion-MNIST.

  python -m experiments.train --config experiments/configs/fashion_mnist_lenet5.py \
      --workdir runs/fm_lenet5
  # quick local try: --config=experiments/configs/fashion_mnist_lenet5.py:quick
"""

from jaxopt_models.checks import check_one_of
from jaxopt_models.recipes import train

VARIANTS = ("", "quick")


def get_config(variant: str = ""):
    """The train recipe's config; ``variant="quick"``: 2 epochs on 6000 images."""
    check_one_of("variant", variant, VARIANTS)
    c = train.default_config()
    c.dataset.name = "fashion_mnist"
    c.model.name = "lenet5"
    c.model.kernel_init = "he_normal"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.schedule = "cosine"
    c.batch_size = 128
    c.num_epochs = 15
    if variant == "quick":
        c.dataset.num_train = 6000
        c.dataset.num_test = 2000
        c.num_epochs = 2
    return c
