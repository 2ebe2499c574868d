"""The compression pipeline: dense → pruned → (slimmed) → shared → (student) → quantized → file.

``compress_and_evaluate(config, workdir)`` composes the training loop with the
compression primitives, as Deep Compression (Han et al., 2016) does, one stage after the
other on the same model:

1. ``dense``: train the float model (``train_and_evaluate``).
2. ``pruned``: keep training with the ``pruning.prune`` transform chained after the
   optimizer; a Zhu & Gupta polynomial schedule raises every layer to its target
   sparsity, then the sparse model fine-tunes at that sparsity.
3. ``slimmed`` (optional, for channel pruning): ``compression.slim`` removes the pruned
   neurons / filters, giving a smaller dense model.
4. ``shared``: per-layer k-means weight sharing (``cluster_weights``), then centroid
   fine-tuning (``share_gradients`` keeps the weights tied and pruned weights at 0).
5. ``student`` (optional): distil the model into a smaller student
   (``train_and_distill``); later stages compress the student.
6. ``quantized``: the float tensors left (biases, kernels that are not shared) are
   quantized to integers (symmetric; per output channel for kernels).
7. ``file``: the Huffman-coded compressed file; it is loaded back and must predict
   exactly what the ``quantized`` model predicted on the whole test set.

Every stage is a row of a table (test accuracy, macro precision / recall / F1,
parameters, nonzeros, bytes of that stage's file on disk, compression ratio against the
float32 dense model, inference latency); the pipeline also sweeps one-shot pruning
sparsities and bit widths for the plots. Outputs in ``workdir``: ``stages.md`` (the
table), ``results.json``, ``model.jxcf`` (the compressed model), ``files/<stage>.jxcf``,
one sub-directory per training stage (``metrics.jsonl``, ``results.json``) and the PNG
plots of ``compress_report.write_plots``.
"""

import copy
import os
import tempfile
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxopt_models import compression, pruning, quantization
from jaxopt_models.checks import check_one_of
from jaxopt_models.data import Dataset, steps_per_epoch
from jaxopt_models.models import get_model
from jaxopt_models.training import compress_report
from jaxopt_models.training.config import default_config
from jaxopt_models.training.distill import Teacher, default_distill_config, train_and_distill
from jaxopt_models.training.io import atomic_write_bytes, atomic_write_json
from jaxopt_models.training.loop import (
    evaluate,
    fit,
    load_dataset,
    model_kwargs,
    train_and_evaluate,
)
from jaxopt_models.training.optimizers import make_optimizer
from jaxopt_models.training.pruning_config import find_prune_state
from jaxopt_models.training.state import TrainState, count_params
from jaxopt_models.training.steps import cross_entropy, make_eval_step, make_train_step
from jaxopt_models.typing import PyTree

STAGES = ("dense", "pruned", "slimmed", "shared", "student", "quantized", "file")
TABLE_COLUMNS = (
    "stage",
    "accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "params",
    "nonzeros",
    "bytes",
    "ratio",
    "latency_ms",
)


def _optimizer_config(name: str, learning_rate: float, schedule: str) -> ml_collections.ConfigDict:
    c = copy.deepcopy(default_config().optimizer)
    c.name, c.learning_rate, c.schedule = name, learning_rate, schedule
    return c


