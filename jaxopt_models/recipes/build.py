"""Config -> objects: the one place a config becomes data, model, optimizer and transforms.

Every builder checks its section eagerly and names the field in its errors
(``config.pruning.sparsity=1.5 must be a number in [0.0, 1.0)``). Recipes call them all
before the first step, so a bad value in a late pipeline stage fails in seconds.
"""

import contextlib
import functools
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxopt_models import pruning
from jaxopt_models import quantization as qz
from jaxopt_models.checks import check_one_of
from jaxopt_models.data import (
    eval_batches,
    get_dataset,
    make_augment,
    steps_per_epoch,
    train_batches,
    validation_split,
)
from jaxopt_models.distillation import make_distill_loss
from jaxopt_models.metrics import classification_report
from jaxopt_models.models import get_model
from jaxopt_models.pruning.structures import as_structure
from jaxopt_models.recipes import config as schema
from jaxopt_models.training import (
    PARALLEL_MODES,
    FitSettings,
    TrainState,
    check_settings,
    cross_entropy,
    make_eval_step,
)
from jaxopt_models.tree import check_rules, is_kernel, named_leaves, rule_for
from jaxopt_models.typing import PyTree


# ----------------------------------------------------------------------------- errors
class ConfigError(ValueError):
    """A config, workdir or input problem found before anything trains (the CLI prints it
    as one line and exits with status 2)."""


class MissingDataError(ConfigError, FileNotFoundError):
    """A dataset or file the config names is not there."""


class MissingExtraError(ConfigError, ImportError):
    """An optional package the config needs is not installed."""


@contextlib.contextmanager
def config_errors():
    """Re-raises the checks' ``ValueError`` / ``TypeError`` / missing files / missing extras
    as :class:`ConfigError` subclasses (same message, still ``ValueError`` etc.).

    Recipes wrap their preparation (everything before the first step) in it.
    """
    try:
        yield
    except ConfigError:
        raise
    except FileNotFoundError as e:
        raise MissingDataError(str(e)) from e
    except ImportError as e:
        raise MissingExtraError(str(e)) from e
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from e


# ----------------------------------------------------------------------------- data
class Data(NamedTuple):
    """A classification dataset with train / validation / test splits (NumPy arrays)."""

    name: str
    num_classes: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def subset(self, num_train: int | None) -> "Data":
        """The first ``num_train`` training examples (validation and test unchanged)."""
        return self._replace(x_train=self.x_train[:num_train], y_train=self.y_train[:num_train])


def _number(value: Any, field: str, low: float, high: float, *, high_open: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    ok = ok and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"config.{field}={value!r} must be a number in [{low}, {high}{bracket}")
    return float(value)


def check_int(value: Any, field: str, low: int = 1) -> int:
    """``value`` if it is an int ``>= low`` (not a bool); else ``ValueError`` naming
    ``config.<field>``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"config.{field}={value!r} must be an int >= {low}")
    return value


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"config.{field}={value!r} must be a bool")
    return value


def load_data(config, dataset=None) -> Data:
    """The splits of ``config.dataset`` (or of ``dataset``, a ``data.Dataset``).

    The validation split is ``dataset.validation_fraction`` of the training split, held out
    with ``dataset.split_seed``; the test split is the dataset's own.
    """
    section = config.dataset
    fraction = _number(
        section.get("validation_fraction", 0.0), "dataset.validation_fraction", 0, 1, high_open=True
    )
    if dataset is None:
        kwargs = {
            k: v
            for k, v in section.items()
            if k not in ("name", "validation_fraction", "split_seed") and v is not None
        }
        dataset = get_dataset(section.name, **kwargs)
    tr, va = validation_split(len(dataset.x_train), fraction, int(section.get("split_seed", 0)))
    return Data(
        name=dataset.name,
        num_classes=dataset.num_classes,
        x_train=dataset.x_train[tr],
        y_train=dataset.y_train[tr],
        x_val=dataset.x_train[va],
        y_val=dataset.y_train[va],
        x_test=dataset.x_test,
        y_test=dataset.y_test,
    )


def batches_fn(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, extra=None):
    """``fit``'s ``batches(epoch, start_step)``: shuffled, full batches of ``(x, y)``.

    ``extra`` maps batch keys to arrays gathered with the same permutation (e.g.
    precomputed teacher logits).
    """

    def batches(epoch: int, start_step: int) -> Iterator[dict[str, Any]]:
        if not extra:
            yield from train_batches(
                x, y, batch_size, seed=seed, epoch=epoch, start_step=start_step
            )
            return
        index = np.arange(len(x))
        for b in train_batches(index, y, batch_size, seed=seed, epoch=epoch, start_step=start_step):
            idx = b["image"]
            yield {"image": x[idx], "label": b["label"], **{k: v[idx] for k, v in extra.items()}}

    return batches


# ----------------------------------------------------------------------------- model
def model_kwargs(section, num_classes: int) -> dict[str, Any]:
    """The ``get_model`` keyword arguments of a ``model`` section (all but ``name``)."""
    kwargs = {k: v for k, v in section.items() if k != "name" and v is not None}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    kwargs.setdefault("num_classes", num_classes)
    return kwargs


def build_model(section, num_classes: int, quantization=None):
    """The Flax module of a ``model`` section, with the ``act_quant`` of ``quantization``."""
    extra = qat_model_kwargs(quantization)
    return get_model(section.name, **model_kwargs(section, num_classes), **extra)


def param_shapes(model, sample: np.ndarray) -> PyTree:
    """The params' shapes (``jax.ShapeDtypeStruct`` leaves) without running an init."""
    shapes = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x, train=False), jnp.asarray(sample)
    )
    return shapes["params"]


