"""The language-model recipe: a decoder-only transformer on an offline text corpus.

``run(config, workdir)`` tokenizes the corpus (split by document), trains the model of
``config.model`` with the engine's ``fit`` on random contiguous windows (AdamW with warmup
and cosine decay, clipping, gradient accumulation, optional bf16 compute, optional pruning
and weight QAT), evaluates the validation stream every ``eval_every_steps`` and the whole
validation and test streams at the end, and generates samples with the KV cache. Reported:
loss (nats per token), perplexity, bits per byte (comparable across tokenizers) and training
tokens per second. Writes ``metrics.jsonl``, ``results.json``, ``variables.msgpack``, the
tokenizer (``tokenizer/``), ``samples.txt`` and ``curves.png``.

With ``distillation.teacher_dir`` (a finished LM run) the model is a student of that frozen
teacher: per-token ``alpha * T² KL(teacher_T || student_T) + (1 - alpha) * CE`` with the
teacher's logits computed inside the compiled step (the engine's ``target_fn``; the
teacher's variables are a bound input, never in the optimizer state or the saved
variables), optionally a hidden-state loss on block outputs (through a learned projection
when the widths differ; it trains with the student and is not saved), and optionally the
student initialised from a subset of the teacher's blocks (DistilBERT).
"""

import functools
import json
import math
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from ml_collections import config_dict

from jaxopt_models import metrics
from jaxopt_models.checks import check_one_of
from jaxopt_models.data import get_text_dataset, lm_eval_batches, lm_train_batch, load_tokenizer
from jaxopt_models.distillation import (
    HIDDEN_STATE_LOSSES,
    FeatureProjection,
    capture_features,
    hidden_state_loss,
    init_feature_projection,
    make_distill_loss,
)
from jaxopt_models.models import LOGICAL_AXIS_RULES, generate, get_model, mesh_specs
from jaxopt_models.recipes import build
from jaxopt_models.recipes import config as schema
from jaxopt_models.recipes.loading import is_lm_run
from jaxopt_models.recipes.report import plot_curves
from jaxopt_models.training import (
    PARALLEL_MODES,
    SHARDED_MODES,
    FitSettings,
    apply_objective,
    atomic_write_bytes,
    atomic_write_json,
    bind_extra,
    check_settings,
    count_params,
    create_train_state,
    fit,
    initialize_distributed,
    load_variables,
    make_device_mesh,
    make_optimizer,
    make_train_step,
    save_variables,
)
from jaxopt_models.training.steps import step_rng
from jaxopt_models.typing import PyTree

RESULTS_FILE = "results.json"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
TOKENIZERS = ("byte", "bpe")
STUDENT_INITS = ("scratch", "teacher_layers")
PROJECTION_KEY = "hidden_projection"
"""The top-level params key of the hidden-state projection (trained, never saved)."""


def default_config() -> ml_collections.ConfigDict:
    """The LM recipe's config.

    Fields:
      dataset.name: ``"python_stdlib"`` (always present), ``"bible_kjv"`` or
        ``"python_docs"``; dataset.tokenizer: ``"byte"`` or ``"bpe"`` (trained on the training
        split, ``vocab_size``); val_fraction / test_fraction (of documents); max_bytes (keep
        about this much text, quick runs); data_dir; split_seed: seed of the document split
        and of the BPE sample (``None``: ``seed``; set it to vary ``seed`` over the same
        held-out documents).
      model.*: ``models.get_model(name, **rest)`` with ``vocab_size`` from the tokenizer
        and ``max_len = context`` unless set; ``dtype``: ``"float32"`` or ``"bfloat16"``
        compute (params stay float32).
      optimizer.*: ``training.make_optimizer`` (AdamW, warmup + cosine, clipping).
      batch_size / context: windows per micro-batch and tokens per window.
      grad_accum_steps: micro-batches per optimizer step (``optax.MultiSteps``).
      num_steps: optimizer steps; eval_every_steps: validation interval (divides num_steps).
      eval_batch_size; eval_max_batches: cap of the periodic validation (``None``: the
        whole stream); the final validation and test always score every token.
      pruning / quantization: as in the train recipe (weight QAT only: ``act_bits`` must
        be 0 for transformers).
      generate.*: samples at the end (prompt, max_new_tokens, temperature (0: greedy),
        top_k, num_samples).
      parallel: ``"none"``, ``"sharding"``, ``"pmap"`` (data parallel), ``"fsdp"`` (params
        and optimizer state split over the ``data`` axis too) or ``"tensor"`` (attention
        heads, MLP units and the vocabulary split over the ``tensor`` axis); see
        ``training.sharded``.
      mesh.data / mesh.tensor: the 2-D mesh of ``"fsdp"``/``"tensor"`` (one size may be -1:
        the devices left; the sizes multiply to the device count). ``"fsdp"`` with
        ``tensor`` > 1 is FSDP plus tensor parallelism; ``"tensor"`` with ``data`` > 1 is
        data plus tensor parallelism. ``num_heads``, ``num_kv_heads`` and ``mlp_dim`` must
        be multiples of ``mesh.tensor``, ``batch_size`` of ``mesh.data``.
      distillation: ``config.lm_distillation_section()``: ``teacher_dir`` (``None``: off),
        loss / temperature / alpha, ``hidden.*`` (hidden-state loss), ``student_init`` and
        ``teacher_layers``. The teacher must share the tokenizer, its vocabulary and the
        document split (dataset name, fractions, split seed) with the student.
    """
    c = schema.base_config()
    for key in ("dataset", "num_epochs", "label_smoothing", "augment", "log_every_epochs"):
        del c[key]
    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "python_stdlib"
    c.dataset.tokenizer = "byte"
    c.dataset.vocab_size = 1024
    c.dataset.val_fraction = 0.05
    c.dataset.test_fraction = 0.05
    c.dataset.max_bytes = config_dict.placeholder(int)
    c.dataset.data_dir = config_dict.placeholder(str)
    c.dataset.split_seed = config_dict.placeholder(int)
    c.model = ml_collections.ConfigDict(
        {
            "name": "gpt",
            "num_layers": 4,
            "num_heads": 4,
            "embed_dim": 128,
            "dropout_rate": 0.0,
            "positions": "rope",
            "norm": "layernorm",
            "mlp": "gelu",
            "dtype": "float32",
        }
    )
    c.optimizer = schema.optimizer_section("adamw", 1e-3, "warmup_cosine")
    c.optimizer.warmup_steps = 100
    c.optimizer.weight_decay = 0.1
    c.optimizer.b2 = 0.99
    c.optimizer.grad_clip_norm = 1.0
    c.batch_size = 12
    c.context = 64
    c.grad_accum_steps = 1
    c.num_steps = 2000
    c.eval_every_steps = 250
    c.eval_batch_size = 32
    c.eval_max_batches = config_dict.placeholder(int)
    c.pruning = schema.pruning_section()
    c.quantization = schema.quantization_section()
    c.generate = ml_collections.ConfigDict(
        {"prompt": "", "max_new_tokens": 200, "temperature": 0.8, "top_k": 40, "num_samples": 2}
    )
    c.mesh = ml_collections.ConfigDict({"data": -1, "tensor": 1})
    c.distillation = schema.lm_distillation_section(temperature=1.0, alpha=0.9)
    return c


