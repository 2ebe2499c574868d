r"""Lottery ticket on LeNet-300-100 / Fashion-MNIST: iterative magnitude pruning + rewinding.

Round 0 trains the dense net; every later round removes ``lottery.prune_fraction`` of the
surviving kernel weights (smallest magnitude, one global threshold), resets the survivors to
their initial values (``lottery.rewind_steps=0``: Frankle & Carbin 2019; ``k > 0``: to the
weights after ``k`` dense steps, Frankle et al. 2020) and retrains for ``num_epochs``
(Adam 1e-3, cosine). Five rounds of 40% reach 1 - 0.6^5 = 92.2% sparsity. With
``lottery.random_reinit`` every round's masks are also trained from a fresh random init,
the control that tells a winning ticket from a good mask.

  python -m experiments.lottery --config experiments/configs/fashion_mnist_lenet300_lottery.py \
      --workdir runs/fm_lenet300_lottery
  # quick local try: --config=experiments/configs/fashion_mnist_lenet300_lottery.py:quick
"""

import ml_collections
from ml_collections import config_dict

from experiments.configs import fashion_mnist_lenet300


def get_config(variant: str = ""):
    c = fashion_mnist_lenet300.get_config("quick" if variant == "quick" else "")
    c.num_epochs = 4  # per round
    c.lottery = ml_collections.ConfigDict()
    c.lottery.rounds = 5
    c.lottery.prune_fraction = 0.4
    c.lottery.scope = "global"
    c.lottery.rewind_steps = 0
    c.lottery.random_reinit = True
    c.lottery.reinit_seed = config_dict.placeholder(int)  # None: seed + 1
    if variant == "quick":
        c.num_epochs = 1
        c.lottery.rounds = 2
    elif variant:
        raise ValueError(f"unknown variant {variant!r}; use '' or 'quick'")
    return c