# ----------------------------------------------------------------------------- pruning
def pruning_enabled(section) -> bool:
    """Whether a ``pruning`` section prunes (``method != "none"``); checks the method."""
    if section is None:
        return False
    check_one_of("config.pruning.method", section.method, schema.PRUNING_METHODS)
    return section.method != "none"


def schedule_steps(section, total_steps: int) -> tuple[int, int]:
    """The pruning schedule's ``(begin_step, end_step)`` for a run of ``total_steps``."""
    last = max(total_steps - 1, 0)

    def step(key):
        value = section.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= last:
            raise ValueError(
                f"config.pruning.{key}={value!r} must be an int in [0, total_steps - 1 = "
                f"{last}] (the run's last update)"
            )
        return value

    begin, end = step("begin_step"), step("end_step")
    if begin is None:
        f = _number(section.begin_fraction, "pruning.begin_fraction", 0, 1, high_open=False)
        begin = min(int(f * total_steps), last)
    if end is None:
        f = _number(section.end_fraction, "pruning.end_fraction", 0, 1, high_open=False)
        end = min(int(f * total_steps), last)
    if begin > end:
        raise ValueError(
            f"config.pruning begins at step {begin} after it ends at step {end}; set "
            "begin_step <= end_step (or begin_fraction <= end_fraction)"
        )
    return begin, end


