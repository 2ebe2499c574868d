"""The one-shot compression recipe: a trained model, a few calibration batches, no retraining.

``run(config, workdir)`` trains the dense model with the train recipe (into
``<workdir>/dense``), or loads one with ``config.source_dir`` (a finished train run), then
compresses it once per entry of ``config.one_shot.methods`` with ``models.compress_model``
(magnitude, Wanda, SparseGPT, RTN, GPTQ, AWQ, SmoothQuant, SparseGPT+GPTQ) on
``calibration_examples`` training images, and evaluates each result on the validation and
test splits: quantized methods through their stored form (``models.apply_with_qtensors``
on the QTensor kernels), pruning methods through the float kernels with exact zeros.

A method entry is a name, optionally followed by settings that replace the section's for
that entry: ``"sparsegpt"``, ``"sparsegpt n_m=2:4"``, ``"gptq bits=3 group_size=32"``. The
section's shared settings apply to every method that reads them (``sparsity`` to the
pruning methods, ``bits`` to the quantizing ones, ...); ``n_m``, when set, replaces
``sparsity``. ``layers`` holds per-layer rules ``{pattern: {setting: value}}`` or
``{pattern: "skip"}`` (e.g. keep the classifier head float), under the library's
convention (``tree.rule_for``); a rule's settings apply to the methods that read them.

Writes ``one_shot.json`` (the rows, per-layer reports and the config) and ``table.md``
(one row per method, then one per-layer table per method).
"""

import json
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_dict

from jaxopt_models import quantization as qz
from jaxopt_models.checks import check_one_of
from jaxopt_models.data import lm_eval_batches, lm_train_batch
from jaxopt_models.metrics import classification_report
from jaxopt_models.models import budgets
from jaxopt_models.models import calibration as cal
from jaxopt_models.models.weight_only import apply_with_qtensors, stored_bytes
from jaxopt_models.recipes import build
from jaxopt_models.recipes import config as schema
from jaxopt_models.recipes.lm import make_lm_eval
from jaxopt_models.recipes.loading import is_lm_run, load_lm, load_trained
from jaxopt_models.recipes.report import markdown_table
from jaxopt_models.recipes.train import train
from jaxopt_models.training import atomic_write_json, count_params, initialize_distributed

RESULTS_FILE = "one_shot.json"
TABLE_FILE = "table.md"
SECTION = "config.one_shot"
BUDGETS = ("uniform", "owl", "sensitivity")
_BITS_BUDGET_METHODS = ("rtn", "gptq", "awq")
_SHARED = tuple(cal.DEFAULT_SETTINGS)


def one_shot_section(**overrides: Any) -> ml_collections.ConfigDict:
    """The ``one_shot`` section.

    Fields:
      methods: method entries, each ``"<method>"`` or ``"<method> key=value ..."`` (see the
        module docstring); methods are ``models.calibration.METHODS``.
      sparsity, n_m, bits, group_size, symmetric, damp, block_size, act_order, n_grid,
        alpha, act_bits, activations: the shared settings (``models.calibration.
        DEFAULT_SETTINGS``); ``n_m`` is ``"n:m"`` or None.
      calibration_examples: training examples the calibration reads (the first ones of the
        training split, which excludes the validation split).
      calibration_batch_size: examples per calibration forward pass.
      sequential: calibrate each layer group on the compressed layers before it.
      layers: ``{pattern: {setting: value}}`` or ``{pattern: "skip"}``.
      budget: per-layer levels from the global ``sparsity`` / ``bits`` (``models.budgets``):
        ``"uniform"`` (every layer the same), ``"owl"`` (outlier-weighted sparsity; pruning
        methods) or ``"sensitivity"`` (levels chosen from each layer's measured loss
        increase; pruning methods and RTN / GPTQ / AWQ, whose ``bits`` is then the
        parameter-weighted mean over ``allowed_bits``). A method entry may set its own,
        e.g. ``"sparsegpt budget=owl"``.
      allowed_bits: the bit widths a ``"sensitivity"`` bits allocation chooses from.
    """
    c = ml_collections.ConfigDict()
    c.methods = ("magnitude", "wanda", "sparsegpt", "rtn", "gptq")
    c.sparsity = 0.5
    c.n_m = config_dict.placeholder(str)
    c.bits = 4
    c.group_size = config_dict.placeholder(int)
    c.symmetric = False
    c.damp = 0.01
    c.block_size = 128
    c.act_order = False
    c.n_grid = 20
    c.alpha = 0.5
    c.act_bits = 8
    c.activations = "per_token"
    c.calibration_examples = 1024
    c.calibration_batch_size = 256
    c.sequential = True
    c.layers = ml_collections.ConfigDict()
    c.budget = "uniform"
    c.allowed_bits = (2, 3, 4, 8)
    c.update(overrides)
    return c


