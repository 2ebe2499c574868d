r"""k-fold cross-validation (``recipes.crossval``) of a train config on its training split.

The config is a crossval config (``experiments/configs/digits_mlp_cv.py``: a train config's
fields plus ``crossval.k``, with ``dataset.validation_fraction=0``); a plain train config is
refused, as it has no ``crossval`` section (build one with ``configs.inherit``).

Usage:
  python -m experiments.crossval --config experiments/configs/digits_mlp_cv.py \
      --workdir runs/digits_cv --config.crossval.k=5
"""

from jaxopt_models.recipes import cli, crossval

cli.define_flags(crossval.default_config)


def _report(cv) -> None:
    print(f"{cv['k']}-fold cross-validation")
    for key in cv["mean"]:
        print(f"  {key:<16} {cv['mean'][key]:.4f} ± {cv['std'][key]:.4f}")


if __name__ == "__main__":
    cli.main(crossval.run, _report)
