r"""One-shot compression without retraining (``recipes.one_shot``): magnitude, Wanda,
SparseGPT, RTN, GPTQ, AWQ, SmoothQuant on a trained model, one table row per method.

Usage:
  python -m experiments.one_shot \
      --config experiments/configs/fashion_mnist_lenet300_one_shot.py --workdir runs/fm_one_shot
  python -m experiments.one_shot \
      --config experiments/configs/fashion_mnist_lenet300_one_shot.py:quick \
      --workdir runs/fm_one_shot_quick --config.one_shot.sparsity=0.5
  python -m experiments.one_shot \
      --config experiments/configs/fashion_mnist_lenet300_one_shot.py \
      --workdir runs/fm_one_shot_b --config.source_dir=runs/fm_one_shot/dense  # reuse a model
  python -m experiments.one_shot \
      --config experiments/configs/fashion_mnist_lenet300_one_shot.py --help  # every field
"""

from jaxopt_models.recipes import cli, one_shot

cli.define_flags(one_shot.default_config)


if __name__ == "__main__":
    cli.main(one_shot.run, one_shot.print_table)
