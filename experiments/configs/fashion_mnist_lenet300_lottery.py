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

from experiments.configs import fashion_mnist_lenet300, inherit
from jaxopt_models.checks import check_one_of
from jaxopt_models.recipes import lottery

VARIANTS = ("", "quick")


def get_config(variant: str = ""):
    """The lottery recipe's config on ``fashion_mnist_lenet300``'s model, data and optimizer.

    ``variant="quick"``: that config's quick data, one epoch per round, two rounds.
    """
    check_one_of("variant", variant, VARIANTS)
    base = fashion_mnist_lenet300.get_config(variant)
    c = inherit(lottery.default_config(), base, drop=("pruning",))  # pruning: the rounds
    c.num_epochs = 4  # per round
    c.lottery.rounds = 5
    c.lottery.prune_fraction = 0.4
    c.lottery.scope = "global"
    c.lottery.rewind_steps = 0
    c.lottery.random_reinit = True
    c.lottery.reinit_seed = None  # seed + 1
    if variant == "quick":
        c.num_epochs = 1
        c.lottery.rounds = 2
    return c
