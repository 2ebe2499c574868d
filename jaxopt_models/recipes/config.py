"""The config schema: one section per technique, shared by every recipe and pipeline stage.

A recipe's ``default_config()`` is :func:`base_config` plus the sections it honours. Every
section has one builder in ``recipes.build`` and is checked there, before anything trains;
errors name the field (``config.pruning.sparsity=1.5 must be ...``). A config that carries
a section or field its recipe does not read is refused by :func:`check_fields` (e.g. a
compress config given to the train recipe), so no setting is ever silently ignored.

Sections:
  dataset, model, optimizer, augment, checkpoint, distributed: see :func:`base_config`.
  pruning: :func:`pruning_section` (training-time pruning with ``pruning.prune``).
  quantization: :func:`quantization_section` (quantization-aware training).
  distillation: :func:`distillation_section` (teacher-student loss); the LM recipe's is
    :func:`lm_distillation_section` (a teacher run, hidden states, the student's init).
  ptq: :func:`ptq_section` (post-training quantization).
  sharing: :func:`sharing_section` (k-means weight sharing).
Per-layer values everywhere are ``layers = {pattern: value}`` under the one convention of
``jaxopt_models.tree`` (a run of path components; ``"Dense"`` matches every ``Dense_<n>``;
the most specific pattern wins).
"""

from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

PRUNING_METHODS = ("none", "magnitude", "random", "saliency")
PRUNING_SCHEDULES = ("one_shot", "polynomial", "constant")
PRUNING_SCOPES = ("layer", "global")
PRUNING_DISTRIBUTIONS = ("uniform", "erk")
WEIGHT_MODES = ("uniform", "binary", "ternary")
CALIBRATIONS = ("minmax", "percentile", "mse")
SHARING_INITS = ("linear", "density", "kmeans++")


def optimizer_section(
    name: str = "adam", learning_rate: float = 1e-3, schedule: str = "constant"
) -> ml_collections.ConfigDict:
    """The ``optimizer`` section (see ``training.make_optimizer`` for every field)."""
    c = ml_collections.ConfigDict()
    c.name = name
    c.learning_rate = learning_rate
    c.schedule = schedule
    c.warmup_steps = 0
    c.momentum = 0.9
    c.b1 = 0.9
    c.b2 = 0.999
    c.eps = 1e-8
    c.weight_decay = 0.0
    c.grad_clip_norm = 0.0
    return c


def pruning_section(**overrides: Any) -> ml_collections.ConfigDict:
    """The ``pruning`` section: pruning while training, off by default (``method="none"``).

    Fields:
      method: ``"none"`` or a scorer of ``pruning.SCORERS`` (``"magnitude"``, ``"random"``,
        ``"saliency"``).
      sparsity: final sparsity of the kernels not named in ``layers``, in [0, 1).
      layers: ``{pattern: sparsity}`` for single layers or kinds (``{"Dense_2": 0.7}``).
      schedule: ``"polynomial"`` (Zhu & Gupta: cubic from ``initial_sparsity`` at the begin
        step to the targets at the end step, masks updated every ``frequency`` steps),
        ``"one_shot"`` (dense until the begin step) or ``"constant"`` (from step 0).
      begin_step / end_step: the schedule's steps (``None``: ``begin_fraction`` /
        ``end_fraction`` of the run's steps), at most the run's last update.
      begin_fraction / end_fraction: in [0, 1], ``begin <= end``.
      frequency: steps between mask updates (>= 1; 0: a tenth of an epoch).
      initial_sparsity, power: of the polynomial schedule.
      scope: ``"layer"`` or ``"global"`` (one threshold; needs uniform, no ``layers``).
      structure: ``"unstructured"``, ``"channels"`` or ``"n:m"`` such as ``"2:4"``.
      structure_axis: axis of N:M groups / channels (default -1).
      distribution: ``"uniform"`` or ``"erk"`` (needs no ``layers``).
      seed: seed of the random scorer (``None``: the config's ``seed``).
    """
    c = ml_collections.ConfigDict()
    c.method = "none"
    c.sparsity = 0.9
    c.layers = ml_collections.ConfigDict()
    c.schedule = "polynomial"
    c.begin_step = config_dict.placeholder(int)
    c.end_step = config_dict.placeholder(int)
    c.begin_fraction = 0.0
    c.end_fraction = 0.5
    c.frequency = 100
    c.initial_sparsity = 0.0
    c.power = 3.0
    c.scope = "layer"
    c.structure = "unstructured"
    c.structure_axis = -1
    c.distribution = "uniform"
    c.seed = config_dict.placeholder(int)
    c.update(overrides)
    return c


