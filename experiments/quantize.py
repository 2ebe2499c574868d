r"""Quantization (``recipes.ptq``): float / QAT training, calibration and the int8 path.

Prints test accuracy and stored bytes of the float, QAT, fake-quant and int8 models;
writes ``<workdir>/float/``, ``<workdir>/qat/`` and ``summary.json``.

Usage:
  python -m experiments.quantize --config experiments/configs/fashion_mnist_lenet5_ptq.py \
      --workdir runs/fm_lenet5_ptq
  python -m experiments.quantize --config experiments/configs/fashion_mnist_lenet5_qat4.py \
      --workdir runs/fm_lenet5_qat4 --float_dir runs/fm_lenet5_ptq/float
"""

from jaxopt_models.recipes import cli, ptq

cli.define_flags(
    ptq.default_config,
    float_dir=("string", None, "Reuse the float model saved in this directory (a train run)."),
)


def _run(config, workdir, **kwargs):
    return ptq.run(config, workdir, float_dir=cli.FLAGS.float_dir, **kwargs)


if __name__ == "__main__":
    cli.main(_run, ptq.print_summary)
