r"""LeNet-300-100 on Fashion-MNIST with binarized weights (BinaryConnect-style QAT).

Every kernel is ``sign(w) * mean|w|`` per output channel in the forward pass; the float
latent weights get the straight-through gradient. Stored packed at 1 bit per weight. The
float baseline has the same budget.

  python -m experiments.quantize --config experiments/configs/fashion_mnist_lenet300_binary.py \
      --workdir runs/fm_lenet300_binary
  # quick local try: --config=experiments/configs/fashion_mnist_lenet300_binary.py:quick
"""

from jaxopt_models.training import default_config


def get_config(variant: str = ""):
    c = default_config()
    c.dataset.name = "fashion_mnist"
    c.model.name = "mlp"
    c.model.features = (300, 100)
    c.model.kernel_init = "he_normal"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "cosine"
    c.batch_size = 128
    c.num_epochs = 10
    c.quantization.weight_mode = "binary"
    c.quantization.per_channel = True
    c.compare_float = True
    c.ptq = {"enabled": False}
    if variant == "quick":
        c.dataset.num_train = 6000
        c.dataset.num_test = 2000
        c.num_epochs = 2
    return c