def default_compress_config() -> ml_collections.ConfigDict:
    """The base config of ``compress_and_evaluate``: ``default_config()`` plus the stages.

    The top-level fields (dataset, model, optimizer, num_epochs, batch_size, ...) train
    the dense model. Per-layer settings are dicts keyed by a layer name (``"Dense_0"``)
    or a layer kind (``"Conv"``, ``"Dense"``); an exact name wins over a kind.

    Fields:
      prune.enabled / epochs: the pruning stage and its length.
      prune.sparsity: target sparsity of every kernel not in ``prune.layers``.
      prune.layers: ``{layer or kind: target sparsity}`` (0 keeps a layer dense).
      prune.ramp_fraction: fraction of the stage's steps over which the polynomial
        schedule rises to the targets (the rest fine-tunes at the final sparsity).
      prune.frequency: steps between mask updates (0: a tenth of an epoch).
      prune.power: the schedule's exponent (3 in Zhu & Gupta).
      prune.scorer / structure / scope: as in ``pruning.prune`` (``"unstructured"`` or
        ``"channels"``; with channels the output layer is never pruned).
      prune.slim: after pruning, remove the pruned channels (``compression.slim``).
      prune.optimizer: the optimizer of the stage (see ``make_optimizer``).
      share.enabled / epochs: weight sharing and the centroid fine-tuning epochs.
      share.bits / share.layers: code width of every kernel / per layer or kind.
      share.init: k-means initialisation (``"linear"``, ``"density"``, ``"kmeans++"``).
      share.optimizer: the fine-tuning optimizer.
      student.enabled / epochs / model / optimizer: distil into this smaller model.
      student.teacher: ``"dense"`` (the dense model) or ``"compressed"`` (the model
        after the earlier stages).
      distill: ``default_distill_config()`` (loss, temperature, alpha).
      quantize.enabled / bits / bias_bits: integer widths of the float kernels left and
        of the 1-D leaves (biases, norm parameters).
      file.huffman: Huffman-code the final file's integer streams.
      sweep.sparsities: one-shot magnitude pruning levels of the dense model (plot).
      sweep.bits: weight-sharing and uniform-quantization widths of the pruned model.
      latency.batch_size / rounds / iters: inference latency per batch (median).

    Example:
      >>> config = default_compress_config()
      >>> config.model.name = "lenet300_100"
      >>> config.prune.layers = {"Dense_0": 0.92, "Dense_1": 0.91, "Dense_2": 0.74}
    """
    c = default_config()
    c.num_epochs = 10
    c.optimizer.schedule = "cosine"
    c.prune = ml_collections.ConfigDict()
    c.prune.enabled = True
    c.prune.epochs = 10
    c.prune.sparsity = 0.9
    c.prune.layers = ml_collections.ConfigDict()
    c.prune.ramp_fraction = 0.6
    c.prune.frequency = 0
    c.prune.power = 3.0
    c.prune.scorer = "magnitude"
    c.prune.structure = "unstructured"
    c.prune.scope = "layer"
    c.prune.slim = False
    c.prune.optimizer = _optimizer_config("adam", 1e-3, "cosine")
    c.share = ml_collections.ConfigDict()
    c.share.enabled = True
    c.share.epochs = 1
    c.share.bits = 5
    c.share.layers = ml_collections.ConfigDict()
    c.share.init = "linear"
    c.share.optimizer = _optimizer_config("adam", 1e-4, "constant")
    c.student = ml_collections.ConfigDict()
    c.student.enabled = False
    c.student.epochs = 10
    c.student.teacher = "dense"
    c.student.model = ml_collections.ConfigDict({"name": "mlp"})
    c.student.optimizer = _optimizer_config("adam", 1e-3, "cosine")
    c.distill = default_distill_config()
    c.quantize = ml_collections.ConfigDict()
    c.quantize.enabled = True
    c.quantize.bits = 8
    c.quantize.bias_bits = 8
    c.file = ml_collections.ConfigDict()
    c.file.huffman = True
    c.sweep = ml_collections.ConfigDict()
    c.sweep.sparsities = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
    c.sweep.bits = (2, 3, 4, 5, 6, 8)
    c.latency = ml_collections.ConfigDict()
    c.latency.batch_size = 256
    c.latency.rounds = 7
    c.latency.iters = 5
    c.checkpoint.every_steps = 0
    return c


class CompressedModel(NamedTuple):
    """A model at some stage of the pipeline.

    Attributes:
      model: the Flax module.
      params: the params it predicts with (masked, shared and quantized values applied).
      model_state: the other collections (``{}`` or ``{"batch_stats": ...}``).
      masks: boolean masks like ``params`` (``None`` leaves: dense) or ``None``.
      shared: the ``cluster_weights`` tree (``SharedTensor`` leaves) or ``None``.
      quantized: a tree like ``params`` with ``QTensor`` leaves where quantized, or ``None``.
    """

    model: Any
    params: PyTree
    model_state: PyTree
    masks: PyTree | None = None
    shared: PyTree | None = None
    quantized: PyTree | None = None

    @property
    def variables(self) -> dict[str, Any]:
        """``{"params": params, **model_state}``: what is saved and applied."""
        return {"params": self.params, **self.model_state}