def split_seed(config) -> int:
    """The seed of the document split: ``dataset.split_seed``, else ``seed``."""
    d = config.dataset
    return config.seed if d.get("split_seed") is None else d.split_seed


def load_text(config, tokenizer=None):
    """The run's corpus split by document and tokenized (``data.get_text_dataset`` with
    ``config.dataset``); ``tokenizer`` (e.g. one a run saved) replaces
    ``dataset.tokenizer``."""
    d = config.dataset
    return get_text_dataset(
        d.name,
        tokenizer=d.tokenizer if tokenizer is None else tokenizer,
        vocab_size=d.vocab_size,
        seed=split_seed(config),
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        max_bytes=d.max_bytes,
        data_dir=d.data_dir,
    )


def model_kwargs(config, vocab_size: int) -> dict[str, Any]:
    """``get_model`` keyword arguments of ``config.model`` (dtype names resolved)."""
    kwargs = {k: v for k, v in config.model.items() if k != "name" and v is not None}
    if "dtype" in kwargs:
        kwargs["dtype"] = DTYPES[check_one_of("config.model.dtype", kwargs["dtype"], tuple(DTYPES))]
    kwargs.setdefault("vocab_size", vocab_size)
    kwargs.setdefault("max_len", config.context)
    return kwargs


def lm_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token cross-entropy in nats, ``(B, T)``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def make_lm_eval(model, params_fn, batch_size: int, context: int, *, apply_fn=None):
    """``evaluate(params, tokens, max_batches=None) -> {"loss", "perplexity", "bits_per_byte"}``.

    Scores every target of the stream once (``data.lm_eval_batches``); the bytes the scored
    targets stand for come from the tokenizer, so bits per byte compares across tokenizers.
    ``apply_fn(params, tokens) -> logits``, when given, replaces ``model.apply`` (e.g. a
    model run on stored QTensors); ``params`` is then whatever it takes.
    """

    @jax.jit
    def batch_nats(params, batch):
        if apply_fn is not None:
            logits = apply_fn(params, batch["tokens"])
        else:
            p = params if params_fn is None else params_fn(params)
            logits = model.apply({"params": p}, batch["tokens"], train=False)
        nats = lm_loss(logits, batch["targets"])
        return jnp.sum(jnp.where(batch["mask"], nats, 0.0))

    def evaluate(params, tokens, tokenizer, max_batches=None) -> dict[str, float]:
        total, count, scored = 0.0, 0, []
        for i, batch in enumerate(lm_eval_batches(tokens, batch_size, context)):
            if max_batches is not None and i >= max_batches:
                break
            total += float(batch_nats(params, batch))
            count += int(batch["mask"].sum())
            scored.append(batch["targets"][batch["mask"]])
        n_bytes = tokenizer.num_bytes(np.concatenate(scored))
        return {
            "loss": total / count,
            "perplexity": float(math.exp(min(total / count, 700.0))),
            "bits_per_byte": float(metrics.bits_per_byte(total, n_bytes)),
            "tokens": count,
        }

    return evaluate


