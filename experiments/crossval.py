r"""k-fold cross-validation of an experiment config on its training split.

Usage:
  python -m experiments.crossval --config experiments/configs/digits_mlp.py --k 5 \
      --workdir runs/digits_cv
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from jaxopt_models.metrics import kfold_cross_validate
from jaxopt_models.training import atomic_write_json

FLAGS = flags.FLAGS
if "workdir" not in FLAGS:  # several experiment modules may share a process
    flags.DEFINE_string("workdir", None, "Directory for per-fold outputs and cv.json.")
if "k" not in FLAGS:  # several experiment modules may share a process
    flags.DEFINE_integer("k", 5, "Number of folds (>= 2).")
if "config" not in FLAGS:  # several experiment modules may share a process
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    cv = kfold_cross_validate(FLAGS.config, FLAGS.k, FLAGS.workdir)
    atomic_write_json(os.path.join(FLAGS.workdir, "cv.json"), cv)
    print(
        f"{FLAGS.k}-fold cross-validation ({FLAGS.config.model.name} / {FLAGS.config.dataset.name})"
    )
    for key in cv["mean"]:
        print(f"  {key:<16} {cv['mean'][key]:.4f} ± {cv['std'][key]:.4f}")


if __name__ == "__main__":
    app.run(main)
