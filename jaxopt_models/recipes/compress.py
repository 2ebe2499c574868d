"""The compression recipe: a list of stages from a trained model to a compressed file.

``run(config, workdir)`` composes the training loop with the compression primitives, as
Deep Compression (Han et al., 2016) does, one stage after the other on the same model:

1. ``dense``: train the model (quantization-aware when ``config.quantization`` says so;
   every training stage and every evaluation then uses the same QAT model).
2. ``pruned``: keep training with ``config.pruning`` (the library's one pruning schema:
   ``pruning.prune`` chained after ``stages.prune.optimizer``; per-layer targets in
   ``pruning.layers`` follow the schedule in proportion), then fine-tune at that sparsity.
3. ``slimmed`` (``stages.prune.slim``, channel pruning): the pruned neurons / filters
   really removed (``compression.slim``).
4. ``shared``: per-layer k-means weight sharing (``config.sharing``) and centroid
   fine-tuning (``compression.share_gradients``).
5. ``student`` (``stages.student.enabled``): distil (``config.distillation``) into a
   smaller model; later stages compress the student.
6. ``quantized``: the float tensors left quantized to integers (``config.ptq``).
7. ``file``: the Huffman-coded file, loaded back; it must predict exactly what the
   ``quantized`` model predicted on the whole test split.

Each stage is a function ``(Context, CompressedModel) -> (CompressedModel, extras)`` in
:data:`STAGES`; the driver evaluates every stage's model on the test split and writes one
table row (test and validation accuracy, macro P/R/F1, parameters, nonzeros, bytes on disk,
compression ratio, latency). Every section is checked before the dense model trains. Outputs:
``stages.md``, ``results.json``, ``model.jxcf``, ``files/<stage>.jxcf``, one train run per
training stage and the PNG plots of ``recipes.report.write_plots``.
"""

import copy
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxopt_models import compression, pruning, quantization
from jaxopt_models.checks import check_one_of
from jaxopt_models.distillation import Teacher, teacher_logits
from jaxopt_models.recipes import build, report
from jaxopt_models.recipes import config as schema
from jaxopt_models.recipes.train import train
from jaxopt_models.training import (
    TrainState,
    atomic_write_bytes,
    atomic_write_json,
    count_params,
    initialize_distributed,
    make_eval_step,
    make_optimizer,
)
from jaxopt_models.tree import check_rules, is_kernel, named_leaves, rule_for
from jaxopt_models.typing import PyTree

STAGE_NAMES = ("dense", "pruned", "slimmed", "shared", "student", "quantized", "file")
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
RESULTS_FILE = "results.json"


def default_config() -> ml_collections.ConfigDict:
    """The compress recipe's config.

    The top-level fields (dataset, model, optimizer, num_epochs, batch_size, ...) train
    the dense model. The technique sections are the library's shared schemas:
      quantization: QAT of every training stage (float by default).
      pruning: the pruning stage's method, targets (``layers``) and schedule; the
        schedule's fractions refer to the stage's steps.
      sharing: k-means weight sharing (bits, per-layer bits, init).
      distillation: the student stage's loss.
      ptq: ``weight_bits`` / ``bias_bits`` of the quantized stage.
    Stage settings:
      stages.prune.enabled / epochs / optimizer / slim: the pruning stage (``slim``:
        remove pruned channels; needs ``pruning.structure='channels'``).
      stages.share.enabled / epochs / optimizer: sharing and centroid fine-tuning.
      stages.student.enabled / epochs / model / optimizer / teacher (``"dense"`` or
        ``"compressed"``: the model after the earlier stages).
      stages.quantize.enabled: the quantized stage.
      file.huffman: Huffman-code the final file's integer streams.
      sweep.sparsities / bits: one-shot pruning of the dense model; sharing and uniform
        quantization of the pruned model (for the plots).
      latency.batch_size / rounds / iters: inference latency per batch (median).
    """
    c = schema.base_config()
    c.num_epochs = 10
    c.optimizer.schedule = "cosine"
    c.checkpoint.every_seconds = 0.0
    c.plots = False
    c.quantization = schema.quantization_section()
    c.pruning = schema.pruning_section(
        method="magnitude", sparsity=0.9, end_fraction=0.6, frequency=0
    )
    c.sharing = schema.sharing_section()
    c.distillation = schema.distillation_section()
    c.ptq = schema.ptq_section(fields=("weight_bits", "bias_bits"))
    s = ml_collections.ConfigDict()
    s.prune = ml_collections.ConfigDict({"enabled": True, "epochs": 10, "slim": False})
    s.prune.optimizer = schema.optimizer_section("adam", 1e-3, "cosine")
    s.share = ml_collections.ConfigDict({"enabled": True, "epochs": 1})
    s.share.optimizer = schema.optimizer_section("adam", 1e-4, "constant")
    s.student = ml_collections.ConfigDict({"enabled": False, "epochs": 10, "teacher": "dense"})
    s.student.model = ml_collections.ConfigDict({"name": "mlp"})
    s.student.optimizer = schema.optimizer_section("adam", 1e-3, "cosine")
    s.quantize = ml_collections.ConfigDict({"enabled": True})
    c.stages = s
    c.file = ml_collections.ConfigDict({"huffman": True})
    c.sweep = ml_collections.ConfigDict()
    c.sweep.sparsities = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
    c.sweep.bits = (2, 3, 4, 5, 6, 8)
    c.latency = ml_collections.ConfigDict({"batch_size": 256, "rounds": 7, "iters": 5})
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


