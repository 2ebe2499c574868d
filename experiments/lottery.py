r"""Lottery tickets (``recipes.lottery``): iterative magnitude pruning with rewinding.

Prints test accuracy against sparsity per round (and the random re-init control); writes
``<workdir>/ticket/round_<r>/``, ``<workdir>/reinit/round_<r>/`` and ``summary.json``.

Usage:
  python -m experiments.lottery --config experiments/configs/fashion_mnist_lenet300_lottery.py \
      --workdir runs/fm_lenet300_lottery
  # rewind to the weights after 500 dense steps: --config.lottery.rewind_steps=500
"""

from jaxopt_models.recipes import cli, lottery

cli.define_flags(lottery.default_config)

if __name__ == "__main__":
    cli.main(lottery.run, lottery.print_summary)