def check(config) -> None:
    """Checks every field before any work (errors name the field)."""
    schema.check_fields(config, default_config(), "lm")
    d = config.dataset
    check_one_of("config.dataset.tokenizer", d.tokenizer, TOKENIZERS)
    for key in (
        "batch_size",
        "context",
        "grad_accum_steps",
        "num_steps",
        "eval_every_steps",
        "eval_batch_size",
        "sync_every_steps",
    ):
        build.check_int(config[key], key)
    if config.num_steps % config.eval_every_steps:
        raise ValueError(
            f"config.eval_every_steps={config.eval_every_steps} must divide "
            f"config.num_steps={config.num_steps}"
        )
    if config.eval_max_batches is not None:
        build.check_int(config.eval_max_batches, "eval_max_batches")
    if d.split_seed is not None:
        build.check_int(d.split_seed, "dataset.split_seed", 0)
    check_distillation(config.distillation)
    if build.qat_model_kwargs(config.quantization):
        raise ValueError(
            f"config.quantization.act_bits={config.quantization.act_bits!r}: activation "
            "fake-quantization is not supported by the transformer models; use 0 (weight QAT "
            "with weight_bits works)"
        )
    build.qat_params_fn(config.quantization)
    g = config.generate
    build.check_int(g.max_new_tokens, "generate.max_new_tokens", 0)
    build.check_int(g.num_samples, "generate.num_samples", 0)
    t = g.temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
        raise ValueError(f"config.generate.temperature={t!r} must be a number >= 0")
    if g.top_k is not None:
        build.check_int(g.top_k, "generate.top_k")
    check_one_of("config.parallel", config.parallel, (*PARALLEL_MODES, *SHARDED_MODES))
    sizes = dict(config.mesh)
    for axis, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(
                f"config.mesh.{axis}={size!r} must be a positive int or -1 (the devices left)"
            )
    if list(sizes.values()).count(-1) > 1:
        raise ValueError(f"config.mesh={sizes!r}: at most one size may be -1")
    if config.parallel not in SHARDED_MODES and sizes != {"data": -1, "tensor": 1}:
        raise ValueError(
            f"config.mesh={sizes!r} is only used with config.parallel in {SHARDED_MODES} "
            f"(config.parallel={config.parallel!r}); leave it at {{'data': -1, 'tensor': 1}}"
        )


def _check_tensor_split(config, model, tensor: int) -> None:
    """Refuses heads / MLP units that the tensor axis does not divide (naming the field)."""
    cfg = model.config
    for field in ("num_heads", "num_kv_heads", "mlp_dim"):
        value = getattr(cfg, field)
        if value % tensor:
            raise ValueError(
                f"config.model.{field}={value} is not a multiple of the tensor axis size "
                f"{tensor} (config.mesh.tensor={config.mesh.tensor}): "
                f"parallel={config.parallel!r} splits heads and MLP units over it"
            )


def parallel_layout(config, model, sample: np.ndarray) -> dict[str, Any]:
    """``make_train_step`` keyword arguments of ``config.parallel``/``config.mesh``.

    ``{}`` for the data-parallel modes; for ``"fsdp"``/``"tensor"`` the 2-D mesh and the
    params' ``PartitionSpec``s from the model's logical axis names
    (``models.LOGICAL_AXIS_RULES``): heads, MLP units and the vocabulary (when the tensor
    size divides it) over ``tensor``; with ``"fsdp"`` also the model width over ``data``
    (the engine splits every other param over ``data`` on a divisible dimension).

    Raises:
      ValueError: a mesh that does not fit the devices, heads / MLP units the tensor axis
        does not divide, or a batch size the data axis does not divide (naming the field).

    Example:
      >>> kwargs = parallel_layout(config, model, np.zeros((1, config.context), np.int32))
      >>> step = make_train_step(parallel=config.parallel, **kwargs)
    """
    if config.parallel not in SHARDED_MODES:
        return {}
    sizes = dict(config.mesh)
    if sizes["tensor"] != -1:  # before the mesh: this check needs no devices
        _check_tensor_split(config, model, sizes["tensor"])
    try:
        mesh = make_device_mesh(sizes)
    except ValueError as e:
        raise ValueError(f"config.mesh: {e}") from None
    data, tensor = int(mesh.shape["data"]), int(mesh.shape["tensor"])
    _check_tensor_split(config, model, tensor)
    if config.batch_size % data:
        raise ValueError(
            f"config.batch_size={config.batch_size} is not a multiple of the data axis size "
            f"{data} (config.mesh={sizes!r} on {mesh.size} devices)"
        )
    return {"mesh": mesh, "param_specs": param_specs(config.parallel, model, sample, data, tensor)}


