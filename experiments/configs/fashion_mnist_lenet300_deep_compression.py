r"""Deep Compression of LeNet-300-100 on Fashion-MNIST (target: >= 40x, accuracy within 0.5).

Han et al. (2016) prune LeNet-300-100 to 8% of its weights (92% / 91% / 74% per layer)
and share 6-bit codes for 40x on MNIST. Here: 20 dense epochs, then 20 epochs of gradual
pruning (polynomial schedule over the first 60%, Adam 2e-3 with cosine decay) to
93% / 92% / 75%, 5-bit k-means sharing with 2 epochs of centroid fine-tuning, 8-bit
biases, Huffman-coded file.

  python -m experiments.compress \
      --config experiments/configs/fashion_mnist_lenet300_deep_compression.py \
      --workdir runs/fm_lenet300_dc
  # quick local try: --config=experiments/configs/fashion_mnist_lenet300_deep_compression.py:quick
"""

from jaxopt_models.checks import check_one_of
from jaxopt_models.recipes import compress

VARIANTS = ("", "quick")


def get_config(variant: str = ""):
    """The compress recipe's config; ``variant="quick"``: a minute-long smoke run."""
    check_one_of("variant", variant, VARIANTS)
    c = compress.default_config()
    c.dataset.name = "fashion_mnist"
    c.model.name = "lenet300_100"
    c.model.kernel_init = "he_normal"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "cosine"
    c.batch_size = 128
    c.num_epochs = 20
    c.log_every_epochs = 5
    c.pruning.method = "magnitude"
    c.pruning.layers = {"Dense_0": 0.93, "Dense_1": 0.92, "Dense_2": 0.75}
    c.pruning.end_fraction = 0.6
    c.stages.prune.epochs = 20
    c.stages.prune.optimizer.learning_rate = 2e-3  # 3e-4: 88.9%, 1e-3: 89.5%, 3e-3: 89.5%
    c.stages.prune.optimizer.schedule = "cosine"
    c.sharing.bits = 5
    c.stages.share.epochs = 2
    c.stages.share.optimizer.learning_rate = 1e-4
    c.ptq.bias_bits = 8
    c.sweep.sparsities = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
    c.sweep.bits = (1, 2, 3, 4, 5, 6, 8)
    return apply_variant(c, variant, quick_num_train=2000)


def apply_variant(c, variant: str, *, quick_num_train: int):
    """``variant="quick"``: a minute-long smoke run on ``quick_num_train`` images."""
    check_one_of("variant", variant, VARIANTS)
    if variant == "quick":
        c.dataset.num_train = quick_num_train
        c.dataset.num_test = 500
        c.num_epochs = 1
        c.stages.prune.epochs = 1
        c.stages.share.epochs = 1
        c.sweep.sparsities = (0.9,)
        c.sweep.bits = (4,)
        c.latency.rounds = 2
        c.latency.iters = 1
    return c
