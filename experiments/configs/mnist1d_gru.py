r"""GRU classifier on MNIST-1D signals read one value per time step.

python -m experiments.train --config experiments/configs/mnist1d_gru.py --workdir runs/m1d_gru
# quick local try: --config=experiments/configs/mnist1d_gru.py:quick
"""

from jaxopt_models.checks import check_one_of
from jaxopt_models.recipes import train

VARIANTS = ("", "quick")


def get_config(variant: str = ""):
    """The train recipe's config; ``variant="quick"``: 2 epochs."""
    check_one_of("variant", variant, VARIANTS)
    c = train.default_config()
    c.dataset.name = "mnist1d"
    c.model.name = "gru"
    c.model.hidden_size = 128
    c.model.kernel_init = "xavier_uniform"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 3e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.grad_clip_norm = 1.0
    c.batch_size = 100
    c.num_epochs = 60
    c.log_every_epochs = 10
    if variant == "quick":
        c.num_epochs = 2
    return c
