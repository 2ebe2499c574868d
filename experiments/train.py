r"""Trains one experiment config (``recipes.train``) and prints a results table.

Usage:
  python -m experiments.train --config experiments/configs/digits_mlp.py --workdir runs/digits
  python -m experiments.train --config experiments/configs/fashion_mnist_lenet5.py:quick \
      --workdir runs/fm_lenet5 --config.optimizer.name=momentum --config.num_epochs=5
  python -m experiments.train --config experiments/configs/digits_mlp.py --workdir runs/d \
      --config.checkpoint.every_steps=100 --resume      # continue after an interruption
  python -m experiments.train --config experiments/configs/digits_mlp.py --help  # every field
  python -m experiments.launch -n 2 -- -m experiments.train --config ... \
      --config.parallel=sharding                        # 2 local processes (jax.distributed)
"""

from jaxopt_models.recipes import cli, train

cli.define_flags(train.default_config)


def _report(result) -> None:
    _, results = result
    train.print_results(results)


if __name__ == "__main__":
    cli.main(train.run, _report)
