r"""5-fold cross-validation of the ``digits_mlp`` config on the digits training split.

The crossval recipe's config (``crossval.k`` folds, no validation split: each fold is the
held-out data) with every field of ``digits_mlp.py``; the test split is never used.

  python -m experiments.crossval --config experiments/configs/digits_mlp_cv.py \
      --workdir runs/digits_cv
  # other fold counts: --config.crossval.k=10
  # quick local try: --config=experiments/configs/digits_mlp_cv.py:quick
"""

from experiments.configs import digits_mlp, inherit
from jaxopt_models.checks import check_one_of
from jaxopt_models.recipes import crossval

VARIANTS = ("", "quick")


def get_config(variant: str = ""):
    """``variant="quick"``: the quick ``digits_mlp`` run on 3 folds."""
    check_one_of("variant", variant, VARIANTS)
    c = inherit(crossval.default_config(), digits_mlp.get_config(variant))
    c.dataset.validation_fraction = 0.0  # the folds are the held-out data
    c.crossval.k = 5
    if variant == "quick":
        c.crossval.k = 3
    return c
