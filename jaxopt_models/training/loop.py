"""``fit``: the epoch loop of the engine (any step function, any data, plain settings).

``fit`` knows no model, dataset, technique or experiment config. It runs a compiled step over
the batches a caller supplies, drains metrics in bounded queues, evaluates with a callback,
appends one line per epoch to ``metrics.jsonl``, checkpoints (collectively) and resumes bit
for bit, and stops on a non-finite loss naming the step.
"""

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxopt_models.checks import check_one_of
from jaxopt_models.training.checkpoint import Checkpointer
from jaxopt_models.training.io import append_jsonl, atomic_write_bytes
from jaxopt_models.training.parallel import as_parallel_step
from jaxopt_models.training.state import TrainState

NAN_POLICIES = ("error", "skip")
# Seen on simulated CPU devices: 40+ queued steps with collectives deadlock; 30 never did.
MAX_UNSYNCED_PARALLEL_STEPS = 25

BatchesFn = Callable[[int, int], Iterable[dict[str, Any]]]
"""``batches(epoch, start_step) -> iterable of global batches`` (deterministic: a resumed
run asks for the same epoch from ``start_step`` and must get the same batches)."""


class FitSettings(NamedTuple):
    """The plain settings of :func:`fit`.

    Attributes:
      num_epochs: epochs to train (>= 1).
      steps_per_epoch: batches per epoch (>= 1); the batches function yields exactly these.
      eval_every_epochs: call ``evaluate`` every this many epochs and after the last.
      sync_every_steps: fetch metrics (a device sync) at least this often (at most 25 in
        the parallel modes: long unsynced queues of collective steps can deadlock).
      checkpoint_every_steps: save every this many steps (0: by time only / never).
      checkpoint_every_seconds: also save when this many seconds have passed since the
        last save (checked at metric syncs; 0: never by time). With both 0 no
        checkpoints are written; the final state is always saved when checkpointing.
      checkpoint_keep: how many recent checkpoints to keep.
      resume: continue from the newest readable checkpoint in ``<workdir>/checkpoints``.
      nan_policy: ``"error"`` (stop, naming the step) or ``"skip"`` (the step must be
        built with ``skip_nonfinite=True``).
      progress: show a tqdm progress bar (needs the ``experiments`` extra).
      description: the progress bar's label.
      data_signature: what fixes the data order (e.g. ``{"seed": 0, "batch_size": 128}``);
        stored in checkpoints and compared on resume.
    """

    num_epochs: int
    steps_per_epoch: int
    eval_every_epochs: int = 1
    sync_every_steps: int = 25
    checkpoint_every_steps: int = 0
    checkpoint_every_seconds: float = 0.0
    checkpoint_keep: int = 3
    resume: bool = False
    nan_policy: str = "error"
    progress: bool = False
    description: str = ""
    data_signature: dict[str, Any] | None = None


def _positive_int(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}={value!r} must be an int >= {low}")
    return int(value)


def check_settings(settings: FitSettings) -> FitSettings:
    """Validates every field of ``settings`` (errors name the field); returns them."""
    if not isinstance(settings, FitSettings):
        raise TypeError(f"settings must be a FitSettings, got {type(settings).__name__}")
    for name in ("num_epochs", "steps_per_epoch", "eval_every_epochs", "sync_every_steps"):
        _positive_int(name, getattr(settings, name))
    _positive_int("checkpoint_every_steps", settings.checkpoint_every_steps, 0)
    _positive_int("checkpoint_keep", settings.checkpoint_keep)
    secs = settings.checkpoint_every_seconds
    if isinstance(secs, bool) or not isinstance(secs, (int, float)) or secs < 0:
        raise ValueError(f"checkpoint_every_seconds={secs!r} must be a number >= 0")
    check_one_of("nan_policy", settings.nan_policy, NAN_POLICIES)
    return settings


def _is_prng_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.numpy.issubdtype(x.dtype, jax.dtypes.prng_key)