# --------------------------------------------------------------------------- helpers


def layer_setting(mapping: Mapping[str, Any] | None, default: Any, path: str) -> Any:
    """The per-layer value for a leaf: exact layer name, else layer kind, else ``default``.

    Args:
      mapping: ``{"Dense_0": v, "Conv": w, ...}`` (``None``: no per-layer values).
      default: the value for layers the mapping does not name.
      path: the leaf's path, e.g. ``"Dense_0/kernel"`` (its first component is the layer).

    Returns:
      The value.

    Example:
      >>> layer_setting({"Conv": 8, "Dense_1": 4}, 5, "Conv_0/kernel")
      8
    """
    layer = path.split("/")[0]
    mapping = dict(mapping or {})
    if layer in mapping:
        return mapping[layer]
    kind = layer.rsplit("_", 1)[0]
    return mapping.get(kind, default)


def _check_layer_keys(mapping: Mapping[str, Any] | None, params: PyTree, arg: str) -> None:
    layers = {n.split("/")[0] for n, _ in _named(params)}
    kinds = {layer.rsplit("_", 1)[0] for layer in layers}
    unknown = sorted(set(dict(mapping or {})) - layers - kinds)
    if unknown:
        raise ValueError(
            f"config.{arg} names {unknown}, which match no layer; layers: {sorted(layers)}, "
            f"kinds: {sorted(kinds)}"
        )


def _named(tree: PyTree, is_leaf=None) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [("/".join(str(getattr(k, "key", k)) for k in p), leaf) for p, leaf in flat]


def _is_kernel(path: str, leaf: Any) -> bool:
    return jnp.ndim(leaf) > 1


def _stage_config(config, epochs: int, optimizer) -> ml_collections.ConfigDict:
    c = copy.deepcopy(config)
    with c.unlocked():
        c.num_epochs = int(epochs)
        c.optimizer = copy.deepcopy(optimizer)
        c.resume = False
    return c


def _make_state(cur: CompressedModel, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """A fresh train state on copies of ``cur``'s arrays (train steps donate their input)."""
    params = jax.tree.map(jnp.copy, cur.params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=jax.tree.map(jnp.copy, tx.init(params)),  # may hold e.g. shared indices
        model_state=jax.tree.map(jnp.copy, cur.model_state),
        rng=jax.random.key(seed),
        apply_fn=cur.model.apply,
        tx=tx,
    )


def _none_like(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda _: None, tree)


def _file_trees(cur: CompressedModel) -> dict[str, Any]:
    """``save_compressed`` arguments for the variables of ``cur``."""
    rest = {k: _none_like(v) for k, v in cur.model_state.items()}
    out: dict[str, Any] = {"params": cur.variables}
    for key in ("masks", "shared", "quantized"):
        tree = getattr(cur, key)
        out[key] = None if tree is None else {"params": tree, **rest}
    return out


def _save(path: str, cur: CompressedModel, huffman: bool) -> int:
    t = _file_trees(cur)
    return compression.save_compressed(
        path,
        t["params"],
        masks=t["masks"],
        shared=t["shared"],
        quantized=t["quantized"],
        huffman=huffman,
    )


def _encoded_size(cur: CompressedModel, huffman: bool = True) -> int:
    t = _file_trees(cur)
    return len(
        compression.encode_compressed(
            t["params"],
            masks=t["masks"],
            shared=t["shared"],
            quantized=t["quantized"],
            huffman=huffman,
        )
    )


def _counts(cur: CompressedModel) -> tuple[int, int]:
    """Parameters and nonzero parameters (running statistics are not parameters)."""
    leaves = jax.tree.leaves(cur.params)
    return int(sum(x.size for x in leaves)), int(sum(int(jnp.count_nonzero(x)) for x in leaves))


def _kernel_sparsity(params: PyTree) -> float:
    kernels = [x for p, x in _named(params) if _is_kernel(p, x)]
    total = sum(x.size for x in kernels)
    return 1.0 - sum(int(jnp.count_nonzero(x)) for x in kernels) / max(total, 1)


def _clean_masks(masks: PyTree) -> PyTree:
    """``None`` for masks that keep everything (biases, dense layers)."""
    return jax.tree.map(lambda m: None if bool(jnp.all(m)) else m, masks)


_NO_TX = optax.identity()  # one object, so compiled eval steps are reused across stages


def _inference_state(cur: CompressedModel) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=cur.params,
        opt_state=(),
        model_state=cur.model_state,
        rng=jax.random.key(0),
        apply_fn=cur.model.apply,
        tx=_NO_TX,
    )


