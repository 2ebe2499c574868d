r"""LeNet-300-100 (MLP 784-300-100-10) on Fashion-MNIST.

  python -m experiments.train --config experiments/configs/fashion_mnist_lenet300.py \
      --workdir runs/fm_lenet300
  # quick local try: --config=experiments/configs/fashion_mnist_lenet300.py:quick
"""

from jaxopt_models.checks import check_one_of
from jaxopt_models.recipes import train

VARIANTS = ("", "quick")


def get_config(variant: str = ""):
    """The train recipe's config; ``variant="quick"``: 2 epochs on 6000 images."""
    check_one_of("variant", variant, VARIANTS)
    c = train.default_config()
    c.dataset.name = "fashion_mnist"
    c.model.name = "mlp"
    c.model.features = (300, 100)
    c.model.kernel_init = "he_normal"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "cosine"
    c.batch_size = 128
    c.num_epochs = 20
    if variant == "quick":
        c.dataset.num_train = 6000
        c.dataset.num_test = 2000
        c.num_epochs = 2
    return c
