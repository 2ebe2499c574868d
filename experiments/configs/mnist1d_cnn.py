r"""The MNIST-1D baseline CNN (three stride-2 convs of 25 channels).

python -m experiments.train --config experiments/configs/mnist1d_cnn.py --workdir runs/m1d_cnn
"""

from jaxopt_models.training import default_config


def get_config(variant: str = ""):
    c = default_config()
    c.dataset.name = "mnist1d"
    c.model.name = "mnist1d_cnn"
    c.model.kernel_init = "he_normal"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-2
    c.optimizer.schedule = "cosine"
    c.batch_size = 100
    c.num_epochs = 150
    c.log_every_epochs = 25
    if variant == "quick":
        c.num_epochs = 3
    return c