def param_specs(parallel: str, model, sample: np.ndarray, data: int, tensor: int):
    """The params' mesh ``PartitionSpec``s of ``parallel`` on a ``data`` x ``tensor`` mesh.

    Heads, MLP units and (when ``tensor`` divides it) the vocabulary over ``tensor``; with
    ``"fsdp"`` the model width over ``data`` (when ``data`` divides it).

    Example:
      >>> specs = param_specs("fsdp", model, np.zeros((1, 64), np.int32), data=4, tensor=2)
    """
    cfg = model.config
    rules = tuple(
        (name, None if name == "vocab" and cfg.vocab_size % tensor else axes)
        for name, axes in LOGICAL_AXIS_RULES
    )
    mesh_axes = {"tensor": "tensor"}
    if parallel == "fsdp" and cfg.embed_dim % data == 0:
        mesh_axes["fsdp"] = "data"
    return mesh_specs(model, sample, mesh_axes, rules)


# ----------------------------------------------------------------------------- distillation


def _int_tuple(value: Any, field: str, length: int) -> tuple:
    """``value`` as a tuple of ``length``-tuples (``length=0``: of ints) of ints >= 0."""
    ok = isinstance(value, (tuple, list)) and len(value) > 0
    items = []
    for item in value if ok else ():
        parts = item if length else (item,)
        ok = ok and isinstance(parts, (tuple, list)) and len(parts) == (length or 1)
        ok = ok and all(not isinstance(i, bool) and isinstance(i, int) and i >= 0 for i in parts)
        items.append(tuple(parts) if length else item)
    if not ok:
        what = f"({', '.join(['int'] * length)}) pairs" if length else "ints"
        raise ValueError(f"config.{field}={value!r} must be a non-empty tuple of {what} >= 0")
    return tuple(items)


def check_distillation(section) -> None:
    """Checks a ``distillation`` section's fields (the teacher itself: ``check_teacher``)."""
    check_one_of("config.distillation.loss", section.loss, ("kl", "mse"))
    try:
        make_distill_loss(section.loss, temperature=section.temperature, alpha=section.alpha)
    except (ValueError, TypeError) as e:
        raise ValueError(f"config.distillation: {e}") from None
    h = section.hidden
    check_one_of("config.distillation.hidden.loss", h.loss, ("none", *HIDDEN_STATE_LOSSES))
    w = h.weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not (0 <= w < math.inf):
        raise ValueError(f"config.distillation.hidden.weight={w!r} must be a finite number >= 0")
    check_one_of("config.distillation.student_init", section.student_init, STUDENT_INITS)
    if h.layers is not None:
        _int_tuple(h.layers, "distillation.hidden.layers", 2)
        if h.loss == "none":
            raise ValueError(
                f"config.distillation.hidden.layers={h.layers!r} is set but "
                "config.distillation.hidden.loss='none' would not read it"
            )
    if section.teacher_layers is not None:
        _int_tuple(section.teacher_layers, "distillation.teacher_layers", 0)
        if section.student_init != "teacher_layers":
            raise ValueError(
                f"config.distillation.teacher_layers={section.teacher_layers!r} is set but "
                f"config.distillation.student_init={section.student_init!r} would not read it"
            )
    if section.teacher_dir is None:
        for field, value, off in (
            ("student_init", section.student_init, "scratch"),
            ("hidden.loss", h.loss, "none"),
        ):
            if value != off:
                raise ValueError(
                    f"config.distillation.{field}={value!r} needs a teacher: set "
                    "config.distillation.teacher_dir to a finished LM run"
                )


class LMTeacher(NamedTuple):
    """A finished LM run, frozen: the teacher of ``distillation.teacher_dir``.

    Attributes:
      model: its ``CausalLM``.
      variables: its variables (NumPy arrays, read only: never donated or updated).
      config: its resolved config (from ``results.json``).
      results: its ``results.json``.
      tokenizer: its saved tokenizer (``None`` when the run saved none).
      directory: the run's directory.
    """

    model: Any
    variables: PyTree
    config: ml_collections.ConfigDict
    results: dict[str, Any]
    tokenizer: Any
    directory: str

    def apply(self, variables: PyTree, tokens: jax.Array, **kwargs: Any) -> Any:
        """The teacher's forward pass (its weight QAT, if it trained with one, applied)."""
        params_fn = build.qat_params_fn(self.config.get("quantization"))
        if params_fn is not None:
            variables = {**variables, "params": params_fn(variables["params"])}
        return self.model.apply(variables, tokens, **kwargs)


def load_teacher(teacher_dir: str) -> LMTeacher:
    """Loads a finished LM run (``results.json``, ``variables.msgpack``) as a teacher.

    Raises:
      FileNotFoundError / ValueError: not a finished LM run (naming
        ``config.distillation.teacher_dir``).

    Example:
      >>> teacher = load_teacher("runs/lm_bible")
      >>> logits = teacher.apply(teacher.variables, tokens, train=False)
    """
    field = "config.distillation.teacher_dir"
    build.check_saved_run(teacher_dir, field, files=(RESULTS_FILE, "variables.msgpack"))
    with open(os.path.join(teacher_dir, RESULTS_FILE)) as f:
        results = json.load(f)
    if not is_lm_run(results):
        raise ValueError(
            f"{field}={teacher_dir!r} holds a {results.get('model', 'classifier')!r} run, not "
            "a language-model run of recipes.lm"
        )
    config = ml_collections.ConfigDict(results["config"])
    model = get_model(config.model.name, **model_kwargs(config, int(results["vocab_size"])))
    sample = np.zeros((1, config.context), np.int32)
    template = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(sample)
    variables = load_variables(teacher_dir, template)
    tok_dir = os.path.join(teacher_dir, "tokenizer")
    tokenizer = load_tokenizer(tok_dir) if os.path.isdir(tok_dir) else None
    return LMTeacher(model, variables, config, results, tokenizer, teacher_dir)


