"""The language-model recipe: a decoder-only transformer on an offline text corpus.

``run(config, workdir)`` tokenizes the corpus (split by document), trains the model of
``config.model`` with the engine's ``fit`` on random contiguous windows (AdamW with warmup
and cosine decay, clipping, gradient accumulation, optional bf16 compute, optional pruning
and weight QAT), evaluates the validation stream every ``eval_every_steps`` and the whole
validation and test streams at the end, and generates samples with the KV cache. Reported:
loss (nats per token), perplexity, bits per byte (comparable across tokenizers) and training
tokens per second. Writes ``metrics.jsonl``, ``results.json``, ``variables.msgpack``, the
tokenizer (``tokenizer/``), ``samples.txt`` and ``curves.png``.
"""

import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from ml_collections import config_dict

from jaxopt_models import metrics
from jaxopt_models.checks import check_one_of
from jaxopt_models.data import get_text_dataset, lm_eval_batches, lm_train_batch
from jaxopt_models.models import LOGICAL_AXIS_RULES, generate, get_model, mesh_specs
from jaxopt_models.recipes import build
from jaxopt_models.recipes import config as schema
from jaxopt_models.recipes.report import plot_curves
from jaxopt_models.training import (
    PARALLEL_MODES,
    SHARDED_MODES,
    FitSettings,
    atomic_write_bytes,
    atomic_write_json,
    check_settings,
    count_params,
    create_train_state,
    fit,
    initialize_distributed,
    make_device_mesh,
    make_optimizer,
    make_train_step,
    save_variables,
)

RESULTS_FILE = "results.json"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
TOKENIZERS = ("byte", "bpe")


def default_config() -> ml_collections.ConfigDict:
    """The LM recipe's config.

    Fields:
      dataset.name: ``"python_stdlib"`` (always present), ``"bible_kjv"`` or
        ``"python_docs"``; dataset.tokenizer: ``"byte"`` or ``"bpe"`` (trained on the training
        split, ``vocab_size``); val_fraction / test_fraction (of documents); max_bytes (keep
        about this much text, quick runs); data_dir.
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
    return c


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


def run(config, workdir: str | None, *, overwrite: bool = False) -> tuple[Any, dict[str, Any]]:
    """Trains, evaluates and samples; returns ``(final_state, results)``.

    Example:
      >>> c = default_config(); c.num_steps = 200; c.eval_every_steps = 100
      >>> state, results = run(c, "runs/lm")
      >>> results["val_bits_per_byte"]
    """
    with build.config_errors():
        check(config)
        build.prepare_workdir(
            workdir, overwrite=overwrite, resume=config.resume, marker=RESULTS_FILE
        )
        initialize_distributed(config)
        d = config.dataset
        ds = get_text_dataset(
            d.name,
            tokenizer=d.tokenizer,
            vocab_size=d.vocab_size,
            seed=config.seed,
            val_fraction=d.val_fraction,
            test_fraction=d.test_fraction,
            max_bytes=d.max_bytes,
            data_dir=d.data_dir,
        )
        model = get_model(config.model.name, **model_kwargs(config, ds.vocab_size))
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
    step = make_train_step(
        loss_fn=lm_loss,
        params_fn=params_fn,
        input_key="tokens",
        label_key="targets",
        parallel=config.parallel,
        skip_nonfinite=config.nan_policy == "skip",
        **layout,
    )
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
        "params": count_params(final.params),
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
    if workdir is not None and jax.process_index() == 0:
        if config.save_model:
            save_variables(workdir, final.variables)
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
