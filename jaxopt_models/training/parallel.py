"""Data-parallel train steps: one factory, three modes, one calling convention.

``parallel`` is one of:

* ``"none"``: ``jax.jit`` on one device.
* ``"sharding"``: ``jax.jit`` over a ``jax.sharding.Mesh``; the batch is sharded on the
  mesh's ``data`` axis, the state (params, optimizer state, ...) is replicated and donated.
  XLA inserts the gradient all-reduce itself: the step is written for the global batch.
* ``"pmap"``: ``jax.pmap`` with an ``axis_name``; the state is replicated on the local
  devices (leading device axis) and the step averages its gradients with ``lax.pmean``
  (it receives ``axis_name=`` and calls ``cross_replica_mean``).

All three give the same result for the same global batch up to float reduction order
(exactly the same programs up to where the cross-device mean happens), across processes
too: in a multi-process run (``jax.distributed``) each process passes only its own rows
of every global batch (``process_rows``) and the arrays are assembled with
``jax.make_array_from_process_local_data`` (``"sharding"``) or by ``pmap`` itself.
"""

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxopt_models.checks import check_one_of
from jaxopt_models.typing import PyTree

PARALLEL_MODES = ("none", "sharding", "pmap")
DATA_AXIS = "data"


def make_mesh(devices: Sequence[Any] | None = None, axis_name: str = DATA_AXIS) -> Mesh:
    """A one-axis ``Mesh`` over ``devices`` (default: every device of every process).

    Args:
      devices: the devices, in mesh order (default ``jax.devices()``, which lists each
        process's devices together, so a process's batch rows are contiguous).
      axis_name: the name of the mesh axis the batch is sharded on.

    Returns:
      ``Mesh(devices, (axis_name,))``.

    Example:
      >>> mesh = make_mesh()  # all devices on a "data" axis
    """
    if not isinstance(axis_name, str) or not axis_name:
        raise ValueError(f"axis_name={axis_name!r} must be a non-empty str")
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices=[] must name at least one device")
    return Mesh(np.asarray(devices, dtype=object).reshape(-1), (axis_name,))


def cross_replica_mean(tree: PyTree, axis_name: str | None) -> PyTree:
    """``lax.pmean`` of the floating-point leaves over ``axis_name`` (identity for ``None``).

    Call it in a step that may run under ``pmap`` on the gradients, the metrics and any
    batch statistics; under ``jit``/``"sharding"`` ``axis_name`` is ``None`` and nothing
    happens (the step already sees the global batch).

    Args:
      tree: a pytree of arrays.
      axis_name: the ``pmap`` axis name, or ``None``.

    Returns:
      The tree with its float leaves averaged across devices; other leaves unchanged.

    Example:
      >>> grads = cross_replica_mean(grads, axis_name)
    """
    if axis_name is None:
        return tree

    def mean(x):
        x = jnp.asarray(x)
        return jax.lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.inexact) else x

    return jax.tree.map(mean, tree)


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _split_keys(tree: PyTree) -> tuple[list[Any], Any, list[Any]]:
    """Leaves as NumPy (PRNG keys as their key data), the treedef and each key's impl."""
    leaves, treedef = jax.tree.flatten(tree)
    impls = [jax.random.key_impl(x) if _is_key(x) else None for x in leaves]
    host = [
        np.asarray(jax.device_get(jax.random.key_data(x) if impl is not None else x))
        for x, impl in zip(leaves, impls, strict=True)
    ]
    return host, treedef, impls


def _wrap_keys(leaves: list[Any], impls: list[Any]) -> list[Any]:
    return [
        x if impl is None else jax.random.wrap_key_data(x, impl=impl)
        for x, impl in zip(leaves, impls, strict=True)
    ]


def _accepts_kwarg(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _skip_nonfinite(step_fn: Callable) -> Callable:
    """Wraps ``step_fn`` so that a step whose loss or new state is not finite is undone.

    The returned state keeps the old params/optimizer state but the new ``step`` (so the
    RNG and the data position move on); metrics get ``"skipped"`` (1 when undone).
    """

    def wrapped(state, batch, *extra, **kwargs):
        new_state, metrics = step_fn(state, batch, *extra, **kwargs)
        checks = [jnp.all(jnp.isfinite(metrics["loss"]))]
        for leaf in jax.tree.leaves(new_state):
            if not _is_key(leaf) and jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact):
                checks.append(jnp.all(jnp.isfinite(leaf)))
        ok = jnp.all(jnp.stack(checks))
        axis_name = kwargs.get("axis_name")
        if axis_name is not None:  # every device must take the same decision
            ok = jax.lax.pmin(ok.astype(jnp.int32), axis_name).astype(bool)
        kept = jax.tree.map(lambda n, o: n if _is_key(n) else jnp.where(ok, n, o), new_state, state)
        if hasattr(kept, "replace") and hasattr(new_state, "step"):
            kept = kept.replace(step=new_state.step)
        return kept, {**metrics, "skipped": (~ok).astype(jnp.int32)}

    return wrapped


