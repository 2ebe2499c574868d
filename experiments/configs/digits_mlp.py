r"""MLP 64-128-64-10 on scikit-learn's 8x8 digits: the quick default (`make demo`).

python -m experiments.train --config experiments/configs/digits_mlp.py --workdir runs/digits_mlp
"""

from jaxopt_models.training import default_config


def get_config():
    c = default_config()
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
    return c
