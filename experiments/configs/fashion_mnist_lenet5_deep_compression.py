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

from experiments.configs import fashion_mnist_lenet300_deep_compression as lenet300_dc

VARIANTS = lenet300_dc.VARIANTS


def get_config(variant: str = ""):
    """``fashion_mnist_lenet300_deep_compression``'s data, optimizer and stages on LeNet-5."""
    c = lenet300_dc.get_config()  # the same data, optimizer and stages; LeNet-5 settings:
    c.model.name = "lenet5_caffe"
    c.num_epochs = 4
    c.log_every_epochs = 2
    c.stages.prune.epochs = 5
    c.pruning.layers = {"Conv_0": 0.34, "Conv_1": 0.88, "Dense_0": 0.93, "Dense_1": 0.81}
    c.stages.prune.optimizer.learning_rate = 1e-3
    c.sharing.layers = {"Conv": 8}
    c.stages.share.epochs = 1
    c.sweep.sparsities = (0.5, 0.7, 0.8, 0.9, 0.95)
    c.sweep.bits = (2, 3, 4, 5, 6, 8)
    c.latency.rounds = 5
    c.latency.iters = 2
    return lenet300_dc.apply_variant(c, variant, quick_num_train=1000)