def _evaluate(cur: CompressedModel, ds: Dataset, config, eval_fn) -> dict[str, Any]:
    return evaluate(
        _inference_state(cur),
        ds.x_test,
        ds.y_test,
        config.eval_batch_size,
        eval_fn,
        ds.num_classes,
    )


def measure_latency(
    models: Mapping[str, tuple[Any, PyTree]], x: np.ndarray, *, rounds: int, iters: int
) -> dict[str, float]:
    """Median seconds per inference call of each model on ``x``, interleaved rounds.

    Args:
      models: ``{name: (apply_fn, variables)}``.
      x: one input batch.
      rounds: rounds; each runs every model ``iters`` times, in a rotating order.
      iters: calls per model and round.

    Returns:
      ``{name: median seconds per call}``.

    Example:
      >>> measure_latency({"dense": (model.apply, variables)}, x, rounds=5, iters=3)
    """
    if rounds < 1 or iters < 1:
        raise ValueError(f"rounds={rounds!r} and iters={iters!r} must be >= 1")
    x = jnp.asarray(x)
    fns = {}
    for name, (apply_fn, variables) in models.items():
        fwd = jax.jit(lambda v, xb, f=apply_fn: f(v, xb, train=False))
        fns[name] = (fwd, variables)
        jax.block_until_ready(fwd(variables, x))
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            fwd, variables = fns[n]
            t0 = time.perf_counter()
            out = None
            for _ in range(iters):
                out = fwd(variables, x)
            jax.block_until_ready(out)
            times[n].append((time.perf_counter() - t0) / iters)
    return {n: float(np.median(v)) for n, v in times.items()}


# --------------------------------------------------------------------------- stages


class _Run:
    """The mutable bookkeeping of one pipeline run."""

    def __init__(self, config, workdir: str | None, ds: Dataset, files_dir: str):
        self.config = config
        self.workdir = workdir
        self.ds = ds
        self.files_dir = files_dir
        self.loss_fn = lambda logits, labels: cross_entropy(logits, labels, config.label_smoothing)
        self.eval_fn = make_eval_step(loss_fn=self.loss_fn)
        self.rows: list[dict[str, Any]] = []
        self.models: dict[str, CompressedModel] = {}
        self.points: list[dict[str, Any]] = []
        self.curves: dict[str, list[dict[str, Any]]] = {}
        self.float32_bytes = 0

    def subdir(self, name: str) -> str | None:
        return None if self.workdir is None else os.path.join(self.workdir, name)

    def train_fn(self):
        return make_train_step(
            loss_fn=self.loss_fn,
            parallel=self.config.get("parallel", "none"),
            skip_nonfinite=self.config.get("nan_policy") == "skip",
        )

    def record(
        self, stage: str, cur: CompressedModel, seconds: float, n_bytes: int | None = None, **extra
    ) -> dict[str, Any]:
        """Evaluates ``cur``, saves its file (unless ``n_bytes`` is given) and adds a row."""
        metrics = _evaluate(cur, self.ds, self.config, self.eval_fn)
        if n_bytes is None:
            n_bytes = _save(os.path.join(self.files_dir, f"{stage}.jxcf"), cur, False)
        n_params, nonzeros = _counts(cur)
        row = {
            "stage": stage,
            "accuracy": metrics["accuracy"],
            "macro_precision": metrics["macro_precision"],
            "macro_recall": metrics["macro_recall"],
            "macro_f1": metrics["macro_f1"],
            "loss": metrics["loss"],
            "params": n_params,
            "nonzeros": nonzeros,
            "kernel_sparsity": _kernel_sparsity(cur.params),
            "bytes": n_bytes,
            "ratio": self.float32_bytes / n_bytes,
            "seconds": seconds,
            **extra,
        }
        self.rows.append(row)
        self.models[stage] = cur
        self.points.append(
            {"kind": "stage", "label": stage, "accuracy": row["accuracy"], "bytes": n_bytes}
        )
        print(
            f"[compress] {stage:<9} accuracy {row['accuracy']:.4f}  nonzeros {nonzeros:,}  "
            f"{n_bytes:,} bytes ({row['ratio']:.1f}x)  {seconds:.0f} s",
            flush=True,
        )
        return {**row, "pred": metrics["pred"]}