def quantization_section(**overrides: Any) -> ml_collections.ConfigDict:
    """The ``quantization`` section: quantization-aware training, float by default.

    Fields:
      weight_mode: ``"uniform"`` (``fake_quant`` at ``weight_bits``), ``"binary"`` or
        ``"ternary"``.
      weight_bits: bits of uniform weight fake-quantization, 0 for float (1..16).
      weight_symmetric: symmetric weight grid.
      per_channel: one scale per output channel instead of per tensor.
      ternary_threshold: ``fake_ternarize``'s threshold (a fraction of mean ``|w|``).
      act_bits: bits of the inputs of every Dense / Conv layer (models' ``act_quant``), 0
        for float.
      act_symmetric: symmetric activation grid.
      act_calibration: ``"minmax"``, ``"percentile"`` or ``"mse"`` (per batch).
    Kernels are fake-quantized with a straight-through gradient inside the loss and at
    evaluation; biases stay float.
    """
    c = ml_collections.ConfigDict()
    c.weight_mode = "uniform"
    c.weight_bits = 0
    c.weight_symmetric = True
    c.per_channel = True
    c.ternary_threshold = 0.7
    c.act_bits = 0
    c.act_symmetric = False
    c.act_calibration = "minmax"
    c.update(overrides)
    return c


def distillation_section(**overrides: Any) -> ml_collections.ConfigDict:
    """The ``distillation`` section: the student's loss against a frozen teacher.

    Fields:
      loss: ``"kl"`` (``alpha * T² KL + (1 - alpha) * CE``) or ``"mse"`` (logit matching).
      temperature: softmax temperature ``T > 0``.
      alpha: weight in [0, 1] of the teacher term.
      precompute_teacher: compute the teacher's logits once for the training set instead
        of inside every step (not with ``augment``: the teacher must see the augmented
        images).
      teacher_batch_size: batch size of that one pass.
    """
    c = ml_collections.ConfigDict()
    c.loss = "kl"
    c.temperature = 4.0
    c.alpha = 0.9
    c.precompute_teacher = True
    c.teacher_batch_size = 1000
    c.update(overrides)
    return c


def lm_distillation_section(**overrides: Any) -> ml_collections.ConfigDict:
    """The LM recipe's ``distillation`` section: :func:`distillation_section`'s loss,
    temperature and alpha (the teacher's logits are always computed inside the step, so
    ``precompute_teacher`` and ``teacher_batch_size`` are not part of it), plus:

    Fields:
      teacher_dir: a finished LM run (``results.json``, ``variables.msgpack``,
        ``tokenizer/``); ``None``: no teacher, the recipe trains the model alone.
      alpha: weight of the per-token teacher term; ``0`` with ``hidden.loss="none"`` keeps
        the teacher out of the step (plain cross-entropy: the "student alone" baseline of a
        student initialised from the teacher).
      hidden.loss: ``"none"``, ``"mse"`` or ``"cosine"``: a per-position loss between
        student and teacher block outputs, through a learned linear projection when the
        widths differ.
      hidden.weight: its weight (added to the KD + CE loss).
      hidden.layers: ``((student_block, teacher_block), ...)``; ``None``: student block ``i``
        to teacher block ``(i + 1) * L_t // L_s - 1`` (the same relative depth; last to last).
      student_init: ``"scratch"`` or ``"teacher_layers"`` (DistilBERT: the embeddings, the
        final norm and the blocks ``teacher_layers`` copied from the teacher).
      teacher_layers: the teacher's block indices, one per student block; ``None``: every
        ``L_t // L_s``-th block from the first.
    """
    c = distillation_section()
    del c.precompute_teacher, c.teacher_batch_size
    c.teacher_dir = config_dict.placeholder(str)
    c.hidden = ml_collections.ConfigDict(
        {"loss": "none", "weight": 1.0, "layers": config_dict.placeholder(tuple)}
    )
    c.student_init = "scratch"
    c.teacher_layers = config_dict.placeholder(tuple)
    c.update(overrides)
    return c


def ptq_section(fields: Iterable[str] | None = None, **overrides: Any) -> ml_collections.ConfigDict:
    """The ``ptq`` section: post-training quantization.

    Fields:
      weight_bits: integer width of the kernels (symmetric, per output channel), 2..16.
      bias_bits: integer width of the 1-D leaves (biases, norm parameters), 2..16.
      act_bits: activation width of the integer inference path (int8 layers: 8).
      calibration: activation range estimator: ``"minmax"``, ``"percentile"``, ``"mse"``.
      calibration_examples: training examples used to calibrate activation ranges.
    A recipe that uses only some fields passes ``fields=`` so the others do not exist in
    its config (and cannot be set to no effect).
    """
    c = ml_collections.ConfigDict()
    defaults = {
        "weight_bits": 8,
        "bias_bits": 8,
        "act_bits": 8,
        "calibration": "minmax",
        "calibration_examples": 1000,
    }
    for key, value in defaults.items():
        if fields is None or key in fields:
            c[key] = value
    c.update(overrides)
    return c


