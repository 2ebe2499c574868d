"""The language-model compression pipeline: dense -> (student) -> prune -> quantize -> file.

``run(config, workdir)`` reads a finished ``recipes.lm`` run (``source_dir``), optionally
continues from a smaller student trained from it (``student_dir``, e.g. a distilled
``recipes.lm`` run on the same corpus and tokenizer), prunes it in one shot (magnitude,
Wanda or SparseGPT; 50% or N:M), quantizes it (RTN or GPTQ; SparseGPT followed by GPTQ is
the papers' joint sweep, so pruned weights stay exactly zero), writes the compressed file
(``model.jxcf``: ``compression.save_compressed``), loads it back and checks that its logits
equal those of the compressed model's float weights bit for bit.

Per-layer levels are uniform, or allocated automatically from one global target
(``prune.budget`` / ``quantize.budget``, see ``models.budgets``); the allocation is printed
and saved. Every stage gets one row: validation perplexity and bits per byte, parameters,
nonzeros, bytes on disk (each stage's params written in the file format), the ratio to the
dense float32 file, decode tokens/s at batch 1 (KV cache; quantized kernels dequantized on
the fly) and seconds taken. ``sweep`` adds more one-shot methods (``recipes.one_shot``
entries) as points of the perplexity-vs-bytes plot, with its Pareto front.

Writes ``results.json``, ``table.md``, ``model.jxcf`` and ``perplexity_vs_bytes.png``.
"""

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_dict

from jaxopt_models import quantization as qz
from jaxopt_models.checks import check_one_of
from jaxopt_models.compression import decode_compressed, encode_compressed, load_compressed
from jaxopt_models.data import lm_eval_batches, lm_train_batch
from jaxopt_models.models import budgets
from jaxopt_models.models import calibration as cal
from jaxopt_models.models.generate import generate
from jaxopt_models.models.weight_only import is_quantized
from jaxopt_models.recipes import build, one_shot
from jaxopt_models.recipes.lm import make_lm_eval
from jaxopt_models.recipes.loading import load_lm
from jaxopt_models.recipes.report import markdown_table, pareto_front
from jaxopt_models.training import atomic_write_bytes, atomic_write_json, count_params

RESULTS_FILE = "results.json"
MODEL_FILE = "model.jxcf"
PRUNE_METHODS = ("none", "magnitude", "wanda", "sparsegpt")
QUANT_METHODS = ("none", "rtn", "gptq")
PRUNE_BUDGETS = ("uniform", "owl", "sensitivity")
QUANT_BUDGETS = ("uniform", "sensitivity")


