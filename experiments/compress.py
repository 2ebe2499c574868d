r"""Runs the compression pipeline of one config and prints the per-stage table.

dense -> gradual pruning -> weight sharing + centroid fine-tuning -> (student) ->
quantization -> Huffman-coded file, loaded back and checked on the whole test set.

Usage:
  python -m experiments.compress --config experiments/configs/digits_deep_compression.py \
      --workdir runs/demo
  python -m experiments.compress \
      --config experiments/configs/fashion_mnist_lenet300_deep_compression.py \
      --workdir runs/fm_lenet300_dc
  python -m experiments.compress --config experiments/configs/digits_deep_compression.py:quick \
      --workdir runs/demo_quick --config.share.bits=4
"""

from absl import app, flags, logging
from ml_collections import config_flags

from jaxopt_models.compression import format_size_report
from jaxopt_models.training import compress_and_evaluate

FLAGS = flags.FLAGS
if "workdir" not in FLAGS:  # several experiment modules may share a process
    flags.DEFINE_string("workdir", None, "Directory for the table, results, files and plots.")
if "config" not in FLAGS:  # several experiment modules may share a process
    config_flags.DEFINE_config_file("config", None, "Compression config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    _, results = compress_and_evaluate(FLAGS.config, FLAGS.workdir)
    print()
    print(format_size_report(results["size_report"]))
    print()
    print(f"{results['model']} on {results['dataset']}: float32 {results['float32_bytes']:,} bytes")
    print(results["table"], end="")
    rt = results["roundtrip"]
    print(
        f"load_compressed({rt['path']}): predictions identical on all {rt['num_test']} "
        f"test examples: {rt['predictions_identical']}"
    )


if __name__ == "__main__":
    app.run(main)