def _prune_stage(run: _Run, cur: CompressedModel) -> CompressedModel:
    cfg = run.config.prune
    _check_layer_keys(cfg.get("layers"), cur.params, "prune.layers")
    targets = {
        path: float(layer_setting(cfg.get("layers"), cfg.sparsity, path))
        for path, leaf in _named(cur.params)
        if _is_kernel(path, leaf)
    }
    if cfg.structure == "channels":  # pruning logits would delete classes: keep them all
        out_layer = compression.layer_chain(cur.params)[-1]
        targets = {p: 0.0 if p.split("/")[0] == out_layer else t for p, t in targets.items()}
    for path, t in targets.items():
        if not 0.0 <= t < 1.0:
            raise ValueError(f"prune target sparsity {t!r} for {path!r} must be in [0, 1)")
    final = max(targets.values(), default=0.0)
    if final == 0.0:
        raise ValueError("config.prune asks for no sparsity at all; set prune.enabled=False")
    distribution = {
        path: (None if t == 0.0 else (lambda s, r=t / final: s * r)) for path, t in targets.items()
    }
    n_steps = steps_per_epoch(len(run.ds.x_train), run.config.batch_size)
    total = n_steps * int(cfg.epochs)
    frequency = int(cfg.frequency) or max(n_steps // 10, 1)
    end = max(int(round(float(cfg.ramp_fraction) * total)), 1)
    schedule = pruning.polynomial(final, 0, end, power=float(cfg.power), frequency=frequency)
    tx = optax.chain(
        make_optimizer(cfg.optimizer, total),
        pruning.prune(
            cfg.scorer,
            schedule,
            scope=cfg.scope,
            structure=cfg.structure,
            distribution=distribution,
        ),
    )
    state = _make_state(cur, tx, run.config.seed + 1)
    stage_cfg = _stage_config(run.config, cfg.epochs, cfg.optimizer)
    with stage_cfg.unlocked():
        stage_cfg.log_every_epochs = 1
    state, results = fit(
        stage_cfg,
        state,
        run.ds,
        run.subdir("pruned"),
        train_fn=run.train_fn(),
        eval_fn=run.eval_fn,
    )
    # tx above chains exactly one prune transform: its state holds the final masks
    masks = _clean_masks(find_prune_state(state.opt_state).masks)
    # Sparsity of the kernels after each epoch (from the schedule) vs test accuracy.
    sizes = {p: int(np.prod(jnp.shape(x))) for p, x in _named(cur.params) if p in targets}
    curve = []
    for rec in results["history"]:
        s = float(schedule(rec["step"]))  # after n updates the masks hold schedule(n)
        level = sum(sizes[p] * s * t / final for p, t in targets.items()) / sum(sizes.values())
        curve.append({"epoch": rec["epoch"], "sparsity": level, "accuracy": rec["test_accuracy"]})
    run.curves["gradual_pruning"] = curve
    return cur._replace(params=state.params, model_state=state.model_state, masks=masks)


def _share_stage(run: _Run, cur: CompressedModel) -> CompressedModel:
    cfg = run.config.share
    _check_layer_keys(cfg.get("layers"), cur.params, "share.layers")
    bits = lambda path, leaf: int(layer_setting(cfg.get("layers"), cfg.bits, path))
    shared = compression.cluster_weights(
        cur.params, bits=bits, init=cfg.init, filter_fn=_is_kernel, masks=cur.masks
    )
    params = compression.shared_params(shared)
    if int(cfg.epochs) > 0:
        n_steps = steps_per_epoch(len(run.ds.x_train), run.config.batch_size)
        tx = optax.chain(
            compression.share_gradients(shared),
            make_optimizer(cfg.optimizer, n_steps * int(cfg.epochs)),
        )
        state = _make_state(cur._replace(params=params), tx, run.config.seed + 2)
        state, _ = fit(
            _stage_config(run.config, cfg.epochs, cfg.optimizer),
            state,
            run.ds,
            run.subdir("shared"),
            train_fn=run.train_fn(),
            eval_fn=run.eval_fn,
        )
        shared = compression.update_codebooks(shared, state.params)
        params = compression.shared_params(shared)
        cur = cur._replace(model_state=state.model_state)
    return cur._replace(params=params, shared=shared)


def _student_stage(run: _Run, cur: CompressedModel) -> CompressedModel:
    cfg = run.config.student
    source = run.models["dense"] if cfg.teacher == "dense" else cur
    teacher = Teacher(apply_fn=source.model.apply, variables=source.variables)
    scfg = _stage_config(run.config, cfg.epochs, cfg.optimizer)
    with scfg.unlocked():
        scfg.model = copy.deepcopy(cfg.model)
    state, _ = train_and_distill(scfg, run.subdir("student"), teacher=teacher, dataset=run.ds)
    model = get_model(scfg.model.name, **model_kwargs(scfg, run.ds.num_classes))
    return CompressedModel(model, state.params, state.model_state)


def _quantize_stage(run: _Run, cur: CompressedModel) -> CompressedModel:
    cfg = run.config.quantize
    shared_paths = set()
    if cur.shared is not None:
        shared_paths = {
            p
            for p, x in _named(cur.shared, is_leaf=compression.is_shared)
            if compression.is_shared(x)
        }
    floating = lambda leaf: jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating)
    q = quantization.quantize_params(
        cur.params,
        bits=int(cfg.bits),
        axis=-1,
        symmetric=True,
        filter_fn=lambda p, x: p not in shared_paths and jnp.ndim(x) > 1 and floating(x),
    )
    q = quantization.quantize_params(
        q,
        bits=int(cfg.bias_bits),
        symmetric=True,
        filter_fn=lambda p, x: p not in shared_paths and jnp.ndim(x) == 1 and floating(x),
    )
    params = quantization.dequantize_params(q)
    if cur.shared is not None:  # shared leaves keep their exact reconstruction
        params = jax.tree.map(
            lambda p, s: compression.reconstruct(s) if compression.is_shared(s) else p,
            params,
            cur.shared,
            is_leaf=compression.is_shared,
        )
    return cur._replace(params=params, quantized=q)


