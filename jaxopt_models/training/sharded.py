"""FSDP and tensor parallelism: train steps over a 2-D ``("data", "tensor")`` mesh.

Two modes beside those of ``parallel.py``, both ``jax.jit`` with named shardings:

* ``"fsdp"``: every param, and every optimizer-state leaf that mirrors a param, is split
  over the ``data`` axis, the axis the batch is split over too (fully sharded data
  parallel). A param is split on the dimension its ``param_specs`` entry gives for the
  ``data`` axis or, by default, on its largest dimension that is free and divisible by the
  axis size; a param with no such dimension stays replicated. Specs naming the ``tensor``
  axis add tensor parallelism on top.
* ``"tensor"``: params are split over the ``tensor`` axis as ``param_specs`` says (e.g.
  attention heads and MLP units); the batch is split over ``data`` and replicated over
  ``tensor``; with ``data`` > 1 that is data + tensor parallelism.

The step is written for the global batch; XLA inserts the collectives (all-gathers of the
weights, reduce-scatters of the gradients). The caller gives ``param_specs``, a pytree of
``PartitionSpec`` over mesh axes shaped like the params (``models.transformer.mesh_specs``
derives them from logical axis names); the engine knows no model. ``place_state`` lays a
single-copy state out, ``local`` gathers it back into one device's memory (evaluation,
checkpoints), and in a multi-process run each process feeds only its rows of every batch
(``process_rows``), as in ``"sharding"`` mode.
"""

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxopt_models.checks import check_one_of
from jaxopt_models.training.parallel import (
    DATA_AXIS,
    ParallelStep,
    _is_key,
    _skip_nonfinite,
    global_batch_array,
)
from jaxopt_models.typing import PyTree