# --------------------------------------------------------------------------- context
class Context(NamedTuple):
    """What every stage reads (nothing in it changes during the run)."""

    config: Any
    data: build.Data
    workdir: str | None
    params_fn: Callable | None
    eval_fn: Callable


class StageResult(NamedTuple):
    """A stage's model and what it adds to the report."""

    model: "CompressedModel"
    row: dict[str, Any]
    curves: dict[str, list[dict[str, Any]]]


def _subdir(ctx: Context, name: str) -> str | None:
    return None if ctx.workdir is None else os.path.join(ctx.workdir, name)


def _stage_config(config, epochs: int, optimizer) -> ml_collections.ConfigDict:
    c = copy.deepcopy(config)
    with c.unlocked():
        c.num_epochs = int(epochs)
        c.optimizer = copy.deepcopy(optimizer)
        c.resume = False
    return c


def _evaluate(cur: "CompressedModel", x, y, ctx: Context) -> dict[str, Any]:
    return build.evaluate_classifier(
        _inference_state(cur),
        x,
        y,
        ctx.config.eval_batch_size,
        ctx.eval_fn,
        ctx.data.num_classes,
    )


def _train_stage(ctx, cur, name, epochs, optimizer, tx, seed_offset, results_extra=None):
    cfg = _stage_config(ctx.config, epochs, optimizer)
    cfg.seed = ctx.config.seed + seed_offset
    state, results = train(
        cfg,
        ctx.data,
        _subdir(ctx, name),
        model=cur.model,
        tx=tx,
        params_fn=ctx.params_fn,
        init_variables=cur.variables,
        description=name,
        results_extra=results_extra,
    )
    return state, results


def _prune_targets(config, params: PyTree) -> dict[str, Any]:
    """``config.pruning.layers`` plus, for channel pruning, the output layer kept whole."""
    layers = dict(config.pruning.get("layers") or {})
    if config.pruning.structure == "channels":  # pruning logits would delete classes
        out_layer = compression.layer_chain(params)[-1]
        layers.setdefault(out_layer, 0.0)
    return layers


def _pruning_section(config, params: PyTree):
    section = copy.deepcopy(config.pruning)
    with section.unlocked():
        section.layers = _prune_targets(config, params)
    return section


# --------------------------------------------------------------------------- stages
def dense_stage(ctx: Context, cur) -> StageResult:
    """Trains the model from scratch with ``config.optimizer`` (and QAT)."""
    n_steps = build.num_steps(len(ctx.data.x_train), ctx.config.batch_size)
    tx = make_optimizer(ctx.config.optimizer, n_steps * ctx.config.num_epochs)
    cfg = copy.deepcopy(ctx.config)
    state, _ = train(
        cfg,
        ctx.data,
        _subdir(ctx, "dense"),
        model=cur.model,
        tx=tx,
        params_fn=ctx.params_fn,
        description="dense",
    )
    return StageResult(cur._replace(params=state.params, model_state=state.model_state), {}, {})