_COPIED_FIELDS = (
    "embed_dim",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "mlp_dim",
    "positions",
    "norm",
    "mlp",
    "use_bias",
)


def check_teacher(config, student, teacher: LMTeacher) -> None:
    """Refuses a teacher the student cannot learn from, before any data or training.

    Same tokenizer and vocabulary, same document split (so the teacher never trained on the
    student's validation or test documents), a context the teacher can read, and for
    ``student_init="teacher_layers"`` blocks of the same shapes.

    Raises:
      ValueError: naming the student's field and both values.
    """
    tc, where = teacher.config, f"the teacher's ({teacher.directory})"
    d, td = config.dataset, tc.dataset

    def differs(field: str, mine: Any, theirs: Any, why: str) -> None:
        if mine != theirs:
            raise ValueError(f"config.{field}={mine!r} differs from {where} {theirs!r}: {why}")

    same_vocab = "teacher and student must share the tokenizer and its vocabulary"
    differs("dataset.tokenizer", d.tokenizer, td.tokenizer, same_vocab)
    if d.tokenizer == "bpe":
        differs("dataset.vocab_size", d.vocab_size, td.vocab_size, same_vocab)
    differs("model.vocab_size", student.vocab_size, teacher.model.vocab_size, same_vocab)
    same_split = "the student's held-out documents must be the teacher's"
    for key in ("name", "val_fraction", "test_fraction"):
        differs(f"dataset.{key}", d[key], td[key], same_split)
    differs("dataset.split_seed", split_seed(config), split_seed(tc), same_split)
    if config.context > teacher.model.max_len:
        raise ValueError(
            f"config.context={config.context} is longer than {where} max_len="
            f"{teacher.model.max_len}: the teacher cannot score such windows"
        )
    s_cfg, t_cfg = student.config, teacher.model.config
    section = config.distillation
    if section.student_init == "teacher_layers":
        why = "student_init='teacher_layers' copies the teacher's blocks, so they must match"
        for field in _COPIED_FIELDS:
            differs(f"model.{field}", getattr(s_cfg, field), getattr(t_cfg, field), why)
        differs("model.tie_embeddings", student.tie_embeddings, teacher.model.tie_embeddings, why)
        if s_cfg.positions == "learned":
            differs("model.max_len", s_cfg.max_len, t_cfg.max_len, why)
        layers = teacher_layers(section, s_cfg.num_layers, t_cfg.num_layers)
        if len(layers) != s_cfg.num_layers or max(layers) >= t_cfg.num_layers:
            raise ValueError(
                f"config.distillation.teacher_layers={layers!r} must name one teacher block "
                f"in [0, {t_cfg.num_layers}) per student block (config.model.num_layers="
                f"{s_cfg.num_layers})"
            )
    if section.hidden.loss != "none":
        for s, t in hidden_pairs(section, s_cfg.num_layers, t_cfg.num_layers):
            if s >= s_cfg.num_layers or t >= t_cfg.num_layers:
                raise ValueError(
                    f"config.distillation.hidden.layers pairs ({s}, {t}): student blocks are "
                    f"[0, {s_cfg.num_layers}) and teacher blocks [0, {t_cfg.num_layers})"
                )
        if s_cfg.embed_dim != t_cfg.embed_dim:
            if build.pruning_enabled(config.pruning) or config.parallel in SHARDED_MODES:
                raise ValueError(
                    "config.distillation.hidden with a projection (student width "
                    f"{s_cfg.embed_dim} != teacher width {t_cfg.embed_dim}) is not combined "
                    f"with config.pruning or config.parallel in {SHARDED_MODES}"
                )