def _check_resume(meta: dict[str, Any], settings: FitSettings, total_steps: int) -> None:
    """Raises ``ValueError`` if the checkpoint's data order differs from this run's."""
    wanted = {"steps_per_epoch": settings.steps_per_epoch, **(settings.data_signature or {})}
    saved = {"steps_per_epoch": meta.get("steps_per_epoch"), **meta.get("data_signature", {})}
    for key, value in wanted.items():
        if saved.get(key) != value:
            raise ValueError(
                f"cannot resume: the checkpoint was written with {key}={saved.get(key)!r} but "
                f"this run has {key}={value!r}, so the data order would differ"
            )
    if meta["step"] > total_steps:
        raise ValueError(
            f"cannot resume: the checkpoint is at step {meta['step']}, past this run's "
            f"{total_steps} steps (num_epochs={settings.num_epochs})"
        )


def _nonfinite_error(what: str, step: int, n_steps: int, ckpt, last_saved) -> FloatingPointError:
    epoch, batch = divmod(step - 1, n_steps)
    if ckpt is None:
        kept = "no checkpoints are configured"
    elif last_saved is None:
        kept = f"no checkpoint was written yet in {ckpt.directory}"
    else:
        kept = f"the last good checkpoint is step {last_saved} in {ckpt.directory}"
    return FloatingPointError(
        f"non-finite {what} at step {step} (epoch {epoch + 1}, batch {batch + 1}); training "
        f"stopped and {kept}. Lower the learning rate, clip gradients, or set "
        f"nan_policy='skip'"
    )


def _rows_of(batches: Iterable[dict[str, Any]], rows: slice) -> Iterator[dict[str, Any]]:
    for batch in batches:
        yield {k: v[rows] for k, v in batch.items()}


