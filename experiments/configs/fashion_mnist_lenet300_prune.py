r"""LeNet-300-100 on Fashion-MNIST with gradual magnitude pruning (Zhu & Gupta) to 90% / 95%.

The dense ``fashion_mnist_lenet300`` run (20 epochs, Adam 1e-3 cosine), with
``pruning.prune`` chained after Adam: the kernels' sparsity follows the cubic schedule from
0 at 10% of the steps to the target at 60% (masks recomputed every 100 steps; biases
dense); the last 40% of the steps fine-tune the sparse net. The target is spread over the
three kernels by ERK (90%: 92.0% / 77.0% / 0% for 784x300 / 300x100 / 100x10); uniform
per-layer sparsity (``--config.pruning.distribution=uniform``) also prunes the 1,000-weight
output layer at the target and costs about half a point more.

  python -m experiments.train --config experiments/configs/fashion_mnist_lenet300_prune.py \
      --workdir runs/fm_lenet300_prune90
  python -m experiments.train --config experiments/configs/fashion_mnist_lenet300_prune.py:95 \
      --workdir runs/fm_lenet300_prune95
  # any target: --config.pruning.sparsity=0.8; quick local try: ...prune.py:quick (or :95,quick)
"""

from experiments.configs import fashion_mnist_lenet300

VARIANTS = "'', 'quick', a target sparsity in percent such as '95', or both: '95,quick'"


def get_config(variant: str = ""):
    """Variants (comma-separated): a target sparsity in percent (``90``, ``95``), ``quick``."""
    tokens = [t for t in variant.split(",") if t]
    for t in tokens:
        if t != "quick" and not (t.isdigit() and 0 <= int(t) < 100):
            raise ValueError(
                f"unknown variant {t!r} in variant={variant!r}; allowed values: {VARIANTS}"
            )
    c = fashion_mnist_lenet300.get_config("quick" if "quick" in tokens else "")
    c.pruning.method = "magnitude"
    c.pruning.sparsity = 0.9
    c.pruning.schedule = "polynomial"
    c.pruning.begin_fraction = 0.1
    c.pruning.end_fraction = 0.6
    c.pruning.frequency = 100
    c.pruning.scope = "layer"
    c.pruning.distribution = "erk"
    for t in tokens:
        if t.isdigit():
            c.pruning.sparsity = int(t) / 100
    if "quick" in tokens:
        c.pruning.frequency = 10
    return c
