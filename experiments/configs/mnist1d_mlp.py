r"""MLP on MNIST-1D (generated locally, 4000 train / 1000 test).

python -m experiments.train --config experiments/configs/mnist1d_mlp.py --workdir runs/m1d_mlp
"""

from jaxopt_models.training import default_config


def get_config(variant: str = ""):
    c = default_config()
    c.dataset.name = "mnist1d"
    c.model.name = "mlp"
    c.model.features = (100, 100)
    c.model.kernel_init = "he_normal"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 0.0
    c.batch_size = 100
    c.num_epochs = 60
    c.log_every_epochs = 10
    if variant == "quick":
        c.num_epochs = 3
    return c
