"""The cross-validation recipe: k-fold CV of a train config on its training split.

The test split is never used: each fold trains on k-1 folds of the training split and is
scored on the held-out fold (the fold plays the validation split's role).
"""

import os
from typing import Any

import ml_collections
import numpy as np

from jaxopt_models.data import kfold_indices
from jaxopt_models.recipes import build
from jaxopt_models.recipes import config as schema
from jaxopt_models.recipes.train import default_config as train_config
from jaxopt_models.recipes.train import train
from jaxopt_models.training import atomic_write_json, initialize_distributed

CV_FILE = "cv.json"
KEYS = ("accuracy", "macro_precision", "macro_recall", "macro_f1")


def default_config() -> ml_collections.ConfigDict:
    """The train recipe's config plus ``crossval.k`` (folds, >= 2).

    ``dataset.validation_fraction`` must be 0 here: the folds are the held-out data.
    """
    c = train_config()
    c.dataset.validation_fraction = 0.0
    c.crossval = ml_collections.ConfigDict({"k": 5})
    return c


def run(config, workdir: str | None, *, dataset=None, overwrite: bool = False) -> dict[str, Any]:
    """Trains one model per fold; returns ``{"k", "folds", "mean", "std"}`` over ``KEYS``.

    Example:
      >>> cv = run(config, "runs/digits_cv")
      >>> cv["mean"]["accuracy"], cv["std"]["accuracy"]
    """
    with build.config_errors():
        schema.check_fields(config, default_config(), "crossval")
        k = config.crossval.k
        if config.dataset.validation_fraction != 0:
            raise ValueError(
                f"config.dataset.validation_fraction={config.dataset.validation_fraction!r} "
                "must be 0 for cross-validation (each fold is the held-out data)"
            )
        build.prepare_workdir(workdir, overwrite=overwrite, resume=False, marker=CV_FILE)
        initialize_distributed(config)
        data = build.load_data(config, dataset)
        kfold_indices(len(data.x_train), k, seed=int(config.seed))
    folds = []
    for i, (tr, va) in enumerate(kfold_indices(len(data.x_train), k, seed=int(config.seed))):
        fold = data._replace(
            x_train=data.x_train[tr],
            y_train=data.y_train[tr],
            x_val=data.x_train[va][:0],
            y_val=data.y_train[va][:0],
            x_test=data.x_train[va],
            y_test=data.y_train[va],
        )
        out = None if workdir is None else os.path.join(workdir, f"fold_{i}")
        _, results = train(config, fold, out, description=f"fold {i}")
        folds.append({key: results[f"test_{key}"] for key in KEYS})
    mean = {key: float(np.mean([f[key] for f in folds])) for key in KEYS}
    std = {key: float(np.std([f[key] for f in folds], ddof=1)) for key in KEYS}
    cv = {"k": k, "folds": folds, "mean": mean, "std": std}
    if workdir is not None:
        atomic_write_json(os.path.join(workdir, CV_FILE), cv)
    return cv
