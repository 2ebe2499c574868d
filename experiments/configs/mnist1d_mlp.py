r"""MLP on MNIST-1D (generated locally, 4000 train / 1000 test).

python -m experiments.train --config experiments/configs/mnist1d_mlp.py --workdir runs/m1d_mlp
# quick local try: --config=experiments/configs/mnist1d_mlp.py:quick
"""

from jaxopt_models.checks import check_one_of
from jaxopt_models.recipes import train

VARIANTS = ("", "quick")


def get_config(variant: str = ""):
    """The train recipe's config; ``variant="quick"``: 3 epochs."""
    check_one_of("variant", variant, VARIANTS)
    c = train.default_config()
    c.dataset.name = "mnist1d"
    c.model.name = "mlp"
    c.model.features = (100, 100)
    c.model.kernel_init = "he_normal"
    c.model.dropout_rate = 0.3
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 3e-3
    c.optimizer.schedule = "cosine"
    c.batch_size = 100
    c.num_epochs = 150
    c.log_every_epochs = 25
    if variant == "quick":
        c.num_epochs = 3
    return c