def pruning_schedule(
    section, total_steps: int, *, steps_per_epoch: int, params: PyTree
) -> tuple[pruning.Schedule, dict[str, float]]:
    """The schedule of a (checked) ``pruning`` section and every kernel's final target.

    The schedule rises to the largest target; each kernel follows it in proportion to its
    own target (``pruning.layers``, else ``pruning.sparsity``).

    Returns:
      ``(schedule, {kernel path: final sparsity})``.
    """
    layers = dict(section.get("layers") or {})
    targets = {p: float(rule_for(layers, p, section.sparsity)) for p, _ in _kernel_names(params)}
    final = max(targets.values(), default=section.sparsity)  # = sparsity without layers
    begin, end = schedule_steps(section, total_steps)
    if section.schedule == "constant":
        return pruning.constant(final), targets
    if section.schedule == "one_shot":
        return pruning.one_shot(final, begin), targets
    frequency = section.frequency or max(steps_per_epoch // 10, 1)
    schedule = pruning.polynomial(
        final, begin, end, section.initial_sparsity, float(section.power), frequency
    )
    return schedule, targets


def build_pruning(
    section, total_steps: int, *, steps_per_epoch: int, seed: int, params: PyTree
) -> optax.GradientTransformationExtraArgs | None:
    """The ``pruning.prune`` transform of a ``pruning`` section (``None`` when off).

    Args:
      section: the ``pruning`` section.
      total_steps: the run's optimizer steps (fractions refer to them).
      steps_per_epoch: for ``frequency=0`` (a tenth of an epoch).
      seed: the default seed of the random scorer.
      params: the params or their shapes: ``layers`` patterns must match kernels.

    Returns:
      The transform, or ``None`` for ``method="none"`` (whose other fields are checked all
      the same).
    """
    if section is None:
        return None
    # every field is checked even when the method is "none": a bad value is an error, not
    # a setting that silently does nothing
    enabled = pruning_enabled(section)
    sparsity = _number(section.sparsity, "pruning.sparsity", 0, 1, high_open=True)
    layers = dict(section.get("layers") or {})
    for key, value in layers.items():
        _number(value, f"pruning.layers[{key!r}]", 0, 1, high_open=True)
    check_rules(layers, params, "config.pruning.layers")
    check_one_of("config.pruning.schedule", section.schedule, schema.PRUNING_SCHEDULES)
    schedule_steps(section, total_steps)  # checks begin/end before the other fields
    check_int(section.frequency, "pruning.frequency", 0)
    initial = _number(section.initial_sparsity, "pruning.initial_sparsity", 0, 1, high_open=True)
    if initial > sparsity:
        raise ValueError(
            f"config.pruning.initial_sparsity={initial!r} must be <= config.pruning.sparsity="
            f"{sparsity!r}"
        )
    power = section.power
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not power > 0:
        raise ValueError(f"config.pruning.power={power!r} must be a number > 0")
    sched, targets = pruning_schedule(
        section, total_steps, steps_per_epoch=steps_per_epoch, params=params
    )
    final = max(targets.values(), default=sparsity)
    scope = check_one_of("config.pruning.scope", section.scope, schema.PRUNING_SCOPES)
    try:
        structure = as_structure(section.structure)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"config.pruning.structure={section.structure!r} is not valid: {e}"
        ) from None
    axis = section.structure_axis
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise ValueError(f"config.pruning.structure_axis={axis!r} must be an int")
    if isinstance(structure, pruning.NByM):
        structure = pruning.n_by_m(structure.n, structure.m, axis)
    elif isinstance(structure, pruning.Channels):
        structure = pruning.channels(axis, structure.norm)
    distribution = check_one_of(
        "config.pruning.distribution", section.distribution, schema.PRUNING_DISTRIBUTIONS
    )
    if scope == "global" and (distribution != "uniform" or layers):
        raise ValueError(
            "config.pruning.scope='global' needs config.pruning.distribution='uniform' and no "
            f"config.pruning.layers, got distribution={distribution!r}, layers={layers}"
        )
    if layers:
        if distribution != "uniform":
            raise ValueError(
                "config.pruning.layers needs config.pruning.distribution='uniform', got "
                f"{distribution!r}"
            )
        # every kernel follows the schedule in proportion to its own final target
        distribution = {
            p: None if t == 0.0 or final == 0.0 else (lambda s, r=t / final: s * r)
            for p, t in targets.items()
        }
    seed_value = section.seed if section.seed is not None else seed
    if isinstance(seed_value, bool) or not isinstance(seed_value, int):
        raise ValueError(f"config.pruning.seed={seed_value!r} must be an int or None")
    if not enabled:
        return None
    return pruning.prune(
        section.method,
        sched,
        scope=scope,
        structure=structure,
        distribution=distribution,
        seed=seed_value,
    )


def _kernel_names(params: PyTree) -> list[tuple[str, Any]]:
    return [(p, x) for p, x in named_leaves(params) if is_kernel(p, x)]


def with_pruning(tx: optax.GradientTransformation, prune) -> optax.GradientTransformation:
    """``tx`` followed by ``prune`` (``tx`` when ``prune`` is ``None``).

    The chain passes the incoming (raw loss) gradients to ``prune`` as ``grads=``, so the
    saliency scorer sees them rather than the optimizer's updates.
    """
    if prune is None:
        return tx
    chained = optax.chain(tx, prune)

    def update_fn(updates, state, params=None, **extra_args):
        extra_args.setdefault("grads", updates)
        return chained.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(chained.init, update_fn)


def pruning_report(params: PyTree, opt_state: PyTree, section) -> dict[str, Any]:
    """The sparsity report of a pruned run for ``results.json``."""
    state = pruning.find_prune_state(opt_state)
    return {
        **pruning.sparsity_summary(params, None if state is None else state.masks),
        "target_sparsity": float(section.sparsity),
        "target_layers": dict(section.get("layers") or {}),
        "method": section.method,
        "schedule": section.schedule,
    }


# ----------------------------------------------------------------------------- QAT
def _bits(section, key: str) -> int:
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 16:
        raise ValueError(
            f"config.quantization.{key}={value!r} must be an int in 0..16 (0 keeps it float)"
        )
    return value