def _sweeps(run: _Run, dense: CompressedModel, base: CompressedModel) -> None:
    """One-shot pruning of the dense model; sharing / uniform quantization of ``base``."""
    cfg = run.config.sweep
    scores = pruning.magnitude_scores(dense.params)
    one_shot = []
    for s in cfg.sparsities:
        masks = _clean_masks(pruning.compute_masks(scores, float(s), filter_fn=_is_kernel))
        cur = dense._replace(params=pruning.apply_masks(dense.params, masks), masks=masks)
        acc = _evaluate(cur, run.ds, run.config, run.eval_fn)["accuracy"]
        point = {"sparsity": float(s), "accuracy": acc, "bytes": _encoded_size(cur)}
        one_shot.append(point)
        run.points.append({"kind": "one-shot pruning", "label": f"{s:g}", **point})
    run.curves["one_shot_pruning"] = one_shot
    sharing, uniform = [], []
    for b in cfg.bits:
        b = int(b)
        shared = compression.cluster_weights(
            base.params, bits=b, init=run.config.share.init, filter_fn=_is_kernel, masks=base.masks
        )
        cur = base._replace(params=compression.shared_params(shared), shared=shared)
        acc = _evaluate(cur, run.ds, run.config, run.eval_fn)["accuracy"]
        point = {"bits": b, "accuracy": acc, "bytes": _encoded_size(cur)}
        sharing.append(point)
        run.points.append({"kind": "k-means sharing", "label": f"{b} bits", **point})
        if b >= 2:  # a symmetric grid needs 2 bits to hold the pruned zeros
            q = quantization.quantize_params(
                base.params, bits=b, axis=-1, symmetric=True, filter_fn=_is_kernel
            )
            cur = base._replace(params=quantization.dequantize_params(q), quantized=q)
            acc = _evaluate(cur, run.ds, run.config, run.eval_fn)["accuracy"]
            point = {"bits": b, "accuracy": acc, "bytes": _encoded_size(cur)}
            uniform.append(point)
            run.points.append({"kind": "uniform quantization", "label": f"{b} bits", **point})
    run.curves["sharing_bits"] = sharing
    run.curves["uniform_bits"] = uniform


