"""The base experiment config every ``experiments/configs/*.py`` starts from."""

import ml_collections
from ml_collections import config_dict

from jaxopt_models.data.augment import AugmentFn, make_augment
from jaxopt_models.training.pruning_config import default_pruning_config
from jaxopt_models.training.quant_config import default_quantization_config


def default_config() -> ml_collections.ConfigDict:
    """Returns the base experiment ``ConfigDict`` with every field the loop reads.

    Fields:
      seed: PRNG seed for init, dropout and data order.
      dataset.name / data_dir / num_train / num_test: what ``data.get_dataset`` loads.
      model.name and model.*: ``models.get_model(name, **rest)`` (``num_classes`` is taken
        from the dataset when not set).
      optimizer.*: see ``training.make_optimizer``.
      batch_size, eval_batch_size, num_epochs, label_smoothing.
      augment.shift / flip / mode: per-example training augmentation inside the compiled
        step (``data.make_augment``): random shifts of up to ``shift`` pixels (0: none),
        horizontal flips, border fill; off by default. See ``augment_from_config``.
      log_every_epochs: evaluate on the test set every this many epochs (and at the end).
      sync_every_steps: block on the device at least this often (bounded queues).
      progress: show a progress bar.
      parallel: ``"none"`` | ``"sharding"`` | ``"pmap"`` (see ``training.make_train_step``).
      checkpoint.every_steps: save every this many steps and at the end (0: never).
      checkpoint.keep: how many recent checkpoints to keep.
      resume: continue from the latest checkpoint in ``<workdir>/checkpoints``.
      nan_policy: ``"error"`` (stop naming the step; the last good checkpoint stays) or
        ``"skip"`` (undo non-finite steps and go on).
      distributed.*: ``jax.distributed`` settings (``training.initialize_distributed``):
        ``coordinator_address``, ``num_processes``, ``process_id`` (else from the
        environment) or ``auto`` (TPU pod / Slurm / Open MPI detection).
      pruning.*: pruning during training, off by default (``method="none"``); see
        ``training.default_pruning_config``.
      quantization.*: quantization-aware training (weights / activations), float by
        default; see ``training.default_quantization_config``.

    Example:
      >>> config = default_config()
      >>> config.model.name = "lenet5"
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "digits"
    c.dataset.data_dir = config_dict.placeholder(str)
    c.dataset.num_train = config_dict.placeholder(int)
    c.dataset.num_test = config_dict.placeholder(int)
    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "constant"
    c.optimizer.warmup_steps = 0
    c.optimizer.momentum = 0.9
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.0
    c.optimizer.grad_clip_norm = 0.0
    c.batch_size = 128
    c.eval_batch_size = 1000
    c.num_epochs = 10
    c.label_smoothing = 0.0
    c.augment = ml_collections.ConfigDict()
    c.augment.shift = 0
    c.augment.flip = False
    c.augment.mode = "edge"
    c.log_every_epochs = 1
    c.sync_every_steps = 25
    c.progress = True
    c.parallel = "none"
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 0
    c.checkpoint.keep = 3
    c.resume = False
    c.nan_policy = "error"
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = config_dict.placeholder(str)
    c.distributed.num_processes = config_dict.placeholder(int)
    c.distributed.process_id = config_dict.placeholder(int)
    c.distributed.auto = False
    c.pruning = default_pruning_config()
    c.quantization = default_quantization_config()
    return c


def augment_from_config(config) -> AugmentFn | None:
    """The train-time augmentation of ``config.augment`` (``None``: off or no such field).

    Raises:
      ValueError: a bad ``config.augment.shift`` / ``flip`` / ``mode`` (the message names
        the field and the allowed values).
    """
    aug = config.get("augment")
    if aug is None:
        return None
    try:
        return make_augment(
            aug.get("shift", 0), aug.get("flip", False), mode=aug.get("mode", "edge")
        )
    except ValueError as e:
        raise ValueError(f"config.augment: {e}") from None
