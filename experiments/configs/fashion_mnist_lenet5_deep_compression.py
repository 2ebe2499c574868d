r"""Deep Compression of LeNet-5 (Caffe's 20-50-500) on Fashion-MNIST (target: >= 39x).

Han et al. (2016) keep 66% / 12% / 8% / 19% of conv1 / conv2 / fc1 / fc2 with 8-bit conv
and 5-bit fc codes for 39x on MNIST. Here: 4 dense epochs, 5 epochs of gradual pruning
to 34% / 88% / 93% / 81% sparsity, 8-bit conv and 5-bit fc k-means sharing with one
epoch of centroid fine-tuning, 8-bit biases, Huffman-coded file. (The CPU runs about
3 minutes per epoch, so the schedule is short.)

  python -m experiments.compress \
      --config experiments/configs/fashion_mnist_lenet5_deep_compression.py \
      --workdir runs/fm_lenet5_dc
  # quick local try: --config=experiments/configs/fashion_mnist_lenet5_deep_compression.py:quick
"""

from jaxopt_models.training import default_compress_config


def get_config(variant: str = ""):
    c = default_compress_config()
    c.dataset.name = "fashion_mnist"
    c.model.name = "lenet5_caffe"
    c.model.kernel_init = "he_normal"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "cosine"
    c.batch_size = 128
    c.num_epochs = 4
    c.log_every_epochs = 2
    c.prune.epochs = 5
    c.prune.layers = {"Conv_0": 0.34, "Conv_1": 0.88, "Dense_0": 0.93, "Dense_1": 0.81}
    c.prune.ramp_fraction = 0.6
    c.prune.optimizer.learning_rate = 1e-3
    c.prune.optimizer.schedule = "cosine"
    c.share.bits = 5
    c.share.layers = {"Conv": 8}
    c.share.epochs = 1
    c.share.optimizer.learning_rate = 1e-4
    c.quantize.bias_bits = 8
    c.sweep.sparsities = (0.5, 0.7, 0.8, 0.9, 0.95)
    c.sweep.bits = (2, 3, 4, 5, 6, 8)
    c.latency.rounds = 5
    c.latency.iters = 2
    if variant == "quick":
        c.dataset.num_train = 1000
        c.dataset.num_test = 500
        c.num_epochs = 1
        c.prune.epochs = 1
        c.share.epochs = 1
        c.sweep.sparsities = (0.9,)
        c.sweep.bits = (4,)
        c.latency.rounds = 2
        c.latency.iters = 1
    elif variant:
        raise ValueError(f"variant={variant!r} is not known; allowed: '', 'quick'")
    return c
