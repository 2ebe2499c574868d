r"""MLP 64-128-64-10 on scikit-learn's 8x8 digits: the quick default.

python -m experiments.train --config experiments/configs/digits_mlp.py --workdir runs/digits_mlp
# quick local try: --config=experiments/configs/digits_mlp.py:quick
"""

from jaxopt_models.checks import check_one_of
from jaxopt_models.recipes import train

VARIANTS = ("", "quick")


def get_config(variant: str = ""):
    """The train recipe's config; ``variant="quick"`` trains 3 epochs."""
    check_one_of("variant", variant, VARIANTS)
    c = train.default_config()
    c.dataset.name = "digits"
    c.model.name = "mlp"
    c.model.features = (128, 64)
    c.model.kernel_init = "he_normal"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.batch_size = 64
    c.eval_batch_size = 512
    c.num_epochs = 30
    c.log_every_epochs = 5
    if variant == "quick":
        c.num_epochs = 3
        c.log_every_epochs = 1
    return c