def default_config() -> ml_collections.ConfigDict:
    """The pipeline's config.

    Fields:
      seed: seed of the calibration windows.
      dataset.name: the corpus of the LM run (checked against it).
      source_dir: the finished dense ``recipes.lm`` run.
      student_dir: a finished ``recipes.lm`` run of a smaller model on the same corpus and
        tokenizer (e.g. distilled from ``source_dir``) to compress instead; None: none.
      calibration_examples / calibration_batch_size: random training windows (the run's
        context each) the data-aware methods read, and windows per forward pass.
      eval_batch_size: windows per evaluation batch (every held-out token scored once).
      prune.method: ``"none"``, ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"``;
        prune.sparsity: global fraction of kernel weights pruned; prune.n_m: ``"n:m"``
        instead of a fraction; prune.budget: ``"uniform"`` (every layer at ``sparsity``),
        ``"owl"`` or ``"sensitivity"`` (``models.budgets``; ``sparsity`` is the
        parameter-weighted mean).
      quantize.method: ``"none"``, ``"rtn"`` or ``"gptq"``; quantize.bits,
        quantize.group_size (inputs per grid; None: per output column), quantize.symmetric;
        quantize.budget: ``"uniform"`` or ``"sensitivity"`` (mixed precision with mean
        ``bits`` over ``quantize.allowed_bits``); quantize.embedding_bits: RTN bits of the
        token embedding (one grid per token; it is also the tied output head), None: float.
      damp / block_size: SparseGPT's and GPTQ's Hessian damping and block.
      layers: per-layer rules ``{pattern: "skip"}`` (left float) under the library's
        convention (``tree.rule_for``).
      huffman: Huffman-code the file's integer streams when smaller.
      decode.prompt_tokens / new_tokens / rounds: the decode-speed measurement (greedy,
        batch 1, median over rounds after one compiling call).
      sweep: more ``recipes.one_shot`` method entries (e.g. ``"gptq bits=3"``) applied to
        the model being compressed; each is a point of the perplexity-vs-bytes plot.
      plots: draw ``perplexity_vs_bytes.png`` (needs matplotlib).
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = ml_collections.ConfigDict({"name": "python_stdlib"})
    c.source_dir = config_dict.placeholder(str)
    c.student_dir = config_dict.placeholder(str)
    c.calibration_examples = 256
    c.calibration_batch_size = 64
    c.eval_batch_size = 32
    c.prune = ml_collections.ConfigDict(
        {"method": "sparsegpt", "sparsity": 0.5, "budget": "uniform"}
    )
    c.prune.n_m = config_dict.placeholder(str)
    c.quantize = ml_collections.ConfigDict(
        {"method": "gptq", "bits": 4, "symmetric": False, "budget": "uniform"}
    )
    c.quantize.group_size = config_dict.placeholder(int)
    c.quantize.allowed_bits = (2, 3, 4, 8)
    c.quantize.embedding_bits = config_dict.placeholder(int)
    c.damp = 0.01
    c.block_size = 128
    c.layers = ml_collections.ConfigDict()
    c.huffman = True
    c.decode = ml_collections.ConfigDict({"prompt_tokens": 16, "new_tokens": 240, "rounds": 3})
    c.sweep = ()
    c.plots = True
    return c


# ----------------------------------------------------------------------------- checks
def _stage_plan(config) -> dict[str, Any]:
    """Checks every field; returns the one-shot method and settings of each stage."""
    p, q = config.prune, config.quantize
    check_one_of("config.prune.method", p.method, PRUNE_METHODS)
    check_one_of("config.quantize.method", q.method, QUANT_METHODS)
    check_one_of("config.prune.budget", p.budget, PRUNE_BUDGETS)
    check_one_of("config.quantize.budget", q.budget, QUANT_BUDGETS)
    if p.method == "none" and q.method == "none":
        raise ValueError(
            "config.prune.method and config.quantize.method are both 'none': nothing to do"
        )
    if p.method != "none" and q.method == "gptq" and p.method != "sparsegpt":
        raise ValueError(
            f"config.quantize.method='gptq' after config.prune.method={p.method!r}: GPTQ "
            "moves pruned weights off zero; use prune.method='sparsegpt' (the joint sweep) "
            "or quantize.method='rtn'"
        )
    if p.n_m is not None and p.budget != "uniform":
        raise ValueError(
            f"config.prune.budget={p.budget!r} allocates fractions; with config.prune.n_m="
            f"{p.n_m!r} every layer keeps the same pattern: set prune.budget='uniform'"
        )
    if q.budget != "uniform" and q.method == "none":
        raise ValueError(f"config.quantize.budget={q.budget!r} needs a quantize.method")
    if q.embedding_bits is not None:
        cal.check_setting("bits", q.embedding_bits, "config.quantize.embedding_bits")
    allowed = tuple(q.allowed_bits)
    for b in allowed:
        cal.check_setting("bits", b, "config.quantize.allowed_bits")
    if q.budget != "uniform" and not min(allowed) <= q.bits <= max(allowed):
        raise ValueError(
            f"config.quantize.bits={q.bits} (the mean) cannot be met with "
            f"config.quantize.allowed_bits={allowed}: it must lie in "
            f"[{min(allowed)}, {max(allowed)}]"
        )
    prune = {"sparsity": p.sparsity, "n_m": p.n_m, "damp": config.damp}
    prune["block_size"] = config.block_size
    quant = {"bits": q.bits, "group_size": q.group_size, "symmetric": q.symmetric}
    plan = {}
    if p.method != "none":
        settings = {k: prune[k] for k in cal.METHOD_SETTINGS[p.method]}
        if p.n_m is not None:
            settings.pop("sparsity")
        else:
            settings.pop("n_m")
        cal.check_settings(p.method, settings, "config.prune")
        plan["pruned"] = (p.method, settings)
    if q.method != "none":
        if p.method == "sparsegpt" and q.method == "gptq":
            name, settings = "sparsegpt+gptq", {**plan["pruned"][1], **quant}
        else:
            name = q.method
            settings = {**quant, "damp": config.damp, "block_size": config.block_size}
            settings = {k: settings[k] for k in cal.METHOD_SETTINGS[name]}
        cal.check_settings(name, settings, "config.quantize")
        plan["quantized"] = (name, settings)
    return plan


def _check(config) -> tuple[dict[str, Any], list[tuple[str, str, dict]], dict[str, Any]]:
    from jaxopt_models.recipes import config as schema

    schema.check_fields(config, default_config(), "lm_compress")
    for key in ("calibration_examples", "calibration_batch_size", "eval_batch_size"):
        build.check_int(config[key], key, 1)
    for key in ("prompt_tokens", "new_tokens", "rounds"):
        build.check_int(config.decode[key], f"decode.{key}", 1)
    if config.source_dir is None:
        raise ValueError("config.source_dir must name a finished recipes.lm run")
    for key in ("huffman", "plots"):
        if not isinstance(config[key], bool):
            raise TypeError(f"config.{key}={config[key]!r} must be a bool")
    plan = _stage_plan(config)
    rules = dict(config.layers.to_dict() if hasattr(config.layers, "to_dict") else config.layers)
    for pattern, value in rules.items():
        if value != cal.SKIP:
            raise ValueError(f"config.layers[{pattern!r}]={value!r} must be 'skip'")
    section = one_shot.one_shot_section(methods=tuple(config.sweep) or ("rtn",))
    sweep = one_shot.check_section(section)[0] if config.sweep else []
    return plan, sweep, rules


# ----------------------------------------------------------------------------- pieces
def _load(config, directory: str, field: str):
    trained = load_lm(directory)
    if trained.dataset.name != config.dataset.name:
        raise ValueError(
            f"config.{field}={directory!r} is a language model of corpus "
            f"{trained.dataset.name!r} but config.dataset.name={config.dataset.name!r}"
        )
    return trained


def _check_student(teacher, student, directory: str) -> None:
    t, s = teacher.results, student.results
    for key in ("tokenizer", "vocab_size"):
        if t.get(key) != s.get(key):
            raise ValueError(
                f"config.student_dir={directory!r} has {key}={s.get(key)!r} but the "
                f"source run has {t.get(key)!r}: a student must share the tokenizer"
            )
    if len(teacher.dataset.val) != len(student.dataset.val):
        raise ValueError(
            f"config.student_dir={directory!r} was split differently from the source run "
            "(its validation stream differs); use the same dataset fields and seed"
        )


def _nonzeros(tree) -> int:
    return int(sum(int(jnp.sum(jnp.asarray(x) != 0)) for x in jax.tree.leaves(tree)))


def _embedding_path(params) -> tuple[str, ...]:
    """The token embedding's path (the table that is also the tied head)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = tuple(getattr(k, "key", str(k)) for k in path)
        if keys[-1] == "embedding" and leaf.ndim == 2:
            return keys
    raise ValueError("config.quantize.embedding_bits: the model has no token embedding table")