def validate_compress_config(config, params: PyTree | None = None) -> None:
    """Checks a pipeline config eagerly (before any training).

    Args:
      config: the config (``default_compress_config()`` shape).
      params: optionally the model's params (e.g. from ``jax.eval_shape`` of its init);
        then ``prune.layers`` and ``share.layers`` must name existing layers or kinds.

    Raises:
      ValueError: a missing section, a negative epoch count, ``prune.slim`` without
        channel pruning, an unknown ``student.teacher`` or a per-layer key that names
        no layer.

    Example:
      >>> validate_compress_config(get_config())
    """
    for section in ("prune", "share", "student", "quantize", "file", "sweep", "latency"):
        if config.get(section) is None:
            raise ValueError(
                f"config.{section} is missing; start the config from "
                "training.default_compress_config()"
            )
    for key in ("prune.epochs", "share.epochs", "student.epochs"):
        section, field = key.split(".")
        value = config[section][field]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"config.{key}={value!r} must be an int >= 0")
    if config.prune.enabled and config.prune.epochs < 1:
        raise ValueError("config.prune.epochs must be >= 1 when prune.enabled")
    if config.student.enabled and config.student.epochs < 1:
        raise ValueError("config.student.epochs must be >= 1 when student.enabled")
    if config.prune.slim and config.prune.structure != "channels":
        raise ValueError(
            f"config.prune.slim=True needs prune.structure='channels', got "
            f"{config.prune.structure!r}"
        )
    check_one_of("config.student.teacher", config.student.teacher, ("dense", "compressed"))
    if params is not None:
        _check_layer_keys(config.prune.get("layers"), params, "prune.layers")
        _check_layer_keys(config.share.get("layers"), params, "share.layers")


# --------------------------------------------------------------------------- pipeline