def default_config() -> ml_collections.ConfigDict:
    """The one-shot recipe's config: ``base_config()`` (to train the dense model),
    ``source_dir`` and the ``one_shot`` section.

    Fields:
      source_dir: a finished train run to compress instead of training one (its model
        config is used; ``dataset`` must name the same dataset); the training fields are
        then unused.

    Example:
      >>> c = default_config()
      >>> c.one_shot.methods = ("sparsegpt", "sparsegpt n_m=2:4", "gptq bits=3")
    """
    c = schema.base_config()
    c.source_dir = config_dict.placeholder(str)
    c.one_shot = one_shot_section()
    return c


# ----------------------------------------------------------------------------- checks
def _parse_value(text: str) -> Any:
    low = text.lower()
    if low == "none":
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_method(entry: Any, index: int) -> tuple[str, dict[str, Any]]:
    """``"gptq bits=3 group_size=32"`` -> ``("gptq", {"bits": 3, "group_size": 32})``.

    Raises:
      ValueError: naming ``config.one_shot.methods[index]``: not a string, an unknown
        method, a malformed ``key=value`` or a setting the method does not read.

    Example:
      >>> parse_method("sparsegpt n_m=2:4", 0)
      ('sparsegpt', {'n_m': '2:4'})
    """
    where = f"{SECTION}.methods[{index}]"
    if not isinstance(entry, str) or not entry.split():
        raise ValueError(f"{where}={entry!r} must be a method name, e.g. 'gptq bits=3'")
    name, *parts = entry.split()
    check_one_of(where, name, cal.METHODS)
    overrides = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{where}={entry!r}: {part!r} must be key=value, e.g. bits=3")
        if key == "budget":
            overrides[key] = check_one_of(f"{where} budget", value, BUDGETS)
            continue
        if key not in cal.METHOD_SETTINGS[name]:
            raise ValueError(
                f"{where}={entry!r}: {key!r} is not read by {name!r}; it reads "
                f"{[*cal.METHOD_SETTINGS[name], 'budget']}"
            )
        overrides[key] = cal.check_setting(key, _parse_value(value), f"{where} {key}")
    return name, overrides


def _layer_rules(section) -> dict[str, Any]:
    rules = section.layers.to_dict() if hasattr(section.layers, "to_dict") else section.layers
    out = {}
    for pattern, value in dict(rules or {}).items():
        where = f"{SECTION}.layers[{pattern!r}]"
        if value == cal.SKIP:
            out[pattern] = value
            continue
        if not isinstance(value, dict):
            raise ValueError(f"{where}={value!r} must be a mapping of settings or 'skip'")
        for key, v in value.items():
            if key not in cal.DEFAULT_SETTINGS:
                raise ValueError(
                    f"{where}.{key} is not a one-shot setting; known: "
                    f"{sorted(cal.DEFAULT_SETTINGS)}"
                )
            cal.check_setting(key, v, f"{where}.{key}")
        out[pattern] = dict(value)
    return out