SHARDED_MODES = ("fsdp", "tensor")
TENSOR_AXIS = "tensor"


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def make_device_mesh(
    shape: Mapping[str, int] | None = None, devices: Sequence[Any] | None = None
) -> Mesh:
    """A ``Mesh`` of the given axis sizes over ``devices`` (default: every device).

    Devices fill the mesh in ``jax.devices()`` order (row-major), so the devices of one
    process are contiguous and the last axis (``tensor``) spans neighbouring devices.

    Args:
      shape: ``{axis name: size}`` in mesh order; one size may be ``-1`` (the devices
        left). Default ``{"data": -1, "tensor": 1}``.
      devices: the devices (default ``jax.devices()``).

    Returns:
      A ``Mesh`` whose axes are the keys of ``shape``.

    Raises:
      ValueError: a size that is not a positive int or -1, more than one -1, or sizes
        whose product is not the number of devices.

    Example:
      >>> mesh = make_device_mesh({"data": 4, "tensor": 2})  # on 8 devices
      >>> dict(mesh.shape)
      {'data': 4, 'tensor': 2}
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices=[] must name at least one device")
    shape = {DATA_AXIS: -1, TENSOR_AXIS: 1} if shape is None else shape
    if not isinstance(shape, Mapping) or not shape:
        raise TypeError(f"shape={shape!r} must be a non-empty mapping {{axis name: size}}")
    names = list(shape)
    sizes = [shape[n] for n in names]
    for name, size in zip(names, sizes, strict=True):
        if not isinstance(name, str) or not name:
            raise ValueError(f"shape={dict(shape)!r}: axis name {name!r} must be a non-empty str")
        if not _is_int(size) or (size < 1 and size != -1):
            raise ValueError(
                f"shape={dict(shape)!r}: the size of axis {name!r} is {size!r}; "
                "allowed: a positive int, or -1 for the devices left"
            )
    if sizes.count(-1) > 1:
        raise ValueError(f"shape={dict(shape)!r}: at most one axis size may be -1")
    n = len(devices)
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n % known:
            raise ValueError(
                f"shape={dict(shape)!r}: the number of devices ({n}) is not a multiple of {known}"
            )
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        raise ValueError(
            f"shape={dict(shape)!r} holds {math.prod(sizes)} devices but there are {n}; "
            f"the sizes must multiply to {n}"
        )
    return Mesh(np.asarray(devices, dtype=object).reshape(sizes), tuple(names))


def _entries(spec: PartitionSpec, ndim: int) -> list[tuple[str, ...]]:
    """The mesh axes of each of ``ndim`` dimensions (``()`` for an unsplit one)."""
    out = []
    for entry in (*tuple(spec), *([None] * (ndim - len(spec)))):
        if entry is None:
            out.append(())
        else:
            out.append(tuple(entry) if isinstance(entry, (tuple, list)) else (entry,))
    return out


def _spec(entries: list[tuple[str, ...]]) -> PartitionSpec:
    """The ``PartitionSpec`` of per-dimension axes, trailing unsplit dimensions dropped."""
    values = [None if not e else e[0] if len(e) == 1 else e for e in entries]
    while values and values[-1] is None:
        values.pop()
    return PartitionSpec(*values)


def _is_spec(x: Any) -> bool:
    return isinstance(x, PartitionSpec)


def _add_axis(
    spec: PartitionSpec, shape: tuple[int, ...], axis_sizes: Mapping[str, int], axis_name: str
) -> PartitionSpec:
    """``spec`` with ``axis_name`` added on the dimension ``fsdp_specs`` picks."""
    n = axis_sizes[axis_name]
    entries = _entries(spec, len(shape))
    if n == 1 or any(axis_name in e for e in entries):
        return spec

    def split(e: tuple[str, ...]) -> int:
        return math.prod(axis_sizes.get(a, 1) for a in e)

    free = [d for d, e in enumerate(entries) if not e and shape[d] and shape[d] % n == 0]
    if not free:  # share an already split dimension when it stays divisible
        free = [d for d, e in enumerate(entries) if e and shape[d] % (n * split(e)) == 0]
    if not free:
        return spec
    dim = max(free, key=lambda d: (shape[d], -d))
    entries[dim] = (*entries[dim], axis_name)
    return _spec(entries)


def fsdp_specs(
    params: PyTree,
    axis_sizes: Mapping[str, int],
    specs: PyTree | None = None,
    axis_name: str = DATA_AXIS,
) -> PyTree:
    """Adds ``axis_name`` (the FSDP axis) to the spec of every param that can take it.

    A param whose spec does not name ``axis_name`` is split over it on its largest
    dimension that no other axis splits and that the axis size divides (the first such
    dimension on ties); failing that, on an already split dimension that stays divisible;
    failing that it stays replicated over ``axis_name``.

    Args:
      params: a pytree of arrays (or ``jax.ShapeDtypeStruct``; only shapes are read).
      axis_sizes: ``{mesh axis: size}`` (``dict(mesh.shape)``); must hold ``axis_name``.
      specs: a ``PartitionSpec`` per param (the other axes, e.g. ``tensor``), or ``None``
        for none.
      axis_name: the mesh axis the params are split over.

    Returns:
      A pytree of ``PartitionSpec`` shaped like ``params``.

    Example:
      >>> fsdp_specs({"kernel": jnp.zeros((16, 64)), "bias": jnp.zeros(64)}, {"data": 8})
      {'bias': PartitionSpec('data',), 'kernel': PartitionSpec(None, 'data')}
    """
    if not isinstance(axis_sizes, Mapping) or axis_name not in axis_sizes:
        raise ValueError(
            f"axis_sizes={axis_sizes!r} must be a mapping {{mesh axis: size}} holding "
            f"axis_name={axis_name!r}"
        )
    for name, size in axis_sizes.items():
        if not _is_int(size) or size < 1:
            raise ValueError(f"axis_sizes[{name!r}]={size!r} must be an int >= 1")
    if specs is None:
        specs = jax.tree.map(lambda _: PartitionSpec(), params)
    return jax.tree.map(
        lambda s, x: _add_axis(s, tuple(np.shape(x)), axis_sizes, axis_name),
        specs,
        params,
        is_leaf=_is_spec,
    )


def check_param_specs(params: PyTree, specs: PyTree, mesh: Mesh) -> PyTree:
    """Checks that ``specs`` (one ``PartitionSpec`` per param) fit ``params`` on ``mesh``.

    Args:
      params: a pytree of arrays (or shapes).
      specs: a pytree of ``PartitionSpec`` with the params' structure.
      mesh: the mesh whose axes the specs name.

    Returns:
      The specs, one ``PartitionSpec`` per param, in the params' tree structure.

    Raises:
      ValueError: a different tree structure (naming the first differing param), a spec
        with more entries than dimensions, an axis the mesh lacks or named twice, or a
        dimension its axes do not divide.

    Example:
      >>> specs = check_param_specs(params, {"w": PartitionSpec(None, "tensor")}, mesh)
    """
    p_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    s_flat = jax.tree_util.tree_flatten_with_path(specs, is_leaf=_is_spec)[0]
    s_paths = [jax.tree_util.keystr(p) for p, _ in s_flat]
    if p_paths != s_paths:
        missing = sorted(set(p_paths) - set(s_paths)) or ["(none)"]
        extra = sorted(set(s_paths) - set(p_paths)) or ["(none)"]
        raise ValueError(
            "param_specs must have the params' tree structure; params without a spec: "
            f"{missing[:3]}, specs without a param: {extra[:3]}"
        )
    sizes = dict(mesh.shape)
    out = []
    for path, (spec, x) in zip(
        p_paths, zip([s for _, s in s_flat], jax.tree.leaves(params), strict=True), strict=True
    ):
        if spec is None:
            spec = PartitionSpec()
        if not isinstance(spec, PartitionSpec):
            raise TypeError(f"param_specs{path}={spec!r} must be a jax.sharding.PartitionSpec")
        shape = tuple(np.shape(x))
        if len(spec) > len(shape):
            raise ValueError(
                f"param_specs{path}={spec} has {len(spec)} entries but the param has "
                f"{len(shape)} dimensions (shape {shape})"
            )
        entries = _entries(spec, len(shape))
        used = [a for e in entries for a in e]
        for a in used:
            if a not in sizes:
                raise ValueError(
                    f"param_specs{path}={spec} names the axis {a!r}, which the mesh lacks; "
                    f"mesh axes: {tuple(mesh.axis_names)}"
                )
        if len(set(used)) != len(used):
            raise ValueError(f"param_specs{path}={spec} names a mesh axis twice")
        for d, e in enumerate(entries):
            n = math.prod(sizes[a] for a in e)
            if shape[d] % n:
                raise ValueError(
                    f"param_specs{path}={spec} splits dimension {d} of the param of shape "
                    f"{shape} ({shape[d]}) over {n} devices (mesh axes {e}); it must divide it"
                )
        out.append(spec)
    return jax.tree.unflatten(jax.tree.structure(params), out)


def _mirrors(node: Any, treedef: Any, shapes: list[tuple[int, ...]]) -> bool:
    """Whether ``node`` has the params' tree structure and leaf shapes (e.g. Adam's ``mu``)."""
    leaves, node_def = jax.tree.flatten(node)
    return node_def == treedef and [tuple(np.shape(x)) for x in leaves] == shapes


def state_shardings(
    state: PyTree, param_shardings: PyTree, replicated: jax.sharding.Sharding
) -> PyTree:
    """The sharding of every leaf of a train state: params and their optimizer mirrors split.

    ``state.params`` get ``param_shardings``; every subtree of ``state.opt_state`` with
    the params' structure and shapes (Adam's moments, pruning masks, accumulated
    gradients, ...) gets them too; every other leaf (counters, scalars, the RNG key, model
    collections) gets ``replicated``. A tree without ``params``/``opt_state`` fields is
    replicated whole.

    Args:
      state: a ``TrainState`` (or any pytree).
      param_shardings: a sharding per param, in the params' tree structure.
      replicated: the sharding of everything else.

    Returns:
      A pytree of shardings shaped like ``state`` (usable as ``jit``'s ``out_shardings``).

    Example:
      >>> shardings = state_shardings(state, param_shardings, NamedSharding(mesh, P()))
    """
    everything = jax.tree.map(lambda _: replicated, state)
    if not all(hasattr(state, f) for f in ("params", "opt_state", "replace")):
        return everything
    treedef = jax.tree.structure(state.params)
    shapes = [tuple(np.shape(x)) for x in jax.tree.leaves(state.params)]

    def is_mirror(node):
        return _mirrors(node, treedef, shapes)

    opt = jax.tree.map(
        lambda node: param_shardings if is_mirror(node) else replicated,
        state.opt_state,
        is_leaf=is_mirror,
    )
    return everything.replace(params=param_shardings, opt_state=opt)


def _tree_key(tree: PyTree) -> tuple[Any, ...]:
    leaves, treedef = jax.tree.flatten(tree)
    return (treedef, tuple((tuple(np.shape(x)), str(getattr(x, "dtype", ""))) for x in leaves))


class ShardedStep(ParallelStep):
    """A train step compiled over a 2-D mesh with sharded params (``"fsdp"``/``"tensor"``).

    Called like every ``ParallelStep``: ``state, metrics = step(state, batch, *extra)`` with
    ``state`` laid out by ``place_state`` and ``batch`` this process's rows; the input state
    is donated. ``extra`` arguments are replicated.

    Attributes:
      mode: ``"fsdp"`` or ``"tensor"``.
      mesh: the 2-D ``Mesh``.
      axis_name: the data axis (the batch is split over it; FSDP splits params over it).
      tensor_axis: the tensor-parallel axis.
      num_devices: the size of the data axis (the number of pieces a global batch is split
        into); ``mesh.size`` devices run the step.
      param_specs: the ``PartitionSpec`` tree given (``None``: FSDP's default).
    """

    def __init__(
        self,
        step_fn: Callable,
        *,
        parallel: str = "fsdp",
        mesh: Mesh | None = None,
        param_specs: PyTree | None = None,
        axis_name: str = DATA_AXIS,
        tensor_axis: str = TENSOR_AXIS,
        donate: bool = True,
        skip_nonfinite: bool = False,
    ):
        check_one_of("parallel", parallel, SHARDED_MODES)
        if not callable(step_fn):
            raise TypeError(f"step_fn={step_fn!r} must be callable (state, batch, *extra)")
        for name, value in (("axis_name", axis_name), ("tensor_axis", tensor_axis)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name}={value!r} must be a non-empty str")
        if parallel == "tensor" and param_specs is None:
            raise ValueError(
                "parallel='tensor' needs param_specs= (a PartitionSpec per param naming the "
                f"{tensor_axis!r} axis, e.g. from models.transformer.mesh_specs)"
            )
        if mesh is None:
            shape = {axis_name: -1, tensor_axis: 1}
            if parallel == "tensor":
                shape = {axis_name: 1, tensor_axis: -1}
            mesh = make_device_mesh(shape)
        if not isinstance(mesh, Mesh):
            raise TypeError(f"mesh={mesh!r} must be a jax.sharding.Mesh")
        if axis_name not in mesh.axis_names:
            raise ValueError(
                f"axis_name={axis_name!r} is not an axis of the mesh; "
                f"mesh axes: {tuple(mesh.axis_names)}"
            )
        self.mode = parallel
        self.mesh = mesh
        self.axis_name = axis_name
        self.tensor_axis = tensor_axis
        self.param_specs = param_specs
        self.skip_nonfinite = bool(skip_nonfinite)
        self.step_fn = step_fn
        self.num_devices = int(mesh.shape[axis_name])
        self._extra_cache = None
        self._replicated = NamedSharding(mesh, PartitionSpec())
        self._data = NamedSharding(mesh, PartitionSpec(axis_name))
        self._step = _skip_nonfinite(step_fn) if skip_nonfinite else step_fn
        self._donate = (0,) if donate else ()
        self._layouts: dict[Any, PyTree] = {}
        self._fns: dict[Any, Callable] = {}
        self._gather = jax.jit(lambda tree: tree, out_shardings=self._replicated)
        data_dim = mesh.axis_names.index(axis_name)
        mine = jax.process_index()
        self._local_slots = sorted(
            {idx[data_dim] for idx, d in np.ndenumerate(mesh.devices) if d.process_index == mine}
        )
        if not self._local_slots:
            raise ValueError(
                f"the mesh {dict(mesh.shape)} holds none of the devices of process {mine}; "
                "a mesh must span every process of the run"
            )

    def __repr__(self) -> str:
        return f"ShardedStep(mode={self.mode!r}, mesh={dict(self.mesh.shape)})"

    # ------------------------------------------------------------------- layouts
    def param_shardings(self, params: PyTree) -> PyTree:
        """The ``NamedSharding`` of every param (the checked specs; FSDP's split added).

        Args:
          params: the params pytree (arrays or shapes).

        Returns:
          A ``NamedSharding`` per param, in the params' tree structure.

        Raises:
          ValueError: ``param_specs`` that do not fit ``params`` on the mesh.
        """
        specs = self.param_specs
        if specs is None:
            specs = jax.tree.map(lambda _: PartitionSpec(), params)
        specs = check_param_specs(params, specs, self.mesh)
        if self.mode == "fsdp":
            specs = fsdp_specs(params, dict(self.mesh.shape), specs, self.axis_name)
        return jax.tree.map(lambda s: NamedSharding(self.mesh, s), specs, is_leaf=_is_spec)

    def shardings(self, tree: PyTree) -> PyTree:
        """The sharding of every leaf of ``tree`` (a ``TrainState``: see ``state_shardings``;
        anything else: replicated)."""
        key = _tree_key(tree)
        out = self._layouts.get(key)
        if out is None:
            if all(hasattr(tree, f) for f in ("params", "opt_state", "replace")):
                out = state_shardings(tree, self.param_shardings(tree.params), self._replicated)
            else:
                out = jax.tree.map(lambda _: self._replicated, tree)
            self._layouts[key] = out
        return out

    # ----------------------------------------------------------------------- batches
    def check_batch_size(self, global_batch_size: int) -> None:
        """Raises ``ValueError`` unless the global batch splits evenly over the data axis."""
        n = self.num_devices
        if global_batch_size % n:
            raise ValueError(
                f"the global batch size {global_batch_size} is not divisible by the "
                f"{n} devices of the {self.axis_name!r} axis of parallel={self.mode!r} "
                f"(mesh {dict(self.mesh.shape)}); use a batch_size that is a multiple of {n}"
            )

    def process_rows(self, global_batch_size: int) -> slice:
        """The rows of every global batch that this process loads (its data-axis slots)."""
        self.check_batch_size(global_batch_size)
        per = global_batch_size // self.num_devices
        lo, hi = self._local_slots[0], self._local_slots[-1] + 1
        if hi - lo != len(self._local_slots):
            raise ValueError(
                "this process's devices do not hold a contiguous block of the mesh's "
                f"{self.axis_name!r} axis; build the mesh with make_device_mesh()"
            )
        return slice(lo * per, hi * per)

    def place_batch(self, batch: PyTree) -> PyTree:
        """This process's rows of a global batch as global arrays split over the data axis
        (replicated over the other axes)."""
        leaves = jax.tree.leaves(batch)
        if all(isinstance(x, jax.Array) and x.sharding == self._data for x in leaves):
            return batch
        rows = {int(np.shape(x)[0]) for x in leaves}
        if len(rows) != 1:
            raise ValueError(f"batch leaves have different leading sizes {sorted(rows)}")
        (local_rows,) = rows
        slots = len(self._local_slots)
        if local_rows % slots:
            if slots == self.num_devices:  # this process holds the whole data axis
                self.check_batch_size(local_rows)
            raise ValueError(
                f"this process's {local_rows} batch rows do not split over its {slots} "
                f"devices of the {self.axis_name!r} axis; use a global batch size that is "
                f"a multiple of {self.num_devices}"
            )
        global_rows = local_rows // slots * self.num_devices
        self.check_batch_size(global_rows)

        return jax.tree.map(lambda x: global_batch_array(self._data, x, global_rows), batch)

    # --------------------------------------------------------------------- the state
    def place_state(self, tree: PyTree) -> PyTree:
        """Lays a single-copy pytree out on the mesh: a ``TrainState``'s params and their
        optimizer mirrors split, everything else replicated.

        Args:
          tree: a pytree of NumPy/JAX arrays, the same on every process.

        Returns:
          The tree as global arrays with the shardings of ``shardings(tree)``.

        Example:
          >>> state = step.place_state(state)
        """
        shardings = jax.tree.leaves(self.shardings(tree))
        leaves, treedef = jax.tree.flatten(tree)
        placed, keys = [], []
        for x, sharding in zip(leaves, shardings, strict=True):
            if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
                placed.append(x)
            elif _is_key(x):
                data = np.asarray(jax.device_get(jax.random.key_data(x)))
                keys.append((len(placed), jax.random.key_impl(x)))
                placed.append(
                    jax.make_array_from_callback(data.shape, self._replicated, data.__getitem__)
                )
            else:
                host = np.asarray(jax.device_get(x))
                placed.append(jax.make_array_from_callback(host.shape, sharding, host.__getitem__))
        if keys:
            impls = [impl for _, impl in keys]
            wrap = jax.jit(
                lambda ks: [
                    jax.random.wrap_key_data(k, impl=i) for k, i in zip(ks, impls, strict=True)
                ],
                out_shardings=self._replicated,
            )
            for (i, _), key in zip(keys, wrap([placed[i] for i, _ in keys]), strict=True):
                placed[i] = key
        return jax.tree.unflatten(treedef, placed)

    def local(self, tree: PyTree) -> PyTree:
        """A single-device copy of a pytree in the step's layout: the inverse of
        ``place_state`` (for evaluation, checkpoints and the returned state).

        The split leaves are all-gathered (a collective: every process must call it), so
        the whole tree must fit in one device's memory.
        """
        return jax.tree.map(lambda x: x.addressable_data(0), self._gather(tree))

    def host_metrics(self, metrics: PyTree) -> PyTree:
        """The step's (replicated) metrics as NumPy values on the host."""
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), metrics)

    # ---------------------------------------------------------------------- the call
    def __call__(self, state: PyTree, batch: PyTree, *extra: Any) -> tuple[PyTree, Any]:
        """One step: ``(state, batch, *extra) -> (state, metrics)`` on the mesh."""
        key = _tree_key(state)
        fn = self._fns.get(key)
        if fn is None:  # the new state keeps the layout of the state it replaces
            out = (self.shardings(state), self._replicated)
            fn = jax.jit(self._step, out_shardings=out, donate_argnums=self._donate)
            self._fns[key] = fn
        return fn(state, self.place_batch(batch), *self._place_extra(extra))


def per_device_bytes(tree: PyTree) -> int:
    """Bytes one device holds of ``tree`` (the first addressable shard of every leaf).

    Args:
      tree: a pytree of ``jax.Array``.

    Returns:
      The sum over leaves of ``x.addressable_shards[0].data.nbytes``.

    Example:
      >>> per_device_bytes(step.place_state(state).params)
    """
    return int(
        sum(
            x.addressable_shards[0].data.nbytes
            for x in jax.tree.leaves(tree)
            if isinstance(x, jax.Array) and not _is_key(x)
        )
    )
