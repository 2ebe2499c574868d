"""Atomic, resumable checkpoints of a whole ``TrainState`` with orbax.

A checkpoint is one orbax step directory holding two items: ``state`` (every array leaf
of the state pytree — params, optimizer state with any pruning masks, step, model state,
the PRNG key as key data) and ``meta`` (JSON: the leaves' paths, shapes and dtypes plus
the caller's metadata, e.g. the data-order position). orbax writes a step into a
temporary ``<step>.orbax-checkpoint-tmp-*`` directory and renames it when complete, so an
interrupted write is never listed as a step. Saving is collective in a multi-process run
(every process calls ``save``); the arrays are written once.
"""

import os
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxopt_models.typing import PyTree

FORMAT_VERSION = 1


class CheckpointMismatchError(ValueError):
    """A readable checkpoint whose tree differs from the state being restored."""


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.numpy.issubdtype(x.dtype, jax.dtypes.prng_key)


def _leaf_records(tree: PyTree) -> tuple[list[dict[str, Any]], list[Any]]:
    """``[{"path", "shape", "dtype", "key"}]`` and the leaves of ``tree`` in order."""
    with_path, _ = jax.tree_util.tree_flatten_with_path(tree)
    records, leaves = [], []
    for path, leaf in with_path:
        is_key = _is_key(leaf)
        if is_key:
            dtype = str(jax.random.key_impl(leaf))
        elif hasattr(leaf, "dtype"):
            dtype = str(np.dtype(leaf.dtype))
        else:
            dtype = str(np.asarray(leaf).dtype)
        records.append(
            {
                "path": jax.tree_util.keystr(path),
                "shape": list(np.shape(leaf)),
                "dtype": dtype,
                "key": is_key,
            }
        )
        leaves.append(leaf)
    return records, leaves


def _describe_mismatch(saved: list[dict[str, Any]], wanted: list[dict[str, Any]]) -> list[str]:
    saved_by_path = {r["path"]: r for r in saved}
    wanted_by_path = {r["path"]: r for r in wanted}
    problems = []
    for path, r in wanted_by_path.items():
        s = saved_by_path.get(path)
        if s is None:
            problems.append(f"{path} is missing from the checkpoint")
        elif (s["shape"], s["dtype"]) != (r["shape"], r["dtype"]):
            problems.append(
                f"{path} has shape {tuple(s['shape'])} {s['dtype']} in the checkpoint but "
                f"{tuple(r['shape'])} {r['dtype']} in the model"
            )
    problems += [
        f"{path} is in the checkpoint but not in the model"
        for path in saved_by_path
        if path not in wanted_by_path
    ]
    if not problems and [r["path"] for r in saved] != [r["path"] for r in wanted]:
        problems.append("the leaves are in a different order")
    return problems