def prune_stage(ctx: Context, cur) -> StageResult:
    """Gradual pruning with ``config.pruning`` after ``stages.prune.optimizer``."""
    cfg = ctx.config.stages.prune
    n_steps = build.num_steps(len(ctx.data.x_train), ctx.config.batch_size)
    total = n_steps * int(cfg.epochs)
    section = _pruning_section(ctx.config, cur.params)
    prune = build.build_pruning(
        section, total, steps_per_epoch=n_steps, seed=ctx.config.seed, params=cur.params
    )
    tx = build.with_pruning(make_optimizer(cfg.optimizer, total), prune)
    state, results = _train_stage(ctx, cur, "pruned", cfg.epochs, cfg.optimizer, tx, 1)
    masks = _clean_masks(pruning.find_prune_state(state.opt_state).masks)
    schedule, targets = build.pruning_schedule(
        section, total, steps_per_epoch=n_steps, params=cur.params
    )
    curve = [
        {
            "epoch": rec["epoch"],
            "sparsity": _scheduled_sparsity(schedule, targets, cur.params, rec["step"]),
            "accuracy": rec.get("val_accuracy", float("nan")),
        }
        for rec in results["history"]
    ]
    new = cur._replace(params=state.params, model_state=state.model_state, masks=masks)
    return StageResult(new, {}, {"gradual_pruning": curve})


def _scheduled_sparsity(schedule, targets: dict[str, float], params: PyTree, step: int) -> float:
    """Kernel sparsity after ``step`` updates: each kernel at ``schedule(step)`` scaled by
    its own target over the largest one (as ``build.build_pruning`` distributes it)."""
    final = max(targets.values(), default=0.0)
    sizes = {p: int(np.prod(np.shape(x))) for p, x in named_leaves(params) if p in targets}
    total_size = sum(sizes.values())
    if final == 0 or not total_size:
        return 0.0
    level = float(schedule(step))
    return sum(n * level * targets[p] / final for p, n in sizes.items()) / total_size


def slim_stage(ctx: Context, cur) -> StageResult:
    """Removes the pruned channels (``compression.slim``)."""
    s = compression.slim(cur.model, cur.params, cur.masks, model_state=cur.model_state)
    new = CompressedModel(s.model, s.params, s.model_state, _clean_masks(s.masks))
    return StageResult(new, {"kept": {k: len(v) for k, v in s.kept.items()}}, {})


def share_stage(ctx: Context, cur) -> StageResult:
    """k-means weight sharing (``config.sharing``) and centroid fine-tuning."""
    cfg, sharing = ctx.config.stages.share, ctx.config.sharing
    layers = dict(sharing.get("layers") or {})
    bits = lambda path, leaf: int(rule_for(layers, path, sharing.bits))
    shared = compression.cluster_weights(
        cur.params, bits=bits, init=sharing.init, filter_fn=is_kernel, masks=cur.masks
    )
    params = compression.shared_params(shared)
    if int(cfg.epochs) > 0:
        n_steps = build.num_steps(len(ctx.data.x_train), ctx.config.batch_size)
        tx = optax.chain(
            compression.share_gradients(shared),
            make_optimizer(cfg.optimizer, n_steps * int(cfg.epochs)),
        )
        state, _ = _train_stage(
            ctx, cur._replace(params=params), "shared", cfg.epochs, cfg.optimizer, tx, 2
        )
        shared = compression.update_codebooks(shared, state.params)
        params = compression.shared_params(shared)
        cur = cur._replace(model_state=state.model_state)
    return StageResult(cur._replace(params=params, shared=shared), {}, {})