def weight_quantizer(section) -> Callable[[Any], Any] | None:
    """The ``kernel -> fake-quantized kernel`` callable of a ``quantization`` section."""
    if section is None:
        return None
    mode = check_one_of("config.quantization.weight_mode", section.weight_mode, schema.WEIGHT_MODES)
    bits = _bits(section, "weight_bits")
    axis = -1 if _bool(section.per_channel, "quantization.per_channel") else None
    symmetric = _bool(section.weight_symmetric, "quantization.weight_symmetric")
    if mode == "binary":
        return functools.partial(qz.fake_binarize, axis=axis)
    if mode == "ternary":
        t = _number(
            section.ternary_threshold, "quantization.ternary_threshold", 0, 2, high_open=True
        )
        return functools.partial(qz.fake_ternarize, axis=axis, threshold=t)
    if bits == 0:
        return None
    return functools.partial(qz.fake_quant, bits=bits, axis=axis, symmetric=symmetric)


def qat_params_fn(section) -> Callable[[PyTree], PyTree] | None:
    """``params -> params`` with every kernel fake-quantized (weight QAT), or ``None``."""
    quantizer = weight_quantizer(section)
    if quantizer is None:
        return None
    return functools.partial(qz.fake_quant_params, quantizer=quantizer)


def qat_model_kwargs(section) -> dict[str, Any]:
    """``{"act_quant": ActivationQuantizer}`` for ``act_bits > 0``, else ``{}``."""
    if section is None:
        return {}
    bits = _bits(section, "act_bits")
    symmetric = _bool(section.act_symmetric, "quantization.act_symmetric")
    calibration = check_one_of(
        "config.quantization.act_calibration", section.act_calibration, schema.CALIBRATIONS
    )
    if bits == 0:
        return {}
    act = qz.ActivationQuantizer(bits=bits, symmetric=symmetric, calibration=calibration)
    return {"act_quant": act}


def quantization_enabled(section) -> bool:
    """Whether a ``quantization`` section quantizes weights or activations in training.

    Checks every field of the section (both builders run, whatever the first one says).
    """
    weights = weight_quantizer(section) is not None
    activations = bool(qat_model_kwargs(section))
    return weights or activations


# ----------------------------------------------------------------------------- the rest
def build_augment(section):
    """The train-time augmentation of an ``augment`` section (``None``: off)."""
    if section is None:
        return None
    try:
        return make_augment(section.shift, section.flip, mode=section.mode)
    except ValueError as e:
        raise ValueError(f"config.augment: {e}") from None


def build_distill_loss(section):
    """The per-example loss of a ``distillation`` section (checks every field)."""
    check_one_of("config.distillation.loss", section.loss, ("kl", "mse"))
    try:
        loss = make_distill_loss(section.loss, temperature=section.temperature, alpha=section.alpha)
    except ValueError as e:
        raise ValueError(f"config.distillation: {e}") from None
    _bool(section.precompute_teacher, "distillation.precompute_teacher")
    check_int(section.teacher_batch_size, "distillation.teacher_batch_size")
    return loss


def check_ptq(section) -> None:
    """Checks a ``ptq`` section's fields (those present)."""
    for key in ("weight_bits", "bias_bits"):
        if key in section:
            v = section[key]
            if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 16:
                raise ValueError(f"config.ptq.{key}={v!r} must be an int in 2..16")
    if "act_bits" in section:
        v = section.act_bits
        if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 8:
            raise ValueError(
                f"config.ptq.act_bits={v!r} must be an int in 2..8 (the integer path is int8)"
            )
    if "calibration" in section:
        check_one_of("config.ptq.calibration", section.calibration, schema.CALIBRATIONS)
    if "calibration_examples" in section:
        check_int(section.calibration_examples, "ptq.calibration_examples")


def loss_fn_of(config):
    """The per-example training loss: cross-entropy with ``config.label_smoothing``."""
    ls = _number(config.label_smoothing, "label_smoothing", 0, 1, high_open=True)
    return lambda logits, labels: cross_entropy(logits, labels, ls)