def _agree(flag: bool) -> bool:
    """Process 0's ``flag`` on every process (one small collective; one process: as is)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils  # noqa: PLC0415

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def fit(
    state: TrainState,
    train_fn: Callable,
    batches: BatchesFn,
    settings: FitSettings,
    *,
    evaluate: Callable[[TrainState], dict[str, float]] | None = None,
    workdir: str | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """Runs ``settings.num_epochs`` epochs of ``train_fn`` over ``batches``.

    In a multi-process run every process calls ``fit`` with the same global batches and
    feeds only its rows of each; process 0 alone logs (checkpoints are collective).

    Args:
      state: the initial train state (single copy; also the template a resumed
        checkpoint is validated against).
      train_fn: ``(state, batch) -> (state, {"loss", ...})``: a ``ParallelStep`` from
        ``make_train_step`` (any mode) or any compiled function (one device).
      batches: ``batches(epoch, start_step)`` yields the epoch's global batches from
        ``start_step`` on (dicts of NumPy arrays with a leading batch axis).
      settings: the plain :class:`FitSettings`.
      evaluate: ``evaluate(state) -> {name: float}`` on held-out data (a validation
        split), called every ``eval_every_epochs`` and after the last epoch; its values
        enter the epoch's record as ``val_<name>``.
      workdir: output directory (``metrics.jsonl``, ``checkpoints/``); ``None`` writes
        nothing.
      on_epoch: called on process 0 with each epoch's record after it is logged (e.g. a
        TensorBoard writer).

    Returns:
      ``(final_state, info)``: the single-device final state and ``{"history",
      "train_seconds", "steps", "resumed_from_step", "skipped_steps", "parallel",
      "num_devices", "num_processes", "last_eval"}``.

    Raises:
      FloatingPointError: a non-finite loss or state with ``nan_policy="error"``; the
        message names the step, and no checkpoint after the last good one is written.
      ValueError: bad settings (naming the field), checkpoints in ``workdir`` without
        ``resume``, or a checkpoint whose data order differs.

    Example:
      >>> settings = FitSettings(num_epochs=10, steps_per_epoch=steps_per_epoch(n, 128))
      >>> state, info = fit(state, make_train_step(), batches, settings, evaluate=val_fn)
    """
    settings = check_settings(settings)
    n_steps, num_epochs = settings.steps_per_epoch, settings.num_epochs
    step_fn = as_parallel_step(train_fn)
    if settings.nan_policy == "skip" and not step_fn.skip_nonfinite:
        raise ValueError(
            "nan_policy='skip' needs a train_fn built with make_train_step(..., "
            "skip_nonfinite=True)"
        )
    sync_every = settings.sync_every_steps
    if step_fn.mode != "none":  # long unsynced queues of collective steps can deadlock
        sync_every = min(sync_every, MAX_UNSYNCED_PARALLEL_STEPS)
    total_steps = n_steps * num_epochs
    is_main = jax.process_index() == 0
    checkpointing = settings.checkpoint_every_steps > 0 or settings.checkpoint_every_seconds > 0

    metrics_path = ckpt = None
    if workdir is not None:
        if is_main:
            os.makedirs(workdir, exist_ok=True)
        metrics_path = os.path.join(workdir, "metrics.jsonl")
        if checkpointing:
            ckpt = Checkpointer(
                os.path.join(workdir, "checkpoints"),
                keep=settings.checkpoint_keep,
                every_steps=settings.checkpoint_every_steps or total_steps + 1,
            )
    if settings.resume and ckpt is None:
        raise ValueError(
            "resume=True needs a workdir and checkpoints (checkpoint_every_steps > 0 or "
            "checkpoint_every_seconds > 0)"
        )

    history: list[dict[str, Any]] = []
    train_seconds = 0.0
    sums = {"loss": 0.0, "accuracy": 0.0, "count": 0}
    skipped = 0
    start = 0
    last_saved = ckpt.latest_step() if ckpt is not None else None
    if last_saved is not None and not settings.resume:
        raise ValueError(
            f"{ckpt.directory} already holds checkpoints (latest step {last_saved}); "
            "continue them with --resume (resume=True) or use another workdir"
        )
    if last_saved is not None:
        state, meta = ckpt.restore(state)  # warns about (and skips) unreadable newer ones
        _check_resume(meta, settings, total_steps)
        start = int(meta["step"])
        for unreadable in [s for s in ckpt.all_steps() if s > start]:
            ckpt.delete(unreadable)  # this run writes those steps again
        last_saved = start
        history = list(meta["history"])
        sums = dict(meta["epoch_sums"])
        skipped = int(meta["skipped_steps"])
        train_seconds = float(meta["train_seconds"])
    if is_main and metrics_path is not None:
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in history)
        if history or os.path.exists(metrics_path):
            atomic_write_bytes(metrics_path, lines.encode())

    progress = None
    if settings.progress and is_main:
        from jaxopt_models._optional import require  # noqa: PLC0415

        tqdm = require("tqdm.auto", "experiments", "the progress bar").tqdm
        progress = tqdm(total=total_steps, initial=start, desc=settings.description, leave=False)
    state = step_fn.place_state(state)
    rows = None
    if start < total_steps and (step_fn.mode != "none" or jax.process_count() > 1):
        rows = step_fn.process_rows(_global_batch_size(batches, start, n_steps))
    pending: list[tuple[int, Any]] = []
    last_save_time = time.monotonic()

    def drain() -> None:
        """Fetches the pending metrics (a device sync), checks them, adds them up."""
        nonlocal skipped
        if not pending:
            return
        values = step_fn.host_metrics([m for _, m in pending])
        for (gstep, _), v in zip(pending, values, strict=True):
            if int(v.get("skipped", 0)):
                skipped += 1
                continue
            loss = float(v["loss"])
            if not np.isfinite(loss):
                raise _nonfinite_error(f"loss {loss}", gstep, n_steps, ckpt, last_saved)
            sums["loss"] += loss
            sums["accuracy"] += float(v.get("accuracy", np.nan))
            sums["count"] += 1
        pending.clear()

    def save(gstep: int) -> None:
        nonlocal last_saved, last_save_time
        drain()
        host = jax.tree.map(
            lambda x: x if _is_prng_key(x) else np.asarray(jax.device_get(x)),
            step_fn.local(state),
        )
        for leaf in jax.tree.leaves(host):
            if isinstance(leaf, np.ndarray) and np.issubdtype(leaf.dtype, np.inexact):
                if not np.all(np.isfinite(leaf)):
                    raise _nonfinite_error("train state", gstep, n_steps, ckpt, last_saved)
        epoch, in_epoch = divmod(gstep, n_steps)
        meta = {
            "step": gstep,
            "epoch": epoch,
            "step_in_epoch": in_epoch,
            "steps_per_epoch": n_steps,
            "data_signature": settings.data_signature or {},
            "history": history,
            "epoch_sums": sums,
            "skipped_steps": skipped,
            "train_seconds": train_seconds,
        }
        ckpt.save(gstep, host, meta)
        last_saved = gstep
        last_save_time = time.monotonic()

    def time_to_save() -> bool:
        secs = settings.checkpoint_every_seconds
        return _agree(secs > 0 and time.monotonic() - last_save_time >= secs)

    last_eval: dict[str, float] | None = None
    try:
        epoch0, first_step = divmod(start, n_steps)
        for epoch in range(epoch0, num_epochs):
            t0 = time.perf_counter()
            first = first_step if epoch == epoch0 else 0
            epoch_batches = batches(epoch, first)
            if rows is not None:
                epoch_batches = _rows_of(epoch_batches, rows)
            i = first - 1
            for i, batch in enumerate(epoch_batches, start=first):
                state, m = step_fn(state, batch)
                gstep = epoch * n_steps + i + 1
                pending.append((gstep, m))
                synced = len(pending) >= sync_every
                if synced:
                    drain()
                if progress is not None:
                    progress.update(1)
                if ckpt is not None and i + 1 < n_steps:
                    if ckpt.should_save(gstep) or (synced and time_to_save()):
                        train_seconds += time.perf_counter() - t0
                        save(gstep)
                        t0 = time.perf_counter()
            if i + 1 != n_steps:
                raise ValueError(
                    f"batches({epoch}, {first}) yielded {i + 1 - first} batches; expected "
                    f"{n_steps - first} (steps_per_epoch={n_steps})"
                )
            drain()
            train_seconds += time.perf_counter() - t0
            count = max(sums["count"], 1)
            record = {
                "epoch": epoch + 1,
                "step": (epoch + 1) * n_steps,
                "train_loss": sums["loss"] / count if sums["count"] else float("nan"),
                "train_accuracy": sums["accuracy"] / count if sums["count"] else float("nan"),
                "train_seconds": train_seconds,
            }
            if settings.nan_policy == "skip":
                record["skipped_steps"] = skipped
            sums = {"loss": 0.0, "accuracy": 0.0, "count": 0}
            if evaluate is not None and (
                (epoch + 1) % settings.eval_every_epochs == 0 or epoch + 1 == num_epochs
            ):
                last_eval = {k: float(v) for k, v in evaluate(step_fn.local(state)).items()}
                record.update({f"val_{k}": v for k, v in last_eval.items()})
            if progress is not None:
                shown = {"loss": f"{record['train_loss']:.4f}"}
                if last_eval:
                    k = next(iter(last_eval))
                    shown[f"val_{k}"] = f"{last_eval[k]:.4f}"
                progress.set_postfix(**shown)
            history.append(record)
            if is_main and metrics_path is not None:
                append_jsonl(metrics_path, record)
            if is_main and on_epoch is not None:
                on_epoch(record)
            gstep = (epoch + 1) * n_steps
            # the last epoch is saved when checkpoints are periodic or one was written
            final_save = epoch + 1 == num_epochs and (
                settings.checkpoint_every_steps > 0 or last_saved is not None
            )
            if ckpt is not None and (ckpt.should_save(gstep) or final_save or time_to_save()):
                save(gstep)
    finally:
        if progress is not None:
            progress.close()
        if ckpt is not None:
            ckpt.close()

    final = step_fn.local(state)
    if last_eval is None and evaluate is not None:  # resumed after the last epoch
        last_eval = {k: float(v) for k, v in evaluate(final).items()}
    info = {
        "history": history,
        "train_seconds": train_seconds,
        "steps": int(jax.device_get(final.step)),
        "resumed_from_step": start,
        "skipped_steps": skipped,
        "parallel": step_fn.mode,
        "num_devices": step_fn.num_devices,
        "num_processes": jax.process_count(),
        "last_eval": last_eval,
    }
    return final, info


def _global_batch_size(batches: BatchesFn, start: int, n_steps: int) -> int:
    """The leading size of the first batch the run will see (for the process's rows)."""
    epoch, first = divmod(start, n_steps)
    for batch in batches(epoch, first):
        return int(len(next(iter(batch.values()))))
    return 0