def student_stage(ctx: Context, cur, dense) -> StageResult:
    """Distils ``dense`` or ``cur`` (``stages.student.teacher``) into the student model."""
    cfg = ctx.config.stages.student
    source = dense if cfg.teacher == "dense" else cur
    params_fn = ctx.params_fn or (lambda p: p)
    teacher = Teacher(
        lambda v, x, train=False: source.model.apply(
            {**v, "params": params_fn(v["params"])}, x, train=False
        ),
        source.variables,
    )
    logits = teacher_logits(teacher, ctx.data.x_train, ctx.config.distillation.teacher_batch_size)
    scfg = _stage_config(ctx.config, cfg.epochs, cfg.optimizer)
    with scfg.unlocked():
        scfg.model = copy.deepcopy(cfg.model)
        scfg.seed = ctx.config.seed + 3
    model = build.build_model(scfg.model, ctx.data.num_classes, ctx.config.quantization)
    state, _ = train(
        scfg,
        ctx.data,
        _subdir(ctx, "student"),
        model=model,
        tx=make_optimizer(
            cfg.optimizer,
            build.num_steps(len(ctx.data.x_train), scfg.batch_size) * int(cfg.epochs),
        ),
        params_fn=ctx.params_fn,
        loss_fn=build.build_distill_loss(ctx.config.distillation),
        target_fn=lambda x, batch: batch["teacher_logits"],
        batch_extra={"teacher_logits": logits},
        description="student",
    )
    return StageResult(CompressedModel(model, state.params, state.model_state), {}, {})


