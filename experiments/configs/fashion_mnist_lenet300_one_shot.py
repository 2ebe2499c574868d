r"""One-shot compression of LeNet-300-100 on Fashion-MNIST, no retraining.

Trains the dense MLP 784-300-100-10 as ``fashion_mnist_lenet300.py`` does (20 epochs of
Adam, cosine schedule), then, each from the dense model: prunes it to 70% with magnitude,
Wanda and SparseGPT, and to 2:4 with SparseGPT; quantizes it with RTN and GPTQ (4 and 3 bits,
one grid per output column), AWQ (3 bits) and SmoothQuant (W8A8); prunes to 50% and
quantizes to 4 bits in one SparseGPT sweep. Every row is evaluated on the test split. The
data-aware methods read the layer inputs of 4096 training images, layer by layer
(sequential). The classifier head (``Dense_2``, 1,000 of 266,200 kernel weights) stays float
in every method, as the LLM papers leave the output head dense: with SparseGPT at 70%,
pruning it alone costs more accuracy than pruning the other 99.6% of the weights.

  python -m experiments.one_shot \
      --config experiments/configs/fashion_mnist_lenet300_one_shot.py --workdir runs/fm_one_shot
  # quick local try: --config=experiments/configs/fashion_mnist_lenet300_one_shot.py:quick
  # the head pruned and quantized too, on the model trained above:
  #   --config=experiments/configs/fashion_mnist_lenet300_one_shot.py:all_layers \
  #   --config.source_dir=runs/fm_one_shot/dense
"""

from experiments.configs import fashion_mnist_lenet300, inherit
from jaxopt_models.checks import check_one_of
from jaxopt_models.recipes import one_shot

VARIANTS = ("", "quick", "all_layers")


def get_config(variant: str = ""):
    """The one-shot recipe's config; ``variant="quick"``: 2 epochs on 6000 images;
    ``variant="all_layers"``: the classifier head is compressed like the other layers."""
    check_one_of("variant", variant, VARIANTS)
    base = fashion_mnist_lenet300.get_config("quick" if variant == "quick" else "")
    # the dense model trains as fashion_mnist_lenet300.py's does (no pruning, float)
    c = inherit(one_shot.default_config(), base, drop=("pruning", "quantization"))
    c.plots = False
    c.one_shot.methods = (
        "magnitude",
        "wanda",
        "sparsegpt",
        "sparsegpt n_m=2:4",
        "rtn",
        "gptq",
        "rtn bits=3",
        "gptq bits=3",
        "awq bits=3",
        "sparsegpt+gptq sparsity=0.5",
        "smoothquant",
    )
    c.one_shot.sparsity = 0.7
    c.one_shot.bits = 4
    c.one_shot.calibration_examples = 4096
    c.one_shot.calibration_batch_size = 1024
    c.one_shot.layers = {"Dense_2": "skip"}
    if variant == "all_layers":
        c.one_shot.layers = {}
    if variant == "quick":
        c.one_shot.methods = ("magnitude", "sparsegpt", "rtn", "gptq")
        c.one_shot.calibration_examples = 512
        c.one_shot.calibration_batch_size = 256
    return c