def global_batch_array(sharding: NamedSharding, x: Any, global_rows: int) -> jax.Array:
    """This process's rows ``x`` of a global batch as one array laid out by ``sharding``.

    ``x`` already in that layout is returned as it is.
    """
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, (global_rows, *x.shape[1:]))


class ParallelStep:
    """A compiled train step together with the data placement rules of its mode.

    Call it as ``state, metrics = step(state, batch, *extra)`` where ``state`` is in the
    mode's device layout (``place_state``), ``batch`` holds this process's rows of the
    global batch (NumPy is fine; see ``process_rows``) and ``extra`` are replicated
    arguments such as a frozen teacher's variables (placed once and cached by identity).
    The input state is donated when ``donate=True``: do not use it after the call.

    Attributes:
      mode: one of ``PARALLEL_MODES``.
      mesh: the ``Mesh`` (``"sharding"``) or ``None``.
      axis_name: the data axis / ``pmap`` axis name.
      num_devices: number of devices (all processes) a global batch is split over.
      skip_nonfinite: whether non-finite steps are undone inside the step.
    """

    def __init__(
        self,
        step_fn: Callable,
        *,
        parallel: str = "none",
        mesh: Mesh | None = None,
        axis_name: str = DATA_AXIS,
        donate: bool = True,
        skip_nonfinite: bool = False,
    ):
        check_one_of("parallel", parallel, PARALLEL_MODES)
        if not callable(step_fn):
            raise TypeError(f"step_fn={step_fn!r} must be callable (state, batch, *extra)")
        if not isinstance(axis_name, str) or not axis_name:
            raise ValueError(f"axis_name={axis_name!r} must be a non-empty str")
        if mesh is not None and parallel != "sharding":
            raise ValueError(
                f"mesh= is only used with parallel='sharding', got parallel={parallel!r}"
            )
        self.mode = parallel
        self.axis_name = axis_name
        self.skip_nonfinite = bool(skip_nonfinite)
        self.step_fn = step_fn
        self.mesh = None
        self._extra_cache: tuple[tuple[int, ...], list[Any], tuple[Any, ...]] | None = None
        fn = _skip_nonfinite(step_fn) if skip_nonfinite else step_fn
        donate_argnums = (0,) if donate else ()
        if parallel == "none":
            if jax.process_count() > 1:
                raise ValueError(
                    f"parallel='none' trains on one device but this run has "
                    f"{jax.process_count()} processes; use 'sharding' or 'pmap'"
                )
            self.num_devices = 1
            self._fn = jax.jit(fn, donate_argnums=donate_argnums)
        elif parallel == "sharding":
            mesh = make_mesh(axis_name=axis_name) if mesh is None else mesh
            if not isinstance(mesh, Mesh):
                raise TypeError(f"mesh={mesh!r} must be a jax.sharding.Mesh")
            if axis_name not in mesh.axis_names:
                raise ValueError(
                    f"axis_name={axis_name!r} is not an axis of the mesh; "
                    f"mesh axes: {tuple(mesh.axis_names)}"
                )
            self.mesh = mesh
            self.num_devices = int(mesh.shape[axis_name])
            self._replicated = NamedSharding(mesh, PartitionSpec())
            self._data = NamedSharding(mesh, PartitionSpec(axis_name))
            self._fn = jax.jit(
                fn,
                out_shardings=(self._replicated, self._replicated),
                donate_argnums=donate_argnums,
            )
        else:
            if not _accepts_kwarg(step_fn, "axis_name"):
                raise TypeError(
                    f"parallel='pmap' calls step_fn(..., axis_name=...) so that it can "
                    f"lax.pmean its gradients; {step_fn!r} has no axis_name parameter"
                )
            self.num_devices = jax.device_count()
            self._fn = jax.pmap(
                functools.partial(fn, axis_name=axis_name),
                axis_name=axis_name,
                donate_argnums=donate_argnums,
            )
            self._pmap_place_cache: dict[Any, Callable] = {}
            local_mesh = Mesh(np.asarray(jax.local_devices(), dtype=object), ("local",))
            self._pmap_batch = NamedSharding(local_mesh, PartitionSpec("local"))

    def __repr__(self) -> str:
        return f"ParallelStep(mode={self.mode!r}, num_devices={self.num_devices})"

    # ----------------------------------------------------------------------- batches
    def check_batch_size(self, global_batch_size: int) -> None:
        """Raises ``ValueError`` unless the global batch splits evenly over the devices."""
        n = self.num_devices
        if global_batch_size % n or global_batch_size % jax.process_count():
            raise ValueError(
                f"the global batch size {global_batch_size} is not divisible by the "
                f"{n} devices ({jax.process_count()} processes) of parallel={self.mode!r}; "
                f"use a batch_size that is a multiple of {n}"
            )

    def process_rows(self, global_batch_size: int) -> slice:
        """The rows of every global batch that this process loads.

        Args:
          global_batch_size: rows in a global batch (divisible by ``num_devices``).

        Returns:
          A ``slice`` into the global batch (``slice(0, B)`` with one process).
        """
        self.check_batch_size(global_batch_size)
        if self.mode == "sharding":
            index_map = self._data.addressable_devices_indices_map((global_batch_size,))
            starts = sorted({idx[0].start or 0 for idx in index_map.values()})
            stops = sorted(
                {
                    global_batch_size if idx[0].stop is None else idx[0].stop
                    for idx in index_map.values()
                }
            )
            rows = slice(starts[0], stops[-1])
            per_shard = global_batch_size // self.num_devices
            if (rows.stop - rows.start) != per_shard * len(starts):
                raise ValueError(
                    "this process's devices do not hold a contiguous block of the mesh's "
                    f"{self.axis_name!r} axis; build the mesh with make_mesh()"
                )
            return rows
        per_process = global_batch_size // jax.process_count()
        start = jax.process_index() * per_process
        return slice(start, start + per_process)

    def place_batch(self, batch: PyTree) -> PyTree:
        """This process's rows of a global batch, laid out for the step.

        Args:
          batch: a pytree of arrays whose leading axis holds this process's rows.

        Returns:
          ``batch`` unchanged (``"none"``), global arrays sharded on the data axis
          (``"sharding"``) or arrays reshaped to ``(local_devices, rows_per_device, ...)``
          and split over the local devices (``"pmap"``). Placing twice is a no-op.
        """
        if self.mode == "none":
            return batch
        leaves = jax.tree.leaves(batch)
        target = self._data if self.mode == "sharding" else self._pmap_batch
        if all(isinstance(x, jax.Array) and x.sharding == target for x in leaves):
            return batch
        rows = {int(np.shape(x)[0]) for x in leaves}
        if len(rows) != 1:
            raise ValueError(f"batch leaves have different leading sizes {sorted(rows)}")
        (local_rows,) = rows
        self.check_batch_size(local_rows * jax.process_count())
        if self.mode == "sharding":
            global_rows = local_rows * jax.process_count()

            return jax.tree.map(lambda x: global_batch_array(self._data, x, global_rows), batch)
        n_local = jax.local_device_count()
        return jax.tree.map(
            lambda x: jax.device_put(
                np.asarray(x).reshape(n_local, local_rows // n_local, *np.shape(x)[1:]),
                self._pmap_batch,
            ),
            batch,
        )

    # -------------------------------------------------------------------- the state
    def place_state(self, tree: PyTree) -> PyTree:
        """Replicates a (host or single-device) pytree in the step's layout.

        Use it on the initial or restored ``TrainState`` and on extra arguments (frozen
        teacher variables). PRNG key leaves stay keys.

        Args:
          tree: a pytree of NumPy/JAX arrays, the same on every process.

        Returns:
          The tree on the default device (``"none"``), replicated over the mesh
          (``"sharding"``) or stacked over the local devices (``"pmap"``).
        """
        if self.mode == "none":
            return jax.device_put(tree)
        host, treedef, impls = _split_keys(tree)
        if self.mode == "sharding":
            if jax.process_count() == 1:
                placed = [jax.device_put(x, self._replicated) for x in host]
            else:
                placed = [
                    jax.make_array_from_process_local_data(self._replicated, x, x.shape)
                    for x in host
                ]
            wrap = jax.jit(lambda leaves: _wrap_keys(leaves, impls), out_shardings=self._replicated)
            if any(impl is not None for impl in impls):
                placed = wrap(placed)
            return jax.tree.unflatten(treedef, placed)
        n_local = jax.local_device_count()
        stacked = [np.broadcast_to(x, (n_local, *x.shape)) for x in host]
        key = (treedef, tuple(str(i) for i in impls))
        place = self._pmap_place_cache.get(key)
        if place is None:
            place = jax.pmap(lambda leaves: _wrap_keys(leaves, impls))
            self._pmap_place_cache[key] = place
        return jax.tree.unflatten(treedef, place(stacked))

    def local(self, tree: PyTree) -> PyTree:
        """One single-device copy of a replicated pytree in the step's layout.

        The inverse of ``place_state`` (for evaluation, checkpoints and the returned
        state): the first addressable replica, without the ``pmap`` device axis.
        """
        if self.mode == "none":
            return tree
        if self.mode == "sharding":
            return jax.tree.map(lambda x: x.addressable_data(0), tree)
        return jax.tree.map(lambda x: x.addressable_data(0)[0], tree)

    def host_metrics(self, metrics: PyTree) -> PyTree:
        """The step's metrics as NumPy values on the host (one replica)."""
        if self.mode == "none":
            return jax.device_get(metrics)
        if self.mode == "sharding":
            return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), metrics)
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], metrics)

    # -------------------------------------------------------------------- the call
    def _place_extra(self, extra: tuple[Any, ...]) -> tuple[Any, ...]:
        if not extra or self.mode == "none":
            return extra
        leaves = jax.tree.leaves(extra)
        ids = tuple(id(x) for x in leaves)
        if self._extra_cache is not None and self._extra_cache[0] == ids:
            return self._extra_cache[2]
        placed = self.place_state(extra)
        self._extra_cache = (ids, leaves, placed)  # keeps the sources alive: ids stay valid
        return placed

    def __call__(self, state: PyTree, batch: PyTree, *extra: Any) -> tuple[PyTree, Any]:
        """One step: ``(state, batch, *extra) -> (state, metrics)`` in the device layout."""
        return self._fn(state, self.place_batch(batch), *self._place_extra(extra))

    def lower(self, state: PyTree, batch: PyTree, *extra: Any) -> jax.stages.Lowered:
        """The step lowered for these arguments, as ``jax.jit(...).lower`` gives it.

        ``.compile().as_text()`` is the program XLA runs (its op names attribute a
        profile's time, see ``benchmarks/lm_step_profile.py``); ``.compile()
        .cost_analysis()`` counts its FLOPs. Lowering runs nothing and donates nothing.
        """
        if not hasattr(self._fn, "lower"):
            raise TypeError(
                "this step wraps a callable that is not a jax.jit / jax.pmap function "
                f"({type(self._fn).__name__}); it cannot be lowered"
            )
        return self._fn.lower(state, self.place_batch(batch), *self._place_extra(extra))