def _method_settings(section, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    settings = {k: section[k] for k in cal.METHOD_SETTINGS[name]}
    if settings.get("n_m") is not None or overrides.get("n_m") is not None:
        settings.pop("sparsity", None)
    if overrides.get("sparsity") is not None:
        settings.pop("n_m", None)
    settings.update(overrides)
    return settings


def _method_rules(rules: dict[str, Any], name: str) -> dict[str, Any]:
    reads = cal.METHOD_SETTINGS[name]
    return {
        p: v if v == cal.SKIP else {k: x for k, x in v.items() if k in reads}
        for p, v in rules.items()
    }


class Method(NamedTuple):
    """One checked method entry: its text, the method, its settings and its budget rule."""

    entry: str
    name: str
    settings: dict[str, Any]
    budget: str


def check_budget(budget: str, name: str, settings: dict, allowed_bits: tuple, where: str):
    """Refuses a budget rule the method cannot use, or a target it cannot meet."""
    if budget == "uniform":
        return
    if name in cal.PRUNING_METHODS:
        if settings.get("n_m") is not None:
            raise ValueError(
                f"{where}: budget={budget!r} allocates sparsities; an n:m pattern "
                f"({settings['n_m']}) fixes every layer's: use budget='uniform'"
            )
        return
    if budget == "sensitivity" and name in _BITS_BUDGET_METHODS:
        lo, hi = min(allowed_bits), max(allowed_bits)
        if not lo <= settings["bits"] <= hi:
            raise ValueError(
                f"{where}: bits={settings['bits']} (the mean of a mixed-precision budget) "
                f"cannot be met with allowed_bits={allowed_bits}: it must lie in [{lo}, {hi}]"
            )
        return
    allowed = "pruning methods" if budget == "owl" else "pruning methods, rtn, gptq and awq"
    raise ValueError(f"{where}: budget={budget!r} does not apply to {name!r}; it serves {allowed}")


def allocate(
    model,
    variables,
    batches,
    method: Method,
    *,
    exclude=(),
    allowed_bits=budgets.BIT_LEVELS,
    apply_kwargs=None,
) -> budgets.Allocation | None:
    """The per-layer allocation of ``method.budget`` (None for ``"uniform"``).

    Sparsity targets are the method's ``sparsity``; bits targets its ``bits`` as the
    parameter-weighted mean over ``allowed_bits``. The joint ``sparsegpt+gptq`` sweep is not
    allocated (refused by :func:`check_budget`).
    """
    name, s = method.name, method.settings
    if method.budget == "uniform":
        return None
    kw = {"exclude": tuple(exclude), "apply_kwargs": apply_kwargs}
    if name in cal.PRUNING_METHODS:
        if method.budget == "owl":
            return budgets.owl_sparsity(model, variables, batches, target=s["sparsity"], **kw)
        base = {k: v for k, v in s.items() if k not in ("sparsity", "n_m")}
        return budgets.sensitivity_sparsity(
            model, variables, batches, target=s["sparsity"], method=name, settings=base, **kw
        )
    base = {k: v for k, v in s.items() if k != "bits"}
    return budgets.sensitivity_bits(
        model,
        variables,
        batches,
        method=name,
        average_bits=s["bits"],
        levels=tuple(allowed_bits),
        settings=base,
        **kw,
    )


def check_section(section) -> tuple[list["Method"], dict[str, Any]]:
    """Checks every field of a ``one_shot`` section.

    Returns:
      ``(methods, rules)``: one :class:`Method` per entry and the layer rules.

    Raises:
      ValueError / TypeError naming ``config.one_shot.<field>``.
    """
    for key in _SHARED:
        cal.check_setting(key, section[key], f"{SECTION}.{key}")
    for key in ("calibration_examples", "calibration_batch_size"):
        value = section[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{SECTION}.{key}={value!r} must be an int >= 1")
    if not isinstance(section.sequential, bool):
        raise TypeError(f"{SECTION}.sequential={section.sequential!r} must be a bool")
    entries = section.methods
    if isinstance(entries, str) or not isinstance(entries, (tuple, list)) or not entries:
        raise ValueError(
            f"{SECTION}.methods={entries!r} must be a non-empty list of method entries"
        )
    check_one_of(f"{SECTION}.budget", section.budget, BUDGETS)
    for b in section.allowed_bits:
        cal.check_setting("bits", b, f"{SECTION}.allowed_bits")
    methods = []
    for i, entry in enumerate(entries):
        name, overrides = parse_method(entry, i)
        budget = overrides.pop("budget", section.budget)
        settings = _method_settings(section, name, overrides)
        where = SECTION if not overrides else f"{SECTION}.methods[{i}]={entry!r}:"
        cal.check_settings(name, settings, where)
        check_budget(budget, name, settings, tuple(section.allowed_bits), f"{SECTION}.methods[{i}]")
        methods.append(Method(entry, name, settings, budget))
    labels = [m.entry for m in methods]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{SECTION}.methods={entries!r} lists an entry twice")
    return methods, _layer_rules(section)


# ----------------------------------------------------------------------------- evaluation
def _logits(fn, variables, x: np.ndarray, batch_size: int) -> np.ndarray:
    out = [np.asarray(fn(variables, x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _metrics(fn, variables, data: build.Data, batch_size: int, dense_logits=None) -> dict:
    """Val / test metrics; with ``dense_logits`` also ``test_output_error``, the relative
    squared distance of the test logits to the dense model's."""
    out = {}
    for split, x, y in (("val", data.x_val, data.y_val), ("test", data.x_test, data.y_test)):
        if len(x) == 0:
            continue
        logits = _logits(fn, variables, x, batch_size)
        report = classification_report(y, logits.argmax(-1), data.num_classes)
        out.update({f"{split}_{k}": v for k, v in report.items()})
        if split == "test":
            out["logits"] = logits
    logits = out.pop("logits", None)
    if dense_logits is None:
        return out, logits
    out["test_output_error"] = _relative_distance(logits, dense_logits)
    return out, logits


def _nonzeros(params) -> int:
    return int(sum(int(jnp.sum(jnp.asarray(x) != 0)) for x in jax.tree.leaves(params)))


# ----------------------------------------------------------------------------- the recipe
class _Task(NamedTuple):
    """What the recipe compresses and how it scores a result."""

    model: Any
    variables: Any  # None until the dense model is trained
    calibration: list[Any]  # calibration batches (model inputs)
    sample: Any  # one input batch
    evaluate: Callable[..., tuple[dict[str, Any], Any]]  # (fn, variables, dense) -> metrics
    dataset: str
    model_name: str
    kind: str  # "classifier" or "lm"


def _read_source(config) -> dict[str, Any] | None:
    source = config.source_dir
    if source is None:
        return None
    if not isinstance(source, str) or not os.path.isdir(source):
        raise FileNotFoundError(f"config.source_dir={source!r} is not a directory")
    path = os.path.join(source, "results.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"config.source_dir={source!r} holds no results.json: not a finished run"
        )
    with open(path) as f:
        return json.load(f)


def _classifier_task(config, section, dataset, trained: dict[str, Any] | None) -> _Task:
    data = build.load_data(config, dataset)
    n_calib = section.calibration_examples
    if n_calib > len(data.x_train):
        raise ValueError(
            f"{SECTION}.calibration_examples={n_calib} is more than the "
            f"{len(data.x_train)} training examples"
        )
    if trained is not None:
        name = trained.get("config", {}).get("dataset", {}).get("name")
        if name is not None and name != config.dataset.name:
            raise ValueError(
                f"config.source_dir={config.source_dir!r} was trained on dataset {name!r} "
                f"but config.dataset.name={config.dataset.name!r}; set the same dataset"
            )
        model, variables = load_trained(config.source_dir, sample_input=data.x_train[:1])
        variables = jax.device_get(variables)
        model_name = trained["config"]["model"]["name"]
    else:
        model = build.build_model(config.model, data.num_classes)
        build.fit_settings(config, build.num_steps(len(data.x_train), config.batch_size))
        variables, model_name = None, config.model.name
    calib = data.x_train[:n_calib]
    cb = section.calibration_batch_size
    bs = config.eval_batch_size

    def evaluate(fn, variables, dense_logits=None):
        return _metrics(fn, variables, data, bs, dense_logits)

    task = _Task(
        model,
        variables,
        [calib[i : i + cb] for i in range(0, len(calib), cb)],
        data.x_train[:1],
        evaluate,
        data.name,
        model_name,
        "classifier",
    )
    return task, data


def _lm_task(config, section) -> _Task:
    """A finished ``recipes.lm`` run: calibration on ``calibration_examples`` random
    training windows of the run's context; scores are the whole validation and test streams
    (loss, perplexity, bits per byte) and the output error of the first test batch."""
    trained = load_lm(config.source_dir)
    ds, context = trained.dataset, trained.config.context
    if ds.name != config.dataset.name:
        raise ValueError(
            f"config.source_dir={config.source_dir!r} is a language model of corpus "
            f"{ds.name!r} but config.dataset.name={config.dataset.name!r}; set the same corpus"
        )
    n, cb = section.calibration_examples, section.calibration_batch_size
    windows = lm_train_batch(ds.train, n, context, seed=config.seed, step=0)["tokens"]
    calibration = [windows[i : i + cb] for i in range(0, n, cb)]
    bs = config.eval_batch_size
    scorers = {}  # one compiled scorer per forward function
    first = next(lm_eval_batches(ds.test, bs, context))["tokens"]

    def evaluate(fn, variables, dense_logits=None):
        if fn not in scorers:
            scorers[fn] = make_lm_eval(None, None, bs, context, apply_fn=fn)
        out = {}
        for split in ("val", "test"):
            r = scorers[fn](variables, getattr(ds, split), ds.tokenizer)
            out.update({f"{split}_{k}": v for k, v in r.items() if k != "tokens"})
        logits = np.asarray(fn(variables, first))
        if dense_logits is not None:
            out["test_output_error"] = _relative_distance(logits, dense_logits)
        return out, logits

    task = _Task(
        trained.model,
        jax.device_get(trained.variables),
        calibration,
        windows[:1],
        evaluate,
        ds.name,
        trained.config.model.name,
        "lm",
    )
    return task, ds


def _relative_distance(x, ref) -> float:
    ref = np.asarray(ref, np.float64)
    diff = np.asarray(x, np.float64) - ref
    return float(np.sum(diff**2) / max(np.sum(ref**2), 1e-30))


def run(config, workdir: str | None, *, dataset=None, overwrite: bool = False) -> dict[str, Any]:
    """Gets the dense model, compresses it with every method, writes and returns the rows.

    ``config.source_dir`` may be a finished train run (a classifier) or a finished
    ``recipes.lm`` run: a language model is calibrated on ``calibration_examples`` random
    windows of its training stream (its context length each, drawn with ``config.seed``)
    and scored on the whole validation and test streams (perplexity and bits per byte);
    its corpus split and tokenizer are the run's (``config.dataset.name`` must name its
    corpus; the other dataset and training fields are not read).

    Args:
      config: ``default_config()`` with overrides; every field is checked before anything
        trains or calibrates (``config.one_shot.<field>`` in the messages).
      workdir: output directory (``None``: nothing written; the dense model is then not
        saved either).
      dataset: a ``data.Dataset`` to use instead of ``config.dataset``'s (classifiers).
      overwrite: replace a finished run in ``workdir``.

    Returns:
      ``{"dataset", "model", "kind", "rows", "table", "layer_tables", "dense_dir", ...}``;
      each row has ``method``, the scores (classifiers: ``val_accuracy``,
      ``test_accuracy``, ``test_macro_f1``; language models: ``val_loss``,
      ``val_perplexity``, ``val_bits_per_byte`` and the same for ``test``), ``nonzeros``,
      ``params``, ``kernel_sparsity``, ``bytes``, ``mean_rel_error`` (of the compressed
      layers, on their calibration inputs), ``test_output_error`` (``||f(x) -
      f_dense(x)||^2 / ||f_dense(x)||^2`` of the test logits; a language model's first test
      batch), ``seconds``, ``calibration_seconds`` and the per-layer reports.

    Example:
      >>> results = run(config, "runs/one_shot")
      >>> print(results["table"])
    """
    with build.config_errors():
        schema.check_fields(config, default_config(), "one_shot")
        section = config.one_shot
        methods, rules = check_section(section)
        build.prepare_workdir(
            workdir, overwrite=overwrite, resume=config.resume, marker=RESULTS_FILE
        )
        initialize_distributed(config)
        trained = _read_source(config)
        if trained is not None and is_lm_run(trained):
            task, data = _lm_task(config, section)
        else:
            task, data = _classifier_task(config, section, dataset, trained)
        shapes = task.variables
        if shapes is None:
            shapes = jax.eval_shape(
                lambda x: task.model.init(jax.random.key(0), x, train=False), task.sample
            )
        for m in methods:
            cal.plan_compression(
                task.model,
                shapes,
                task.sample,
                method=m.name,
                settings=m.settings,
                layers=_method_rules(rules, m.name),
                field=SECTION,
                layers_field=f"{SECTION}.layers",
            )
    model, variables = task.model, task.variables
    dense_dir = config.source_dir
    if variables is None:
        dense_dir = None if workdir is None else os.path.join(workdir, "dense")
        state, _ = train(config, data, dense_dir)
        variables = jax.device_get(state.variables)
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
    qfwd = jax.jit(lambda v, x: apply_with_qtensors(model, v, x, train=False))
    dense_metrics, dense_logits = task.evaluate(fwd, variables)
    rows = [
        {
            "method": "dense",
            **dense_metrics,
            "test_output_error": 0.0,
            "params": count_params(variables["params"]),
            "nonzeros": _nonzeros(variables["params"]),
            "kernel_sparsity": 0.0,
            "bytes": qz.size_bytes(variables["params"]),
            "mean_rel_error": 0.0,
            "seconds": 0.0,
            "calibration_seconds": 0.0,
        }
    ]
    layer_tables = []
    skipped = [p for p, v in rules.items() if v == cal.SKIP]
    for m in methods:
        entry, name, settings = m.entry, m.name, m.settings
        t0 = time.perf_counter()
        layer_rules = _method_rules(rules, name)
        alloc = allocate(
            model,
            variables,
            task.calibration,
            m,
            exclude=skipped,
            allowed_bits=tuple(section.allowed_bits),
            apply_kwargs={"train": False},
        )
        if alloc is not None:  # a layer's full path beats every pattern
            layer_rules = {**layer_rules, **alloc.rules}
        new_variables, report = cal.compress_model(
            model,
            variables,
            task.calibration,
            method=name,
            settings=settings,
            sequential=section.sequential,
            layers=layer_rules,
            apply_kwargs={"train": False},
            field=SECTION,
            layers_field=f"{SECTION}.layers",
        )
        seconds = time.perf_counter() - t0
        if report.qparams is not None:
            stored = {**variables, "params": report.qparams}
            metrics, _ = task.evaluate(qfwd, stored, dense_logits)
            size = stored_bytes(report.qparams)
        else:
            metrics, _ = task.evaluate(fwd, new_variables, dense_logits)
            size = qz.size_bytes(new_variables["params"])
        compressed = [r for r in report.layers if r.settings is not None]
        zeros = sum(r.size - r.nonzeros for r in report.layers)
        kernels_total = sum(r.size for r in report.layers)
        errors = [r.rel_error for r in compressed if r.rel_error is not None]
        rows.append(
            {
                "method": entry,
                **metrics,
                "params": count_params(new_variables["params"]),
                "nonzeros": _nonzeros(new_variables["params"]),
                "kernel_sparsity": zeros / max(kernels_total, 1),
                "bytes": size,
                "mean_rel_error": float(np.mean(errors)) if errors else 0.0,
                "seconds": seconds,
                "calibration_seconds": report.calibration_seconds,
                "layers": [r._asdict() for r in report.layers],
                "budget": m.budget,
                "allocation": None if alloc is None else budgets.allocation_dict(alloc),
            }
        )
        text = cal.format_layer_table(report)
        if alloc is not None:
            text = f"{m.budget} allocation:\n\n{budgets.format_allocation(alloc)}\n\n{text}"
        layer_tables.append(f"### {entry}\n\n" + text)
    results = {
        "dataset": task.dataset,
        "model": task.model_name,
        "kind": task.kind,
        "dense_dir": dense_dir,
        "calibration_examples": section.calibration_examples,
        "sequential": section.sequential,
        "rows": rows,
        "table": format_table(rows),
        "layer_tables": layer_tables,
        "config": config.to_dict(),
    }
    if workdir is not None and jax.process_index() == 0:
        atomic_write_json(os.path.join(workdir, RESULTS_FILE), results)
        text = "\n".join([results["table"], *layer_tables])
        with open(os.path.join(workdir, TABLE_FILE), "w") as f:
            f.write(text)
    return results


def format_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of the recipe's rows (one per method, dense first).

    Example:
      >>> print(format_table(results["rows"]))
    """
    lm = bool(rows) and "val_bits_per_byte" in rows[0]
    scores = (
        ["val perplexity", "val bits/byte", "test bits/byte"]
        if lm
        else ["val acc %", "test acc %", "test F1"]
    )
    header = [
        "method",
        *scores,
        "kernel sparsity",
        "nonzeros",
        "bytes",
        "mean layer error",
        "output error",
        "seconds",
    ]
    lines = []
    for r in rows:
        if lm:
            cells = [
                f"{r['val_perplexity']:.4f}",
                f"{r['val_bits_per_byte']:.4f}",
                f"{r['test_bits_per_byte']:.4f}",
            ]
        else:
            cells = [
                "-" if "val_accuracy" not in r else f"{100 * r['val_accuracy']:.2f}",
                f"{100 * r['test_accuracy']:.2f}",
                f"{r['test_macro_f1']:.4f}",
            ]
        lines.append(
            [
                r["method"],
                *cells,
                f"{100 * r['kernel_sparsity']:.1f}%",
                f"{r['nonzeros']:,}",
                f"{r['bytes']:,}",
                f"{r['mean_rel_error']:.4g}",
                f"{r['test_output_error']:.4g}",
                f"{r['seconds']:.1f}",
            ]
        )
    return markdown_table(header, lines)


def print_table(results: dict[str, Any]) -> None:
    """Prints the summary table and each method's per-layer table."""
    print(
        f"{results['model']} on {results['dataset']}, {results['calibration_examples']} "
        f"calibration examples ({'sequential' if results['sequential'] else 'parallel'})"
    )
    print(results["table"])
    for table in results["layer_tables"]:
        print(table)