def _get(tree, keys):
    for k in keys:
        tree = tree[k]
    return tree


def _set(tree, keys, value):
    if not keys:
        return value
    return {**tree, keys[0]: _set(tree[keys[0]], keys[1:], value)}


def _file_bytes(params, quantized, huffman: bool) -> int:
    """Bytes of the compressed file of ``params`` with ``quantized`` records (encoded in
    memory, nothing written)."""
    return len(encode_compressed(params, quantized=quantized, huffman=huffman))


def _decode_speed(model, params, prompt, new_tokens: int, rounds: int) -> float:
    """Greedy KV-cache decode tokens/s at batch 1 (median of ``rounds`` compiled calls)."""

    def once():
        t0 = time.perf_counter()
        jax.block_until_ready(generate(model, params, prompt, max_new_tokens=new_tokens))
        return time.perf_counter() - t0

    once()  # compiles
    return float(new_tokens / np.median([once() for _ in range(rounds)]))


# ----------------------------------------------------------------------------- the recipe
def run(config, workdir: str | None, *, overwrite: bool = False) -> dict[str, Any]:
    """Runs the pipeline; returns ``{"stages", "table", "points", "allocations", ...}``.

    Args:
      config: ``default_config()`` with overrides; every field is checked before any
        calibration (errors name ``config.<field>``).
      workdir: output directory (``None``: nothing written but a temporary file).
      overwrite: replace a finished run in ``workdir``.

    Returns:
      ``stages``: one row per stage (``dense``, ``student``, ``pruned``, ``quantized``,
      ``file``) with ``val_perplexity``, ``val_bits_per_byte``, ``test_bits_per_byte``,
      ``params``, ``nonzeros``, ``bytes`` (on disk), ``ratio`` (dense file bytes /
      bytes), ``decode_tokens_per_second`` and ``seconds``; ``file_logits_equal``: the
      reloaded file's logits equal the compressed model's bit for bit.

    Example:
      >>> results = run(config, "runs/lm_compress")
      >>> print(results["table"])
    """
    with build.config_errors():
        plan, sweep, rules = _check(config)
        build.prepare_workdir(workdir, overwrite=overwrite, resume=False, marker=RESULTS_FILE)
        source = _load(config, config.source_dir, "source_dir")
        student = None
        if config.student_dir is not None:
            student = _load(config, config.student_dir, "student_dir")
            _check_student(source, student, config.student_dir)
        target = student or source
        ds, context = target.dataset, target.config.context
        model = target.model
        if config.decode.prompt_tokens + config.decode.new_tokens > model.max_len:
            raise ValueError(
                f"config.decode.prompt_tokens + new_tokens = "
                f"{config.decode.prompt_tokens + config.decode.new_tokens} is longer than the "
                f"model's context {model.max_len}"
            )
        variables = jax.device_get(target.variables)
        for name, settings in plan.values():
            cal.plan_compression(
                model,
                variables,
                np.zeros((1, context), np.int32),
                method=name,
                settings=settings,
                layers=rules,
                field="config",
                layers_field="config.layers",
            )
        if config.quantize.embedding_bits is not None:
            emb_path = _embedding_path(variables["params"])
    n, cb = config.calibration_examples, config.calibration_batch_size
    windows = lm_train_batch(ds.train, n, context, seed=config.seed, step=0)["tokens"]
    batches = [windows[i : i + cb] for i in range(0, n, cb)]
    bs = config.eval_batch_size
    scorer = make_lm_eval(model, None, bs, context)
    first = next(lm_eval_batches(ds.val, bs, context))["tokens"]
    dec = config.decode
    prompt = jnp.asarray(ds.val[None, : dec.prompt_tokens], jnp.int32)
    kw = {"apply_kwargs": {"train": False}, "layers_field": "config.layers"}

    def row(stage, params, *, bytes_, seconds, lm=target, decode_params=None, **extra):
        """One stage's row; ``lm`` is the run whose model the params belong to (the
        dense source or the model being compressed)."""
        score = scorer if lm is target else make_lm_eval(lm.model, None, bs, lm.config.context)
        scores = {}
        for split in ("val", "test"):
            r = score(params, getattr(lm.dataset, split), lm.dataset.tokenizer)
            scores.update({f"{split}_{k}": v for k, v in r.items() if k != "tokens"})
        r = {
            "stage": stage,
            **scores,
            "params": count_params(params),
            "nonzeros": _nonzeros(params),
            "bytes": int(bytes_),
            "decode_tokens_per_second": _decode_speed(
                lm.model,
                params if decode_params is None else decode_params,
                prompt,
                dec.new_tokens,
                dec.rounds,
            ),
            "seconds": seconds,
            **extra,
        }
        print(
            f"[lm_compress] {stage}: val bits/byte {r['val_bits_per_byte']:.4f}, "
            f"{r['bytes']:,} bytes"
        )
        return r

    dense_params = jax.device_get(source.variables["params"])
    dense_bytes = _file_bytes(dense_params, None, config.huffman)
    stages = [row("dense", dense_params, bytes_=dense_bytes, seconds=0.0, lm=source)]
    current = variables
    if student is not None:
        b = _file_bytes(variables["params"], None, config.huffman)
        stages.append(row("student", variables["params"], bytes_=b, seconds=0.0))
    allocations: dict[str, Any] = {}
    prune_rules: dict[str, Any] = {}
    if "pruned" in plan:
        name, settings = plan["pruned"]
        t0 = time.perf_counter()
        if config.prune.budget != "uniform":
            prune_rules = _allocate(
                config, "prune", model, current, batches, name, settings, rules, allocations
            )
        layer_rules = _merge_rules(rules, prune_rules)
        pruned, report = cal.compress_model(
            model, current, batches, method=name, settings=settings, layers=layer_rules,
            field="config.prune", **kw,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        b = _file_bytes(pruned["params"], None, config.huffman)
        stages.append(
            row(
                "pruned",
                pruned["params"],
                bytes_=b,
                seconds=seconds,
                method=name,
                kernel_sparsity=_kernel_sparsity(report),
            )
        )
        if plan.get("quantized", ("",))[0] != "sparsegpt+gptq":
            current = pruned  # the joint sweep starts again from the unpruned kernels
    compressed = jax.device_get(current["params"])
    stored = qparams = None
    if "quantized" in plan:
        name, settings = plan["quantized"]
        t0 = time.perf_counter()
        quant_rules = {}
        if config.quantize.budget != "uniform":
            quant_rules = _allocate(
                config, "quantize", model, current, batches, name, settings, rules, allocations
            )
        joint_rules = prune_rules if name == "sparsegpt+gptq" else {}
        layer_rules = _merge_rules(rules, joint_rules, quant_rules)
        qvars, report = cal.compress_model(
            model, current, batches, method=name, settings=settings, layers=layer_rules,
            field="config.quantize", **kw,
        )  # fmt: skip
        qparams = report.qparams  # the kernels as integers: what decoding runs on
        stored = _quantized_only(qparams)  # what the file stores as integers
        compressed = jax.device_get(qvars["params"])  # the float weights they stand for
        if config.quantize.embedding_bits is not None:
            qemb = qz.quantize(_get(compressed, emb_path), config.quantize.embedding_bits, axis=0)
            compressed = _set(compressed, emb_path, qz.dequantize(qemb))
            qparams = _set(qparams, emb_path, _get(compressed, emb_path))  # gathered as float
            stored = _set(stored, emb_path, qemb)
        seconds = time.perf_counter() - t0
    # the file: encoded once, written (with a workdir), read back, compared bit for bit
    t0 = time.perf_counter()
    data = encode_compressed(compressed, quantized=stored, huffman=config.huffman)
    if workdir is not None:
        path = os.path.join(workdir, MODEL_FILE)
        atomic_write_bytes(path, data)
        loaded = load_compressed(path)
    else:
        loaded = decode_compressed(data)
    loaded, size = jax.device_get(loaded), len(data)
    file_seconds = time.perf_counter() - t0
    if qparams is not None:
        stages.append(
            row(
                "quantized",
                compressed,
                bytes_=size,
                seconds=seconds,
                decode_params=qz.pack_params(qparams),
                method=name,
            )
        )
    fwd = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
    expected, got = np.asarray(fwd(compressed, first)), np.asarray(fwd(loaded, first))
    equal = bool(np.array_equal(expected, got))
    stages.append(row("file", loaded, bytes_=size, seconds=file_seconds, logits_equal=equal))
    for r in stages:
        r["ratio"] = dense_bytes / r["bytes"]
    points = [
        {"label": r["stage"], "bytes": r["bytes"], "val_perplexity": r["val_perplexity"]}
        for r in stages
    ]
    skipped = [p for p, v in rules.items() if v == cal.SKIP]
    for m in sweep:
        entry, name, settings = m.entry, m.name, m.settings
        alloc = one_shot.allocate(
            model, variables, batches, m, exclude=skipped, apply_kwargs={"train": False}
        )
        layers = rules if alloc is None else {**rules, **alloc.rules}
        vars_, report = cal.compress_model(
            model, variables, batches, method=name, settings=settings, layers=layers,
            field="config.sweep", **kw,
        )  # fmt: skip
        p = jax.device_get(vars_["params"])
        quant = None if report.qparams is None else _quantized_only(report.qparams)
        b = _file_bytes(p, quant, config.huffman)
        ppl = scorer(p, ds.val, ds.tokenizer)["perplexity"]
        points.append({"label": entry, "bytes": b, "val_perplexity": ppl})
    front = pareto_front([{"bytes": p["bytes"], "accuracy": -p["val_perplexity"]} for p in points])
    for i, p in enumerate(points):
        p["pareto"] = i in front
    results = {
        "source_dir": config.source_dir,
        "student_dir": config.student_dir,
        "dataset": ds.name,
        "stages": stages,
        "table": format_table(stages),
        "file_logits_equal": equal,
        "points": points,
        "allocations": allocations,
        "config": config.to_dict(),
    }
    if workdir is not None and jax.process_index() == 0:
        if config.plots:
            plot_perplexity_vs_bytes(points, os.path.join(workdir, "perplexity_vs_bytes.png"))
        with open(os.path.join(workdir, "table.md"), "w") as f:
            f.write(results["table"] + "\n")
        atomic_write_json(os.path.join(workdir, RESULTS_FILE), results)
    return results


def _kernel_sparsity(report) -> float:
    size = sum(r.size for r in report.layers)
    return sum(r.size - r.nonzeros for r in report.layers) / max(size, 1)


def _quantized_only(qparams):
    """The tree ``save_compressed`` takes as ``quantized``: the quantized leaves, None
    elsewhere."""
    return jax.tree.map(lambda x: x if is_quantized(x) else None, qparams, is_leaf=is_quantized)


def _allocate(config, stage, model, variables, batches, method, settings, rules, allocations):
    """Per-layer rules from one global target (``models.budgets``); printed and kept."""
    exclude = [p for p, v in rules.items() if v == cal.SKIP]
    if stage == "prune":
        method_ = one_shot.Method(stage, method, settings, config.prune.budget)
    else:
        # the joint SparseGPT+GPTQ sweep is allotted its bits by GPTQ's measured costs
        measured = "gptq" if method == "sparsegpt+gptq" else method
        base = {k: v for k, v in settings.items() if k in cal.METHOD_SETTINGS[measured]}
        method_ = one_shot.Method(stage, measured, base, config.quantize.budget)
    alloc = one_shot.allocate(
        model,
        variables,
        batches,
        method_,
        exclude=exclude,
        allowed_bits=tuple(config.quantize.allowed_bits),
        apply_kwargs={"train": False},
    )
    text = budgets.format_allocation(alloc)
    print(f"[lm_compress] {stage} allocation ({config[stage].budget}):\n{text}")
    allocations[stage] = {**budgets.allocation_dict(alloc), "text": text}
    return alloc.rules


def _merge_rules(*rule_sets: dict[str, Any]) -> dict[str, Any]:
    """Per-layer rules of several stages for one method that reads them all (the joint
    sweep reads both a layer's sparsity and its bits); ``"skip"`` wins."""
    out: dict[str, Any] = {}
    for rules in rule_sets:
        for path, value in rules.items():
            if value == cal.SKIP or out.get(path) == cal.SKIP:
                out[path] = cal.SKIP
            else:
                out[path] = {**out.get(path, {}), **value}
    return out


def format_table(stages: list[dict[str, Any]]) -> str:
    """The markdown table of the pipeline's stages."""
    header = [
        "stage",
        "val perplexity",
        "val bits/byte",
        "test bits/byte",
        "params",
        "nonzeros",
        "bytes on disk",
        "ratio",
        "decode tokens/s",
        "seconds",
    ]
    lines = [
        [
            r["stage"],
            f"{r['val_perplexity']:.4f}",
            f"{r['val_bits_per_byte']:.4f}",
            f"{r['test_bits_per_byte']:.4f}",
            f"{r['params']:,}",
            f"{r['nonzeros']:,}",
            f"{r['bytes']:,}",
            f"{r['ratio']:.1f}x",
            f"{r['decode_tokens_per_second']:.0f}",
            f"{r['seconds']:.1f}",
        ]
        for r in stages
    ]
    return markdown_table(header, lines)


def plot_perplexity_vs_bytes(points: list[dict[str, Any]], path: str) -> str:
    """Every stage and sweep point by file size (log scale) with the Pareto front."""
    from jaxopt_models.recipes.report import _pyplot, _save_png

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for p in points:
        ax.plot(p["bytes"], p["val_perplexity"], "o" if p["pareto"] else "x", color="C0")
        ax.annotate(
            p["label"],
            (p["bytes"], p["val_perplexity"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    front = sorted((p for p in points if p["pareto"]), key=lambda p: p["bytes"])
    ax.plot(
        [p["bytes"] for p in front],
        [p["val_perplexity"] for p in front],
        "-",
        color="C1",
        label="Pareto front",
    )
    ax.set_xscale("log")
    ax.set_xlabel("bytes on disk (log scale)")
    ax.set_ylabel("validation perplexity")
    ax.set_title("Perplexity vs size")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save_png(fig, path)
    plt.close(fig)
    return path


def print_results(results: dict[str, Any]) -> None:
    """Prints the stage table, the allocation (if any) and the file check."""
    print(results["table"])
    for stage, alloc in results["allocations"].items():
        print(f"{stage} allocation: {alloc.get('text', alloc)}")
    print(f"file logits equal to the compressed model's: {results['file_logits_equal']}")
