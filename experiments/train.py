r"""Trains one experiment config and prints a results table.

Usage:
  python -m experiments.train --config experiments/configs/digits_mlp.py --workdir runs/digits
  python -m experiments.train --config experiments/configs/fashion_mnist_lenet5.py \
      --workdir runs/fm_lenet5 --config.optimizer.name=momentum --config.num_epochs=5
  python -m experiments.train --config experiments/configs/digits_mlp.py --workdir runs/d \
      --config.checkpoint.every_steps=100 --resume      # continue after an interruption
  python -m experiments.launch -n 2 -- -m experiments.train --config ... \
      --config.parallel=sharding                        # 2 local processes (jax.distributed)
"""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxopt_models.training import print_results, train_and_evaluate
from jaxopt_models.training.distributed import initialize_distributed

FLAGS = flags.FLAGS
if "workdir" not in FLAGS:  # several experiment modules may share a process
    flags.DEFINE_string("workdir", None, "Directory for metrics.jsonl and results.json.")
if "config" not in FLAGS:  # several experiment modules may share a process
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
if "resume" not in FLAGS:  # several experiment modules may share a process
    flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in the workdir.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = FLAGS.config
    initialize_distributed(config)  # before any other JAX call; no-op for one process
    if FLAGS.resume:
        config.resume = True
    _, results = train_and_evaluate(config, FLAGS.workdir)
    if jax.process_index() == 0:
        print_results(results)


if __name__ == "__main__":
    app.run(main)