def fit_settings(config, n_steps: int, description: str = "", num_epochs=None) -> FitSettings:
    """The ``training.FitSettings`` of a config's loop fields (checked, naming the field)."""
    for key in (
        "batch_size",
        "eval_batch_size",
        "num_epochs",
        "log_every_epochs",
        "sync_every_steps",
    ):
        check_int(config[key], key)
    check_one_of("config.parallel", config.parallel, PARALLEL_MODES)
    ck = config.checkpoint
    check_int(ck.every_steps, "checkpoint.every_steps", 0)
    check_int(ck.keep, "checkpoint.keep")
    secs = ck.every_seconds
    if isinstance(secs, bool) or not isinstance(secs, (int, float)) or secs < 0:
        raise ValueError(f"config.checkpoint.every_seconds={secs!r} must be a number >= 0")
    try:
        return check_settings(
            FitSettings(
                num_epochs=num_epochs or config.num_epochs,
                steps_per_epoch=n_steps,
                eval_every_epochs=config.log_every_epochs,
                sync_every_steps=config.sync_every_steps,
                checkpoint_every_steps=ck.every_steps,
                checkpoint_every_seconds=float(secs),
                checkpoint_keep=ck.keep,
                resume=_bool(config.resume, "resume"),
                nan_policy=config.nan_policy,
                progress=_bool(config.progress, "progress"),
                description=description,
                data_signature={"seed": config.seed, "batch_size": config.batch_size},
            )
        )
    except ValueError as e:
        raise ValueError(f"config: {e}") from None


def num_steps(num_examples: int, batch_size: int) -> int:
    """Optimizer steps per epoch (full batches only); at least one."""
    check_int(batch_size, "batch_size")
    if batch_size > num_examples:
        raise ValueError(
            f"config.batch_size={batch_size} is larger than the {num_examples} training examples"
        )
    return steps_per_epoch(num_examples, batch_size)


def classification_eval(x, y, batch_size: int, eval_fn, num_classes: int):
    """``evaluate(state) -> {"loss", "accuracy", macro P/R/F1}`` over every example once."""

    def evaluate(state: TrainState) -> dict[str, Any]:
        return evaluate_classifier(state, x, y, batch_size, eval_fn, num_classes)

    return evaluate


def evaluate_classifier(state, x, y, batch_size, eval_fn=None, num_classes=None) -> dict:
    """Loss, accuracy and macro precision / recall / F1 of ``state`` on ``(x, y)``.

    Returns the metrics and ``"pred"`` (the ``(N,)`` predictions).
    """
    eval_fn = eval_fn or make_eval_step()
    outs, masks = [], []
    for batch in eval_batches(x, y, batch_size):
        masks.append(batch.pop("mask"))
        outs.append(eval_fn(state, batch))
    outs = jax.device_get(outs)
    mask = np.concatenate(masks)
    pred = np.concatenate([o["pred"] for o in outs])[mask]
    loss = np.concatenate([o["loss"] for o in outs])[mask]
    report = classification_report(y, pred, num_classes)
    return {"loss": float(loss.mean()), **report, "pred": pred}


def prepare_workdir(workdir: str | None, *, overwrite: bool, resume: bool, marker: str) -> None:
    """Checks ``workdir`` before anything trains.

    With ``overwrite`` (and not ``resume``) the previous run's ``marker`` and every
    ``checkpoints`` directory in ``workdir`` (its sub-runs' too) are removed, so the new run
    starts fresh instead of refusing the old checkpoints.

    Raises:
      ValueError: ``workdir`` is a file, is not writable, or already holds a finished run
        (``marker``, e.g. ``results.json``) and neither ``overwrite`` nor ``resume`` is set.
    """
    if workdir is None:
        return
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"workdir={workdir!r} exists and is not a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"workdir={workdir!r} cannot be created: {e.strerror}") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise ValueError(f"workdir={workdir!r} is not writable")
    done = os.path.join(workdir, marker)
    if os.path.exists(done) and not (overwrite or resume):
        raise ValueError(
            f"workdir={workdir!r} already holds a finished run ({marker}); pass --overwrite "
            "(overwrite=True) to replace it, or choose another workdir"
        )
    if overwrite and not resume:
        with contextlib.suppress(FileNotFoundError):  # (every process may get here)
            os.remove(done)
        for parent, dirs, _ in os.walk(workdir):
            if "checkpoints" in dirs:
                dirs.remove("checkpoints")
                shutil.rmtree(os.path.join(parent, "checkpoints"), ignore_errors=True)


def check_saved_run(directory: str, name: str, files=("variables.msgpack",)) -> None:
    """Checks that ``directory`` (the argument ``name``, e.g. ``teacher_dir``) holds ``files``.

    Raises:
      FileNotFoundError: naming the argument, the directory and the missing file (the CLI
        prints it as one ``error:`` line before anything trains).
    """
    for file in files:
        if not os.path.isfile(os.path.join(directory, file)):
            raise FileNotFoundError(
                f"{name}={directory!r} holds no {file}: it must be the workdir of a finished "
                "train run"
            )