class Checkpointer:
    """Saves and restores ``TrainState`` pytrees in a directory, keeping the last few.

    Args:
      directory: where the step directories live (created if missing).
      keep: how many of the most recent checkpoints to keep (>= 1).
      every_steps: ``should_save(step)`` is true every this many steps (>= 1).

    Example:
      >>> ckpt = Checkpointer("runs/x/checkpoints", keep=3, every_steps=100)
      >>> if ckpt.should_save(step): ckpt.save(step, state, {"epoch": 2})
      >>> state, meta = ckpt.restore(state)  # the latest step, validated against state
    """

    def __init__(self, directory: str, *, keep: int = 3, every_steps: int = 1):
        for name, value in (("keep", keep), ("every_steps", every_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an int >= 1")
        self.directory = os.path.abspath(os.fspath(directory))
        self.keep = keep
        self.every_steps = every_steps
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                save_interval_steps=every_steps,
                enable_async_checkpointing=False,
                create=True,
                cleanup_tmp_directories=True,  # leftovers of interrupted writes
            ),
            item_names=("state", "meta"),
        )
        # orbax removes the leftovers in a background future; another Checkpointer on the
        # same directory (a resumed fit, a reader) would race it, so wait for it here
        await_cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
        if await_cleanup is not None:
            await_cleanup()

    def __repr__(self) -> str:
        return f"Checkpointer({self.directory!r}, keep={self.keep}, every_steps={self.every_steps})"

    def all_steps(self) -> list[int]:
        """The steps of the complete checkpoints, ascending."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None`` when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        """Whether ``step`` is a periodic save step (a multiple of ``every_steps``)."""
        return step > 0 and step % self.every_steps == 0

    def save(self, step: int, state: PyTree, metadata: dict[str, Any] | None = None) -> None:
        """Writes ``state`` (any pytree of arrays) and JSON ``metadata`` as ``step``.

        Args:
          step: the step number (a new, larger step than any saved one).
          state: the pytree to save, single-copy (not ``pmap``-stacked).
          metadata: JSON-serialisable extra information, returned by ``restore``.
        """
        records, leaves = _leaf_records(state)
        arrays = {}
        for i, (record, leaf) in enumerate(zip(records, leaves, strict=True)):
            value = jax.random.key_data(leaf) if record["key"] else leaf
            value = np.asarray(jax.device_get(value))
            if value.size:  # orbax cannot write empty arrays; they are rebuilt from meta
                arrays[f"{i:05d}"] = value
        meta = {
            "format": FORMAT_VERSION,
            "step": int(step),
            "leaves": records,
            "metadata": metadata or {},
        }
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def delete(self, step: int) -> None:
        """Removes checkpoint ``step`` (collective in a multi-process run).

        ``fit`` calls it on the unreadable checkpoints newer than the one it resumed from,
        so that its next saves at those steps do not collide with them.

        Raises:
          ValueError: ``step`` has no checkpoint here.
        """
        self._manager.delete(self._resolve(step))

    def metadata(self, step: int | None = None) -> dict[str, Any]:
        """The JSON ``meta`` item of ``step`` (default the latest)."""
        step = self._resolve(step)
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def _resolve(self, step: int | None) -> int:
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise ValueError(f"step={step!r} has no checkpoint in {self.directory}; have {steps}")
        return step

    def restore(self, template: PyTree, step: int | None = None) -> tuple[PyTree, dict[str, Any]]:
        """Restores ``step`` (default: the newest readable one) into ``template``'s structure.

        With ``step=None`` a newest checkpoint that cannot be read (a corrupt or partly
        deleted directory) is skipped with a warning naming it, and the one before it is
        tried, down to the oldest; only when none can be read is the first error raised.

        Args:
          template: a pytree with the same structure, shapes and dtypes as the saved one
            (e.g. a freshly created ``TrainState``); its values are not used.
          step: which checkpoint (default the latest complete one).

        Returns:
          ``(state, metadata)``: ``template``'s structure with host NumPy leaves (PRNG
          keys re-wrapped as keys) and the caller's ``metadata`` dict.

        Raises:
          FileNotFoundError: there is no complete checkpoint.
          ValueError: the checkpoint's tree (paths, shapes, dtypes) differs from
            ``template``'s, e.g. it belongs to a different model.
        """
        if step is not None:
            return self._restore(template, self._resolve(step))
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        first_error = None
        for candidate in reversed(steps):
            try:
                return self._restore(template, candidate)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # noqa: BLE001  (orbax / JSON / OS errors of a bad step)
                first_error = first_error or e
                warnings.warn(
                    f"checkpoint step {candidate} in {self.directory} cannot be read "
                    f"({type(e).__name__}: {str(e)[:200]}); trying the one before it",
                    RuntimeWarning,
                    stacklevel=2,
                )
        raise ValueError(
            f"no checkpoint in {self.directory} can be read (steps {steps}); the newest "
            f"failed with {type(first_error).__name__}: {str(first_error)[:300]}"
        ) from first_error

    def _restore(self, template: PyTree, step: int) -> tuple[PyTree, dict[str, Any]]:
        meta = self.metadata(step)
        saved = meta.get("leaves", [])
        wanted, template_leaves = _leaf_records(template)
        problems = _describe_mismatch(saved, wanted)
        if problems:
            shown = "; ".join(problems[:6])
            more = f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""
            raise CheckpointMismatchError(
                f"the checkpoint at step {step} in {self.directory} does not match the "
                f"state being restored (a different model or optimizer?): {shown}{more}"
            )
        targets = {}
        for i, record in enumerate(saved):
            shape = tuple(record["shape"])
            if record["key"]:
                data = jax.random.key_data(template_leaves[i])
                shape, dtype = tuple(np.shape(data)), np.dtype(data.dtype)
            else:
                dtype = np.dtype(record["dtype"])
            if int(np.prod(shape)):
                targets[f"{i:05d}"] = np.empty(shape, dtype)
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(targets))
        )["state"]
        leaves = []
        for i, (record, leaf) in enumerate(zip(saved, template_leaves, strict=True)):
            name = f"{i:05d}"
            if name in targets:
                value = np.asarray(restored[name])
            else:
                value = np.zeros(tuple(record["shape"]), np.dtype(record["dtype"]))
            if record["key"]:
                value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf))
            leaves.append(value)
        treedef = jax.tree.structure(template)
        return jax.tree.unflatten(treedef, leaves), meta.get("metadata", {})

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
