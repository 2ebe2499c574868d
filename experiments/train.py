r"""Trains one experiment config and prints a results table.

Usage:
  python -m experiments.train --config experiments/configs/digits_mlp.py --workdir runs/digits
  python -m experiments.train --config experiments/configs/fashion_mnist_lenet5.py \
      --workdir runs/fm_lenet5 --config.optimizer.name=momentum --config.num_epochs=5
"""

from absl import app, flags, logging
from ml_collections import config_flags

from jaxopt_models.training import print_results, train_and_evaluate

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for metrics.jsonl and results.json.")
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    _, results = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    print_results(results)


if __name__ == "__main__":
    app.run(main)