def quantize_stage(ctx: Context, cur) -> StageResult:
    """Quantizes the float tensors left (``config.ptq``; shared kernels keep their codes)."""
    cfg = ctx.config.ptq
    shared_paths = set()
    if cur.shared is not None:
        shared_paths = {
            p
            for p, x in named_leaves(cur.shared, is_leaf=compression.is_shared)
            if compression.is_shared(x)
        }
    floating = lambda leaf: jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating)
    q = quantization.quantize_params(
        cur.params,
        bits=int(cfg.weight_bits),
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
    return StageResult(cur._replace(params=params, quantized=q), {}, {})


STAGES: tuple[tuple[str, Callable[[Any], bool]], ...] = (
    ("dense", lambda c: True),
    ("pruned", lambda c: c.stages.prune.enabled),
    ("slimmed", lambda c: c.stages.prune.enabled and c.stages.prune.slim),
    ("shared", lambda c: c.stages.share.enabled),
    ("student", lambda c: c.stages.student.enabled),
    ("quantized", lambda c: c.stages.quantize.enabled),
)
"""The pipeline, in order: ``(name, enabled(config))``; ``file`` always ends it."""


def _run_stage(name: str, ctx: Context, cur, dense):
    if name == "dense":
        return dense_stage(ctx, cur)
    if name == "pruned":
        return prune_stage(ctx, cur)
    if name == "slimmed":
        return slim_stage(ctx, cur)
    if name == "shared":
        return share_stage(ctx, cur)
    if name == "student":
        return student_stage(ctx, cur, dense)
    return quantize_stage(ctx, cur)


# --------------------------------------------------------------------------- checks
def _epochs(value, field: str, enabled: bool) -> None:
    build.check_int(value, field, 1 if enabled else 0)


def check(config, data: build.Data, model) -> None:
    """Checks every section and stage before anything trains (errors name the field)."""
    schema.check_fields(config, default_config(), "compress")
    s = config.stages
    for key in ("prune", "share", "student", "quantize"):
        if not isinstance(s[key].enabled, bool):
            raise TypeError(f"config.stages.{key}.enabled={s[key].enabled!r} must be a bool")
    _epochs(s.prune.epochs, "stages.prune.epochs", s.prune.enabled)
    _epochs(s.share.epochs, "stages.share.epochs", False)
    _epochs(s.student.epochs, "stages.student.epochs", s.student.enabled)
    check_one_of("config.stages.student.teacher", s.student.teacher, ("dense", "compressed"))
    n_steps = build.num_steps(len(data.x_train), config.batch_size)
    build.fit_settings(config, n_steps)
    build.loss_fn_of(config)
    build.build_augment(config.augment)
    build.qat_params_fn(config.quantization)
    shapes = build.param_shapes(model, data.x_train[:1])
    make_optimizer(config.optimizer, n_steps * config.num_epochs)
    if s.prune.enabled:
        if not build.pruning_enabled(config.pruning):
            raise ValueError(
                "config.stages.prune.enabled=True needs config.pruning.method (e.g. "
                "'magnitude'); set stages.prune.enabled=False to skip the stage"
            )
        total = n_steps * s.prune.epochs
        build.build_pruning(
            _pruning_section(config, shapes),
            total,
            steps_per_epoch=n_steps,
            seed=config.seed,
            params=shapes,
        )
        make_optimizer(s.prune.optimizer, total)
        if s.prune.slim and config.pruning.structure != "channels":
            raise ValueError(
                "config.stages.prune.slim=True needs config.pruning.structure='channels', got "
                f"{config.pruning.structure!r}"
            )
    if s.share.enabled:
        sharing = config.sharing
        check_one_of("config.sharing.init", sharing.init, schema.SHARING_INITS)
        layers = dict(sharing.get("layers") or {})
        check_rules(layers, shapes, "config.sharing.layers")
        for key, value in {
            "bits": sharing.bits,
            **{f"layers[{k!r}]": v for k, v in layers.items()},
        }.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16:
                raise ValueError(f"config.sharing.{key}={value!r} must be an int in 1..16")
        if s.share.epochs:
            make_optimizer(s.share.optimizer, n_steps * s.share.epochs)
    if s.student.enabled:
        build.build_distill_loss(config.distillation)
        student = build.build_model(s.student.model, data.num_classes, config.quantization)
        build.param_shapes(student, data.x_train[:1])
        make_optimizer(s.student.optimizer, n_steps * s.student.epochs)
    if s.quantize.enabled:
        build.check_ptq(config.ptq)
    for b in config.sweep.bits:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 16:
            raise ValueError(f"config.sweep.bits holds {b!r}; each must be an int in 1..16")
    for sp in config.sweep.sparsities:
        ok = not isinstance(sp, bool) and isinstance(sp, (int, float)) and 0 <= sp < 1
        if not ok:
            raise ValueError(f"config.sweep.sparsities holds {sp!r}; each must be in [0, 1)")
    lat = config.latency
    for key in ("batch_size", "rounds", "iters"):
        v = lat[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"config.latency.{key}={v!r} must be an int >= 1")
    if not isinstance(config.file.huffman, bool):
        raise TypeError(f"config.file.huffman={config.file.huffman!r} must be a bool")


# --------------------------------------------------------------------------- sweeps
def _sweeps(ctx: Context, dense, base) -> tuple[dict, list]:
    """One-shot pruning of the dense model; sharing / uniform quantization of ``base``."""
    cfg = ctx.config.sweep
    x, y = ctx.data.x_test, ctx.data.y_test
    scores = pruning.magnitude_scores(dense.params)
    curves: dict[str, list] = {}
    points: list[dict[str, Any]] = []
    one_shot = []
    for s in cfg.sparsities:
        masks = _clean_masks(pruning.compute_masks(scores, float(s), filter_fn=is_kernel))
        cur = dense._replace(params=pruning.apply_masks(dense.params, masks), masks=masks)
        acc = _evaluate(cur, x, y, ctx)["accuracy"]
        point = {"sparsity": float(s), "accuracy": acc, "bytes": _encoded_size(cur)}
        one_shot.append(point)
        points.append({"kind": "one-shot pruning", "label": f"{s:g}", **point})
    curves["one_shot_pruning"] = one_shot
    sharing, uniform = [], []
    for b in cfg.bits:
        b = int(b)
        shared = compression.cluster_weights(
            base.params,
            bits=b,
            init=ctx.config.sharing.init,
            filter_fn=is_kernel,
            masks=base.masks,
        )
        cur = base._replace(params=compression.shared_params(shared), shared=shared)
        acc = _evaluate(cur, x, y, ctx)["accuracy"]
        point = {"bits": b, "accuracy": acc, "bytes": _encoded_size(cur)}
        sharing.append(point)
        points.append({"kind": "k-means sharing", "label": f"{b} bits", **point})
        if b >= 2:  # a symmetric grid needs 2 bits to hold the pruned zeros
            q = quantization.quantize_params(
                base.params, bits=b, axis=-1, symmetric=True, filter_fn=is_kernel
            )
            cur = base._replace(params=quantization.dequantize_params(q), quantized=q)
            acc = _evaluate(cur, x, y, ctx)["accuracy"]
            point = {"bits": b, "accuracy": acc, "bytes": _encoded_size(cur)}
            uniform.append(point)
            points.append({"kind": "uniform quantization", "label": f"{b} bits", **point})
    curves["sharing_bits"] = sharing
    curves["uniform_bits"] = uniform
    return curves, points


# --------------------------------------------------------------------------- pipeline
def _row(ctx, stage, cur, seconds, n_bytes, float32_bytes, extra) -> dict[str, Any]:
    test = _evaluate(cur, ctx.data.x_test, ctx.data.y_test, ctx)
    val = _evaluate(cur, ctx.data.x_val, ctx.data.y_val, ctx) if len(ctx.data.x_val) else {}
    n_params, nonzeros = _counts(cur)
    row = {
        "stage": stage,
        "accuracy": test["accuracy"],
        "val_accuracy": val.get("accuracy"),
        "macro_precision": test["macro_precision"],
        "macro_recall": test["macro_recall"],
        "macro_f1": test["macro_f1"],
        "loss": test["loss"],
        "params": n_params,
        "nonzeros": nonzeros,
        "kernel_sparsity": _kernel_sparsity(cur.params),
        "bytes": n_bytes,
        "ratio": float32_bytes / n_bytes,
        "seconds": seconds,
        **extra,
    }
    print(
        f"[compress] {stage:<9} accuracy {row['accuracy']:.4f}  nonzeros {nonzeros:,}  "
        f"{n_bytes:,} bytes ({row['ratio']:.1f}x)  {seconds:.0f} s",
        flush=True,
    )
    return {**row, "pred": test["pred"]}


def run(
    config, workdir: str | None, *, dataset=None, overwrite: bool = False
) -> tuple["CompressedModel", dict[str, Any]]:
    """Runs the pipeline and reports every stage (see the module docstring).

    Args:
      config: ``default_config()`` with overrides.
      workdir: output directory; ``None`` writes only the stage files, to a temporary
        directory that is removed.
      dataset: a ``data.Dataset`` instead of ``config.dataset``'s.
      overwrite: replace a finished run in ``workdir``.

    Returns:
      ``(final, results)``: the final ``CompressedModel`` (what the file holds) and
      ``stages`` (one row per stage), ``table`` (markdown), ``curves`` / ``points`` (the
      plots' data), ``roundtrip`` (the load check), ``size_report``, ``float32_bytes``,
      ``config``.

    Raises:
      ValueError: a bad config (before anything trains).
      RuntimeError: the loaded file does not predict exactly what the final model did.

    Example:
      >>> final, results = run(get_config(), "runs/deep_compression")
      >>> print(results["table"])
    """
    with build.config_errors():
        schema.check_fields(config, default_config(), "compress")
        build.prepare_workdir(workdir, overwrite=overwrite, resume=False, marker=RESULTS_FILE)
        initialize_distributed(config)
        data = build.load_data(config, dataset)
        model = build.build_model(config.model, data.num_classes, config.quantization)
        check(config, data, model)
    params_fn = build.qat_params_fn(config.quantization)
    ctx = Context(
        config=config,
        data=data,
        workdir=workdir,
        params_fn=params_fn,
        eval_fn=make_eval_step(loss_fn=build.loss_fn_of(config), params_fn=params_fn),
    )
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="compress-")
        files_dir = tmp.name
    else:
        files_dir = os.path.join(workdir, "files")
        os.makedirs(files_dir, exist_ok=True)
    try:
        return _pipeline(ctx, model, files_dir)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _pipeline(ctx: Context, model, files_dir: str):
    config, data, workdir = ctx.config, ctx.data, ctx.workdir
    cur = dense = CompressedModel(model, {}, {})
    rows: list[dict[str, Any]] = []
    models: dict[str, CompressedModel] = {}
    curves: dict[str, list] = {}
    points: list[dict[str, Any]] = []
    float32_bytes = 0
    sweep_seconds = 0.0
    last = None
    for name, enabled in STAGES:
        if not enabled(config):
            continue
        t0 = time.perf_counter()
        result = _run_stage(name, ctx, cur, dense)
        cur = result.model
        curves.update(result.curves)
        if name == "dense":
            dense = cur
            float32_bytes = 4 * count_params(cur.variables)
        n_bytes = _save(os.path.join(files_dir, f"{name}.jxcf"), cur, False)
        last = _row(ctx, name, cur, time.perf_counter() - t0, n_bytes, float32_bytes, result.row)
        rows.append({k: v for k, v in last.items() if k != "pred"})
        models[name] = cur
        points.append(
            {"kind": "stage", "label": name, "accuracy": last["accuracy"], "bytes": n_bytes}
        )
        # the sweeps start from the pruned (or slimmed) model, before sharing
        next_names = [n for n, e in STAGES if e(config)]
        later = next_names[next_names.index(name) + 1 :]
        if name in ("dense", "pruned", "slimmed") and not (set(later) & {"pruned", "slimmed"}):
            t1 = time.perf_counter()
            sweep_curves, sweep_points = _sweeps(ctx, dense, cur)
            curves.update(sweep_curves)
            points.extend(sweep_points)
            sweep_seconds = time.perf_counter() - t1

    # The compressed file, loaded back: it must predict exactly what `cur` predicted.
    t0 = time.perf_counter()
    final_path = os.path.join(workdir if workdir is not None else files_dir, "model.jxcf")
    huffman = bool(config.file.huffman)
    n_bytes = _save(final_path, cur, huffman)
    loaded = compression.load_compressed(final_path)
    loaded_model = cur._replace(
        params=loaded["params"], model_state={k: loaded[k] for k in cur.model_state}
    )
    file_row = _row(ctx, "file", loaded_model, time.perf_counter() - t0, n_bytes, float32_bytes, {})
    rows.append({k: v for k, v in file_row.items() if k != "pred"})
    models["file"] = loaded_model
    points.append(
        {"kind": "stage", "label": "file", "accuracy": file_row["accuracy"], "bytes": n_bytes}
    )
    identical = bool(np.array_equal(file_row["pred"], last["pred"]))
    roundtrip = {
        "path": final_path,
        "predictions_identical": identical,
        "num_test": int(len(data.y_test)),
        "mismatches": int(np.sum(file_row["pred"] != last["pred"])),
    }
    if not identical:
        raise RuntimeError(
            f"the compressed file {final_path} predicts differently from the model it "
            f"holds on {roundtrip['mismatches']} of {roundtrip['num_test']} test examples"
        )
    size = compression.size_report(**_file_trees(cur), huffman=huffman)
    lat = config.latency
    x = data.x_test[: int(lat.batch_size)]
    latency = measure_latency(
        {s: (m.model.apply, m.variables) for s, m in models.items()},
        x,
        rounds=int(lat.rounds),
        iters=int(lat.iters),
    )
    for row in rows:
        row["latency_ms"] = 1e3 * latency[row["stage"]]
    results = {
        "dataset": data.name,
        "model": config.model.name,
        "num_train": int(len(data.x_train)),
        "num_val": int(len(data.x_val)),
        "num_test": int(len(data.x_test)),
        "float32_bytes": float32_bytes,
        "stages": rows,
        "curves": curves,
        "points": points,
        "roundtrip": roundtrip,
        "size_report": size,
        "latency_batch_size": int(len(x)),
        "sweep_seconds": sweep_seconds,
        "config": config.to_dict(),
    }
    results["table"] = report.format_stage_table(rows)
    if workdir is not None:
        atomic_write_bytes(os.path.join(workdir, "stages.md"), results["table"].encode())
        atomic_write_json(os.path.join(workdir, RESULTS_FILE), results)
        report.write_plots(results, workdir)
    return cur, results


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
    kernels = [x for p, x in named_leaves(params) if is_kernel(p, x)]
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