def teacher_layers(section, student_layers: int, num_teacher_layers: int) -> tuple[int, ...]:
    """The teacher block each student block is copied from (``student_init``)."""
    if section.teacher_layers is not None:
        return tuple(section.teacher_layers)
    return tuple(i * num_teacher_layers // student_layers for i in range(student_layers))


def hidden_pairs(section, student_layers: int, num_teacher_layers: int) -> tuple:
    """``((student_block, teacher_block), ...)`` of the hidden-state loss.

    By default student block ``i`` matches the output of teacher block
    ``(i + 1) * L_t // L_s - 1``: the residual stream at the same relative depth, the last
    block the teacher's last (both feed the final norm and the head).
    """
    if section.hidden.layers is not None:
        return tuple(tuple(p) for p in section.hidden.layers)
    return tuple(
        (i, max((i + 1) * num_teacher_layers // student_layers - 1, 0))
        for i in range(student_layers)
    )


def init_from_teacher_layers(params: PyTree, teacher_params: PyTree, layers) -> PyTree:
    """The student's params with the teacher's embeddings, final norm, head and blocks.

    Student block ``i`` becomes a copy of teacher block ``layers[i]``; every other entry
    (``embed``, ``pos_embed``, ``final_norm``, ``lm_head``) is copied by name. The copies
    are fresh arrays, so donating the student's state never touches the teacher.

    Raises:
      ValueError: a copied entry whose shapes differ.

    Example:
      >>> params = init_from_teacher_layers(state.params, teacher.variables["params"], (0, 2))
    """
    out = {}
    for name, value in params.items():
        source = f"block_{layers[int(name[6:])]}" if name.startswith("block_") else name
        theirs = teacher_params[source]
        mine_shapes = jax.tree.map(np.shape, value)
        if jax.tree.map(np.shape, theirs) != mine_shapes:
            raise ValueError(
                f"the teacher's {source} does not fit the student's {name}: shapes "
                f"{jax.tree.map(np.shape, theirs)} vs {mine_shapes}"
            )
        out[name] = jax.tree.map(lambda m, t: jnp.array(t, dtype=m.dtype, copy=True), value, theirs)
    return out


def student_params(params: PyTree) -> PyTree:
    """The model's params: ``params`` without the hidden-state projection."""
    if PROJECTION_KEY not in params:
        return params
    return {k: v for k, v in params.items() if k != PROJECTION_KEY}


def hidden_distill_step(
    state,
    batch,
    teacher_variables: PyTree,
    *,
    teacher_apply,
    loss_fn,
    pairs: tuple,
    kind: str,
    weight: float,
    params_fn=None,
    axis_name: str | None = None,
):
    """One student update on the per-token KD + CE loss plus ``weight`` x the hidden-state loss.

    The teacher's logits and block outputs are computed here, under ``stop_gradient``, from
    its variables (a frozen input); the student's block outputs come from Flax's
    ``capture_intermediates``. ``state.params`` may hold the projection under
    ``PROJECTION_KEY`` (trained with the student).

    Returns:
      ``(new_state, {"loss", "accuracy"})`` as ``training.train_step``.
    """
    rng = step_rng(state, axis_name)
    tokens, targets = batch["tokens"], batch["targets"]
    t_names = sorted({f"block_{t}" for _, t in pairs})
    s_names = sorted({f"block_{s}" for s, _ in pairs})
    t_logits, t_hidden, _ = capture_features(
        teacher_apply, teacher_variables, tokens, t_names, train=False
    )
    t_logits, t_hidden = jax.lax.stop_gradient((t_logits, t_hidden))

    def objective(params):
        proj = params.get(PROJECTION_KEY)
        p = student_params(params)
        p = p if params_fn is None else params_fn(p)
        logits, s_hidden, _ = capture_features(
            state.apply_fn,
            {"params": p, **state.model_state},
            tokens,
            s_names,
            train=True,
            rngs={"dropout": rng},
        )
        projection = None if proj is None else FeatureProjection(**proj)
        hidden = [
            hidden_state_loss(
                s_hidden[f"block_{s}"].astype(jnp.float32),
                t_hidden[f"block_{t}"].astype(jnp.float32),
                kind=kind,
                projection=projection,
            ).mean()
            for s, t in pairs
        ]
        loss = loss_fn(logits, t_logits, targets).mean() + weight * sum(hidden) / len(hidden)
        return loss, (logits, state.model_state)

    return apply_objective(state, objective, targets, axis_name=axis_name)


def _distill_step(config, teacher: LMTeacher, params_fn, student_layers: int, layout):
    """The compiled student step of ``config.distillation`` (teacher bound as an input)."""
    section = config.distillation
    loss_fn = make_distill_loss(section.loss, temperature=section.temperature, alpha=section.alpha)
    common = {"parallel": config.parallel, "skip_nonfinite": config.nan_policy == "skip", **layout}
    if section.hidden.loss == "none":
        step = make_train_step(
            loss_fn=loss_fn,
            params_fn=params_fn,
            target_fn=lambda x, batch, tv: teacher.apply(tv, x, train=False),
            input_key="tokens",
            label_key="targets",
            **common,
        )
    else:
        num_t = teacher.model.config.num_layers
        step_fn = functools.partial(
            hidden_distill_step,
            teacher_apply=teacher.apply,
            loss_fn=loss_fn,
            pairs=hidden_pairs(section, student_layers, num_t),
            kind=section.hidden.loss,
            weight=float(section.hidden.weight),
            params_fn=params_fn,
        )
        step = make_train_step(step_fn, **common)
    return bind_extra(step, teacher.variables)


def teacher_in_step(section) -> bool:
    """Whether the teacher's outputs enter the loss (``alpha > 0`` or a hidden-state loss)."""
    return section.teacher_dir is not None and (section.alpha > 0 or section.hidden.loss != "none")


def _distillation_state(config, state, model, teacher: LMTeacher, tx):
    """``state`` with the student's init from the teacher's blocks and the projection."""
    section = config.distillation
    params = state.params
    s_cfg, t_cfg = model.config, teacher.model.config
    if section.student_init == "teacher_layers":
        layers = teacher_layers(section, s_cfg.num_layers, t_cfg.num_layers)
        params = init_from_teacher_layers(params, teacher.variables["params"], layers)
    if section.hidden.loss != "none" and s_cfg.embed_dim != t_cfg.embed_dim:
        key = jax.random.fold_in(jax.random.key(config.seed), 0x70726F6A)
        proj = init_feature_projection(key, s_cfg.embed_dim, t_cfg.embed_dim)
        params = {**params, PROJECTION_KEY: proj._asdict()}
    if params is state.params:
        return state
    return state.replace(params=params, opt_state=tx.init(params))


def _without_projection(params_fn):
    """``params_fn`` (or the identity) applied to the params without the projection."""
    if params_fn is None:
        return student_params
    return lambda params: params_fn(student_params(params))


def _check_same_tokens(ds, model, teacher: LMTeacher) -> None:
    """Refuses a student whose tokens are not the teacher's (vocabulary, tokenizer)."""
    where = f"the teacher's ({teacher.directory})"
    if model.vocab_size != teacher.model.vocab_size:
        raise ValueError(
            f"the student's vocabulary has {model.vocab_size} ids (config.dataset.tokenizer="
            f"{teacher.config.dataset.tokenizer!r}, config.dataset.vocab_size) but {where} has "
            f"{teacher.model.vocab_size}: teacher and student must share the vocabulary"
        )
    if teacher.tokenizer is not None and ds.tokenizer != teacher.tokenizer:
        raise ValueError(
            f"the student's tokenizer {ds.tokenizer!r} (config.dataset.tokenizer, trained on "
            f"its training split) differs from {where} {teacher.tokenizer!r}: teacher and "
            "student must map text to the same ids"
        )


def _distillation_report(config, model, params, teacher: LMTeacher) -> dict[str, Any]:
    """What ``results.json`` records of the teacher and the distillation."""
    section = config.distillation
    r = teacher.results
    proj = params.get(PROJECTION_KEY)
    num_s, num_t = model.config.num_layers, teacher.model.config.num_layers
    copied = section.student_init == "teacher_layers"
    return {
        **section.to_dict(),
        "teacher_in_step": teacher_in_step(section),
        "copied_blocks": list(teacher_layers(section, num_s, num_t)) if copied else None,
        "hidden_pairs": [list(p) for p in hidden_pairs(section, num_s, num_t)]
        if section.hidden.loss != "none"
        else None,
        "teacher": {
            "params": count_params(teacher.variables["params"]),
            "num_layers": teacher.model.config.num_layers,
            "embed_dim": teacher.model.config.embed_dim,
            **{k: r.get(k) for k in ("val_bits_per_byte", "test_bits_per_byte", "val_loss")},
        },
        "projection_params": 0 if proj is None else count_params(proj),
    }


def run(config, workdir: str | None, *, overwrite: bool = False) -> tuple[Any, dict[str, Any]]:
    """Trains, evaluates and samples; returns ``(final_state, results)``.

    Example:
      >>> c = default_config(); c.num_steps = 200; c.eval_every_steps = 100
      >>> state, results = run(c, "runs/lm")
      >>> results["val_bits_per_byte"]
    """
    with build.config_errors():
        check(config)
        section = config.distillation
        teacher = None
        if section.teacher_dir is not None:  # every teacher check before the data is read
            teacher = load_teacher(section.teacher_dir)
            student = get_model(config.model.name, **model_kwargs(config, teacher.model.vocab_size))
            check_teacher(config, student, teacher)
        build.prepare_workdir(
            workdir, overwrite=overwrite, resume=config.resume, marker=RESULTS_FILE
        )
        initialize_distributed(config)
        ds = load_text(config)
        model = get_model(config.model.name, **model_kwargs(config, ds.vocab_size))
        if teacher is not None:
            _check_same_tokens(ds, model, teacher)
        k = config.grad_accum_steps
        micro_steps = config.num_steps * k
        lm_train_batch(ds.train, config.batch_size, config.context, seed=config.seed, step=0)
        sample = np.zeros((1, config.context), np.int32)
        layout = parallel_layout(config, model, sample)
        shapes = build.param_shapes(model, sample)
        prune = build.build_pruning(
            config.pruning,
            config.num_steps,
            steps_per_epoch=config.eval_every_steps,
            seed=config.seed,
            params=shapes,
        )
        tx = build.with_pruning(make_optimizer(config.optimizer, config.num_steps), prune)
        if k > 1:
            tx = optax.MultiSteps(tx, every_k_schedule=k)
        params_fn = build.qat_params_fn(config.quantization)
        ck = config.checkpoint
        settings = check_settings(
            FitSettings(
                num_epochs=config.num_steps // config.eval_every_steps,
                steps_per_epoch=config.eval_every_steps * k,
                sync_every_steps=config.sync_every_steps,
                checkpoint_every_steps=ck.every_steps,
                checkpoint_every_seconds=float(ck.every_seconds),
                checkpoint_keep=ck.keep,
                resume=config.resume,
                nan_policy=config.nan_policy,
                progress=config.progress,
                description=f"{config.model.name}/{ds.name}",
                data_signature={
                    "seed": config.seed,
                    "batch_size": config.batch_size,
                    "context": config.context,
                },
            )
        )
    state = create_train_state(model, jax.random.key(config.seed), sample, tx)
    if teacher is not None:
        state = _distillation_state(config, state, model, teacher, tx)
    if teacher is not None and teacher_in_step(section):
        step = _distill_step(config, teacher, params_fn, model.config.num_layers, layout)
    else:
        step = make_train_step(
            loss_fn=lm_loss,
            params_fn=params_fn,
            input_key="tokens",
            label_key="targets",
            parallel=config.parallel,
            skip_nonfinite=config.nan_policy == "skip",
            **layout,
        )
    if PROJECTION_KEY in state.params:  # the model reads its own params only
        params_fn = _without_projection(params_fn)
    spe = settings.steps_per_epoch

    def batches(epoch: int, start: int):
        for i in range(start, spe):
            yield lm_train_batch(
                ds.train, config.batch_size, config.context, seed=config.seed, step=epoch * spe + i
            )

    lm_eval = make_lm_eval(model, params_fn, config.eval_batch_size, config.context)

    def evaluate(s):
        out = lm_eval(s.params, ds.val, ds.tokenizer, config.eval_max_batches)
        return {k: v for k, v in out.items() if k != "tokens"}

    t0 = time.perf_counter()
    final, info = fit(state, step, batches, settings, evaluate=evaluate, workdir=workdir)
    wall = time.perf_counter() - t0
    val = lm_eval(final.params, ds.val, ds.tokenizer)
    test = lm_eval(final.params, ds.test, ds.tokenizer)
    tokens_trained = micro_steps * config.batch_size * config.context
    samples = _samples(config, model, final.params, params_fn, ds.tokenizer)
    results = {
        "dataset": ds.name,
        "tokenizer": config.dataset.tokenizer,
        "vocab_size": ds.vocab_size,
        "model": config.model.name,
        "params": count_params(student_params(final.params)),
        "num_tokens": {"train": len(ds.train), "val": len(ds.val), "test": len(ds.test)},
        "num_bytes": ds.num_bytes,
        **{f"val_{k}": v for k, v in val.items()},
        **{f"test_{k}": v for k, v in test.items()},
        "train_tokens": tokens_trained,
        "train_tokens_per_second": tokens_trained / max(info["train_seconds"], 1e-9),
        "wall_seconds": wall,
        "samples": samples,
        **{k: v for k, v in info.items() if k != "last_eval"},
        "config": config.to_dict(),
    }
    if build.pruning_enabled(config.pruning):
        results["pruning"] = build.pruning_report(final.params, final.opt_state, config.pruning)
    if teacher is not None:
        results["distillation"] = _distillation_report(config, model, final.params, teacher)
    if workdir is not None and jax.process_index() == 0:
        if config.save_model:  # the model's variables only: no projection, no teacher
            save_variables(workdir, {"params": student_params(final.params), **final.model_state})
        ds.tokenizer.save(os.path.join(workdir, "tokenizer"))
        text = "\n\n---\n\n".join(samples)
        atomic_write_bytes(os.path.join(workdir, "samples.txt"), text.encode())
        if config.plots:
            plot_curves(info["history"], os.path.join(workdir, "curves.png"))
        atomic_write_json(os.path.join(workdir, RESULTS_FILE), results)
    return final, results


def _samples(config, model, params, params_fn, tokenizer) -> list[str]:
    g = config.generate
    if not g.num_samples or not g.max_new_tokens:
        return []
    p = params if params_fn is None else params_fn(params)
    prompt_ids = tokenizer.encode(g.prompt) if g.prompt else np.zeros(1, np.int32)
    budget = max(config.context - g.max_new_tokens, 1)
    prompt_ids = np.asarray(prompt_ids[-budget:], np.int32)
    prompt = np.tile(prompt_ids[None], (g.num_samples, 1))
    max_new = min(g.max_new_tokens, config.context - len(prompt_ids))
    out = generate(
        model,
        p,
        prompt,
        max_new_tokens=max_new,
        temperature=float(g.temperature),
        top_k=g.top_k,
        rng=jax.random.key(config.seed + 1),
    )
    start = 0 if g.prompt else 1  # without a prompt, the document separator starts it
    return [tokenizer.decode(np.asarray(row)[start:]) for row in out]


def print_results(result) -> None:
    """Prints the headline numbers and the first sample."""
    _, r = result
    print(f"{r['model']} on {r['dataset']} ({r['tokenizer']} tokens, {r['params']:,} params)")
    for split in ("val", "test"):
        print(
            f"  {split}: loss {r[f'{split}_loss']:.4f} nats/token, perplexity "
            f"{r[f'{split}_perplexity']:.3f}, {r[f'{split}_bits_per_byte']:.4f} bits/byte"
        )
    print(f"  {r['train_tokens_per_second']:,.0f} training tokens/s, {r['train_seconds']:.0f} s")
    if r["samples"]:
        print("sample:\n" + r["samples"][0])