def as_parallel_step(train_fn: Callable) -> ParallelStep:
    """``train_fn`` if it is a ``ParallelStep``, else a ``"none"``-mode wrapper around it.

    Lets ``fit`` accept any compiled ``(state, batch) -> (state, metrics)`` callable.
    """
    if isinstance(train_fn, ParallelStep):
        return train_fn
    if not callable(train_fn):
        raise TypeError(f"train_fn={train_fn!r} must be callable (state, batch)")
    wrapper = ParallelStep.__new__(ParallelStep)
    ParallelStep.__init__(wrapper, train_fn, parallel="none", donate=False)
    wrapper._fn = train_fn  # already compiled by the caller: call it as it is
    return wrapper


class _BoundStep(ParallelStep):
    """A ``ParallelStep`` that appends frozen ``extra`` arguments to every call."""

    def __init__(self, step: ParallelStep, extra: tuple[Any, ...]):
        self.__dict__.update(vars(step))
        # "none" passes extras through as given: put them on the device once here
        self._bound_extra = jax.device_put(extra) if step.mode == "none" else extra

    def __call__(self, state, batch, *extra):
        return super().__call__(state, batch, *self._bound_extra, *extra)

    def lower(self, state, batch, *extra):
        return super().lower(state, batch, *self._bound_extra, *extra)


def bind_extra(step: ParallelStep, *extra: Any) -> ParallelStep:
    """``step`` with frozen ``extra`` arguments appended to every call.

    ``fit`` calls ``train_fn(state, batch)``; a step that also reads frozen inputs (a
    teacher's variables, say) gets them bound here, placed on the device(s) once.

    Example:
      >>> step = bind_extra(make_train_step(target_fn=teacher_fn), teacher.variables)
      >>> state, metrics = step(state, batch)
    """
    if not isinstance(step, ParallelStep):
        raise TypeError(f"step must be a ParallelStep (make_train_step), got {type(step).__name__}")
    cls = type(step)
    if cls is ParallelStep:
        cls = _BoundStep
    elif not issubclass(cls, _BoundStep):  # a subclass (ShardedStep) keeps its own layout
        cls = type(f"Bound{cls.__name__}", (_BoundStep, cls), {})
    return cls(step, extra)