def compress_and_evaluate(
    config, workdir: str | None, *, dataset: Dataset | None = None
) -> tuple[CompressedModel, dict[str, Any]]:
    """Runs the compression pipeline and reports every stage.

    Args:
      config: a ``ConfigDict`` from ``default_compress_config()`` (with overrides).
      workdir: output directory (see the module docstring); ``None`` writes only the
        stage files, to a temporary directory that is removed.
      dataset: use this ``Dataset`` instead of loading ``config.dataset``.

    Returns:
      ``(final, results)``: the final ``CompressedModel`` (what the file holds) and a
      dict with ``stages`` (one row per stage, columns ``TABLE_COLUMNS`` and more),
      ``table`` (markdown), ``curves`` and ``points`` (the plots' data), ``roundtrip``
      (the load check), ``size_report`` (bytes per layer of the final file),
      ``float32_bytes`` and ``config``.

    Raises:
      ValueError: a bad config.
      RuntimeError: the loaded file does not predict exactly what the final model did.

    Example:
      >>> final, results = compress_and_evaluate(get_config(), "runs/deep_compression")
      >>> print(results["table"])
    """
    validate_compress_config(config)
    ds = load_dataset(config, dataset)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="compress-")
        files_dir = tmp.name
    else:
        files_dir = os.path.join(workdir, "files")
        os.makedirs(files_dir, exist_ok=True)
    try:
        model = get_model(config.model.name, **model_kwargs(config, ds.num_classes))
        shapes = jax.eval_shape(
            lambda x: model.init(jax.random.key(0), x, train=False), jnp.asarray(ds.x_train[:1])
        )
        validate_compress_config(config, shapes["params"])  # before hours of training
        run = _Run(config, workdir, ds, files_dir)
        t0 = time.perf_counter()
        state, _ = train_and_evaluate(config, run.subdir("dense"), dataset=ds)
        cur = CompressedModel(model, state.params, state.model_state)
        run.float32_bytes = 4 * count_params(cur.variables)
        run.record("dense", cur, time.perf_counter() - t0)
        dense = cur

        if config.prune.enabled:
            t0 = time.perf_counter()
            cur = _prune_stage(run, cur)
            run.record("pruned", cur, time.perf_counter() - t0)
            if config.prune.slim:
                t0 = time.perf_counter()
                s = compression.slim(cur.model, cur.params, cur.masks, model_state=cur.model_state)
                cur = CompressedModel(s.model, s.params, s.model_state, _clean_masks(s.masks))
                run.record(
                    "slimmed",
                    cur,
                    time.perf_counter() - t0,
                    kept={k: len(v) for k, v in s.kept.items()},
                )
        base = cur
        t0 = time.perf_counter()
        _sweeps(run, dense, base)
        sweep_seconds = time.perf_counter() - t0

        if config.share.enabled:
            t0 = time.perf_counter()
            cur = _share_stage(run, cur)
            run.record("shared", cur, time.perf_counter() - t0)
        if config.student.enabled:
            t0 = time.perf_counter()
            cur = _student_stage(run, cur)
            run.record("student", cur, time.perf_counter() - t0)
        if config.quantize.enabled:
            t0 = time.perf_counter()
            cur = _quantize_stage(run, cur)
            last = run.record("quantized", cur, time.perf_counter() - t0)
        else:
            last = dict(run.rows[-1])
            last["pred"] = _evaluate(cur, ds, config, run.eval_fn)["pred"]

        # The compressed file, loaded back: it must predict exactly what `cur` predicted.
        t0 = time.perf_counter()
        final_path = os.path.join(workdir if workdir is not None else files_dir, "model.jxcf")
        n_bytes = _save(final_path, cur, bool(config.file.huffman))
        loaded = compression.load_compressed(final_path)
        loaded_model = cur._replace(
            params=loaded["params"], model_state={k: loaded[k] for k in cur.model_state}
        )
        file_row = run.record("file", loaded_model, time.perf_counter() - t0, n_bytes=n_bytes)
        identical = bool(np.array_equal(file_row["pred"], last["pred"]))
        roundtrip = {
            "path": final_path,
            "predictions_identical": identical,
            "num_test": int(len(ds.y_test)),
            "mismatches": int(np.sum(file_row["pred"] != last["pred"])),
        }
        if not identical:
            raise RuntimeError(
                f"the compressed file {final_path} predicts differently from the model it "
                f"holds on {roundtrip['mismatches']} of {roundtrip['num_test']} test examples"
            )
        report = compression.size_report(**_file_trees(cur), huffman=bool(config.file.huffman))

        lat_cfg = config.latency
        x = ds.x_test[: int(lat_cfg.batch_size)]
        latency = measure_latency(
            {s: (m.model.apply, m.variables) for s, m in run.models.items()},
            x,
            rounds=int(lat_cfg.rounds),
            iters=int(lat_cfg.iters),
        )
        for row in run.rows:
            row["latency_ms"] = 1e3 * latency[row["stage"]]

        results = {
            "dataset": ds.name,
            "model": config.model.name,
            "num_train": int(len(ds.x_train)),
            "num_test": int(len(ds.x_test)),
            "float32_bytes": run.float32_bytes,
            "stages": run.rows,
            "curves": run.curves,
            "points": run.points,
            "roundtrip": roundtrip,
            "size_report": report,
            "latency_batch_size": int(len(x)),
            "sweep_seconds": sweep_seconds,
            "config": config.to_dict(),
        }
        results["table"] = compress_report.format_stage_table(run.rows)
        if workdir is not None:
            atomic_write_bytes(os.path.join(workdir, "stages.md"), results["table"].encode())
            atomic_write_json(os.path.join(workdir, "results.json"), results)
            compress_report.write_plots(results, workdir)
        return cur, results
    finally:
        if tmp is not None:
            tmp.cleanup()
