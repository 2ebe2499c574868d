r"""Deep Compression on scikit-learn's 8x8 digits: the `make demo` pipeline (< 3 minutes).

MLP 64-128-64-10 trained dense, pruned gradually to 90% / 90% / 70% per layer, 5-bit
k-means weight sharing with centroid fine-tuning, distilled into an MLP 64-32-10
student, 8-bit quantization of the float tensors left, Huffman-coded file.

  python -m experiments.compress --config experiments/configs/digits_deep_compression.py \
      --workdir runs/demo
  # smoke test size: --config=experiments/configs/digits_deep_compression.py:quick
"""

from jaxopt_models.recipes import compress


def get_config(variant: str = ""):
    c = compress.default_config()
    c.dataset.name = "digits"
    c.model.name = "mlp"
    c.model.features = (128, 64)
    c.model.kernel_init = "he_normal"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "constant"
    c.batch_size = 64
    c.eval_batch_size = 512
    c.num_epochs = 30
    c.log_every_epochs = 10
    c.pruning.sparsity = 0.9
    c.pruning.layers = {"Dense_2": 0.7}
    c.stages.prune.epochs = 30
    c.stages.prune.optimizer.learning_rate = 1e-3
    c.sharing.bits = 5
    c.stages.share.epochs = 5
    c.stages.share.optimizer.learning_rate = 1e-4
    c.stages.student.enabled = True
    c.stages.student.epochs = 40
    c.stages.student.model = {"name": "mlp", "features": (32,), "kernel_init": "he_normal"}
    c.stages.student.optimizer.learning_rate = 3e-3
    c.distillation.temperature = 4.0
    c.distillation.alpha = 0.7
    c.ptq.weight_bits = 8
    c.ptq.bias_bits = 8
    c.sweep.sparsities = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
    c.sweep.bits = (1, 2, 3, 4, 5, 6, 8)
    c.latency.batch_size = 256
    if variant == "quick":
        c.num_epochs = 3
        c.log_every_epochs = 3
        c.stages.prune.epochs = 2
        c.stages.share.epochs = 1
        c.stages.student.epochs = 2
        c.sweep.sparsities = (0.5, 0.9)
        c.sweep.bits = (4,)
        c.latency.rounds = 2
        c.latency.iters = 1
    elif variant:
        raise ValueError(f"variant={variant!r} is not known; allowed values: ('', 'quick')")
    return c