def sharing_section(**overrides: Any) -> ml_collections.ConfigDict:
    """The ``sharing`` section: k-means weight sharing of the kernels.

    Fields:
      bits: code width of every kernel not in ``layers`` (1..16).
      layers: ``{pattern: bits}`` per layer or kind.
      init: centroid initialisation: ``"linear"``, ``"density"`` or ``"kmeans++"``.
    """
    c = ml_collections.ConfigDict()
    c.bits = 5
    c.layers = ml_collections.ConfigDict()
    c.init = "linear"
    c.update(overrides)
    return c


def base_config() -> ml_collections.ConfigDict:
    """The fields every training recipe reads.

    Fields:
      seed: PRNG seed for init, dropout and data order.
      dataset.name / data_dir / num_train / num_test: what ``data.get_dataset`` loads.
      dataset.validation_fraction: held out of the training split for monitoring and
        model selection (0: no validation split); the test split is evaluated once, at
        the end. dataset.split_seed: the held-out examples' seed.
      model.name and model.*: ``models.get_model(name, **rest)`` (``num_classes`` from the
        dataset when not set).
      optimizer.*: see ``training.make_optimizer``.
      batch_size, eval_batch_size, num_epochs, label_smoothing.
      augment.shift / flip / mode: per-example training augmentation inside the compiled
        step (``data.make_augment``); off by default.
      log_every_epochs: evaluate on the validation split every this many epochs.
      sync_every_steps: block on the device at least this often.
      progress: show a progress bar.
      parallel: ``"none"`` | ``"sharding"`` | ``"pmap"``.
      checkpoint.every_steps / every_seconds / keep: checkpoints in
        ``<workdir>/checkpoints`` (by default every 60 s, so any run longer than a minute
        can be resumed); both 0: none.
      resume: continue from the newest readable checkpoint.
      nan_policy: ``"error"`` or ``"skip"``.
      distributed.*: ``jax.distributed`` settings (``training.initialize_distributed``).
      save_model: write the trained variables (``variables.msgpack``) to the workdir.
      plots: draw the loss / accuracy curves (``curves.png``; needs matplotlib).
      tensorboard: also write TensorBoard event files (``<workdir>/tensorboard``).
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "digits"
    c.dataset.data_dir = config_dict.placeholder(str)
    c.dataset.num_train = config_dict.placeholder(int)
    c.dataset.num_test = config_dict.placeholder(int)
    c.dataset.validation_fraction = 0.1
    c.dataset.split_seed = 0
    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"
    c.optimizer = optimizer_section()
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
    c.progress = False
    c.parallel = "none"
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 0
    c.checkpoint.every_seconds = 60.0
    c.checkpoint.keep = 3
    c.resume = False
    c.nan_policy = "error"
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = config_dict.placeholder(str)
    c.distributed.num_processes = config_dict.placeholder(int)
    c.distributed.process_id = config_dict.placeholder(int)
    c.distributed.auto = False
    c.save_model = True
    c.plots = True
    c.tensorboard = False
    return c


# Sections whose keys are free-form (a model's keyword arguments, per-layer rules).
_OPEN = ("model", "layers")


def check_fields(config: Any, reference: Mapping[str, Any], recipe: str, prefix: str = "config"):
    """Refuses every field of ``config`` that ``reference`` (the recipe's defaults) lacks.

    Args:
      config: the config about to run.
      reference: the recipe's ``default_config()``.
      recipe: the recipe's name, for the message.
      prefix: the dotted path so far.

    Raises:
      ValueError: naming the first unknown field and the recipe, e.g. a compress config's
        ``config.stages`` given to the train recipe; or a top-level field the recipe reads
        that ``config`` lacks (a train config given to the crossval recipe has no
        ``config.crossval``).
    """
    ref_keys = set(reference.keys())
    if prefix == "config":
        missing = sorted(ref_keys - set(config.keys()))
        if missing:
            raise ValueError(
                f"config.{missing[0]} is missing: the {recipe!r} recipe reads it (missing: "
                f"{missing}); start the config from that recipe's default_config()"
            )
    for key in config.keys():
        name = f"{prefix}.{key}"
        if key not in ref_keys:
            raise ValueError(
                f"{name} is not read by the {recipe!r} recipe, so it would be ignored; remove "
                f"it or use the recipe that honours it (known fields here: {sorted(ref_keys)})"
            )
        value, ref = config[key], reference[key]
        if key in _OPEN:
            continue
        if isinstance(ref, (ml_collections.ConfigDict, dict)) and isinstance(
            value, (ml_collections.ConfigDict, dict)
        ):
            check_fields(value, ref, recipe, name)
