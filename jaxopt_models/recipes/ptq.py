"""The post-training quantization recipe: float / QAT training, calibration, the int8 path.

Trains the config's model (quantization-aware when ``config.quantization`` asks for it) and,
with ``compare_float``, a float baseline with the same budget; then, with ``ptq.enabled``,
calibrates per-layer activation ranges on ``ptq.calibration_examples`` training images and
evaluates the float model, the fake-quant model and the int8 path (int8 x int8 -> int32
layers) on the test split, with the int8 path's agreement with the fake-quant model and the
stored sizes. Writes ``float/``, ``qat/`` (train runs) and ``summary.json``.
"""

import functools
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxopt_models import quantization as qz
from jaxopt_models.models import (
    build_int8_model,
    calibrate_activation_ranges,
    fake_quant_apply,
    int8_apply,
)
from jaxopt_models.recipes import build
from jaxopt_models.recipes import config as schema
from jaxopt_models.recipes.train import train
from jaxopt_models.training import atomic_write_json, initialize_distributed, load_variables

SUMMARY_FILE = "summary.json"


def default_config() -> ml_collections.ConfigDict:
    """The ptq recipe's config: ``base_config()``, ``quantization`` (QAT), ``ptq``, plus:

    Fields:
      compare_float: also train the float model (needed by ``ptq.enabled``).
      ptq.enabled: calibrate and evaluate the int8 path of the float model.
      ptq.act_bits / calibration / calibration_examples: see ``ptq_section()``.
    """
    c = schema.base_config()
    c.quantization = schema.quantization_section()
    c.compare_float = True
    c.ptq = schema.ptq_section(fields=("act_bits", "calibration", "calibration_examples"))
    c.ptq.enabled = True
    return c


def float_config(config) -> ml_collections.ConfigDict:
    """``config`` with its quantization section reset to float."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.quantization = schema.quantization_section()
    return c


def _predict(fn, x: np.ndarray, batch_size: int) -> np.ndarray:
    preds = [np.asarray(fn(x[i : i + batch_size]).argmax(-1)) for i in range(0, len(x), batch_size)]
    return np.concatenate(preds)


def stored_weights(section, params) -> Any:
    """The params as stored after QAT: kernels quantized as trained and bit-packed."""
    axis = -1 if section.per_channel else None
    if section.weight_mode == "binary":
        q = qz.quantize_params(params, quantizer=functools.partial(qz.binarize, axis=axis))
    elif section.weight_mode == "ternary":
        quantizer = functools.partial(qz.ternarize, axis=axis, threshold=section.ternary_threshold)
        q = qz.quantize_params(params, quantizer=quantizer)
    elif section.weight_bits:
        q = qz.quantize_params(
            params, bits=section.weight_bits, axis=axis, symmetric=section.weight_symmetric
        )
    else:
        return params
    return qz.pack_params(q)


def int8_report(config, data: build.Data, params) -> dict[str, Any]:
    """Calibrates, builds the int8 model and evaluates float / fake-quant / int8 on test."""
    model = build.build_model(config.model, data.num_classes)
    p = config.ptq
    calib = data.x_train[: p.calibration_examples]
    batches = [calib[i : i + 512] for i in range(0, len(calib), 512)]
    variables = {"params": params}
    ranges = calibrate_activation_ranges(
        model, variables, batches, bits=p.act_bits, method=p.calibration
    )
    net = build_int8_model(model, params, ranges, act_bits=p.act_bits)
    float_fn = jax.jit(lambda x: model.apply(variables, x))
    fake_fn = jax.jit(
        lambda x: fake_quant_apply(model, params, x, ranges, weight_bits=8, act_bits=p.act_bits)
    )
    int8_fn = jax.jit(functools.partial(int8_apply, net))
    bs, y = config.eval_batch_size, data.y_test
    pred = {
        k: _predict(fn, data.x_test, bs)
        for k, fn in (("float", float_fn), ("fake_quant", fake_fn), ("int8", int8_fn))
    }
    return {
        "ranges": ranges,
        "float_accuracy": float((pred["float"] == y).mean()),
        "fake_quant_accuracy": float((pred["fake_quant"] == y).mean()),
        "int8_accuracy": float((pred["int8"] == y).mean()),
        "int8_vs_fake_quant_agreement": float((pred["int8"] == pred["fake_quant"]).mean()),
        "int8_vs_float_agreement": float((pred["int8"] == pred["float"]).mean()),
        "float_bytes": qz.size_bytes(params),
        "int8_bytes": qz.size_bytes(net),
    }


def _train_or_load(config, data, directory: str, load: bool):
    if load:
        model = build.build_model(config.model, data.num_classes)
        template = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(
            data.x_train[:1]
        )
        variables = load_variables(directory, template)
        with open(os.path.join(directory, "results.json")) as f:
            return variables["params"], json.load(f)
    state, results = train(config, data, directory)
    return jax.device_get(state.params), results


def run(
    config, workdir: str, *, float_dir: str | None = None, dataset=None, overwrite: bool = False
) -> dict[str, Any]:
    """The whole recipe; returns (and writes) the summary."""
    with build.config_errors():
        schema.check_fields(config, default_config(), "ptq")
        build.check_ptq(config.ptq)
        for key in ("compare_float", "enabled"):
            value = config[key] if key == "compare_float" else config.ptq[key]
            if not isinstance(value, bool):
                raise TypeError(
                    f"config.{'ptq.' if key == 'enabled' else ''}{key}={value!r} must be a bool"
                )
        qat = build.quantization_enabled(config.quantization)
        if config.ptq.enabled and not (config.compare_float or float_dir):
            raise ValueError(
                "config.ptq.enabled needs a float model: set config.compare_float=True"
            )
        if not qat and not config.compare_float and not float_dir:
            raise ValueError(
                "nothing to do: config.quantization is float and config.compare_float=False"
            )
        if float_dir is not None:
            build.check_saved_run(float_dir, "float_dir", ("variables.msgpack", "results.json"))
        build.prepare_workdir(workdir, overwrite=overwrite, resume=False, marker=SUMMARY_FILE)
        initialize_distributed(config)
        data = build.load_data(config, dataset)
        build.fit_settings(config, build.num_steps(len(data.x_train), config.batch_size))
    summary: dict[str, Any] = {"dataset": data.name, "model": config.model.name}
    float_params = None
    if config.compare_float or float_dir:
        fdir = float_dir or os.path.join(workdir, "float")
        float_params, fres = _train_or_load(float_config(config), data, fdir, float_dir is not None)
        summary["float"] = {
            "test_accuracy": fres["test_accuracy"],
            "val_accuracy": fres.get("val_accuracy"),
            "dir": fdir,
            "bytes": qz.size_bytes(float_params),
        }
    if qat:
        state, qres = train(config, data, os.path.join(workdir, "qat"))
        qparams = jax.device_get(state.params)
        summary["qat"] = {
            "quantization": config.quantization.to_dict(),
            "test_accuracy": qres["test_accuracy"],
            "val_accuracy": qres.get("val_accuracy"),
            "float_bytes": qz.size_bytes(qparams),
            "stored_bytes": qz.size_bytes(stored_weights(config.quantization, qparams)),
        }
        if "float" in summary:
            summary["qat"]["drop_points"] = 100 * (
                summary["float"]["test_accuracy"] - qres["test_accuracy"]
            )
    if config.ptq.enabled:
        summary["ptq"] = int8_report(config, data, float_params)
        summary["ptq"]["drop_points"] = 100 * (
            summary["ptq"]["float_accuracy"] - summary["ptq"]["int8_accuracy"]
        )
    if jax.process_index() == 0:
        atomic_write_json(os.path.join(workdir, SUMMARY_FILE), summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """Prints test accuracy and stored bytes of every model of the summary."""
    rows = []
    if "float" in summary:
        rows.append(("float", summary["float"]["test_accuracy"], summary["float"]["bytes"], ""))
    if "qat" in summary:
        q = summary["qat"]
        rows.append(("QAT", q["test_accuracy"], q["stored_bytes"], ""))
    if "ptq" in summary:
        p = summary["ptq"]
        rows.append(("PTQ fake-quant w8a8", p["fake_quant_accuracy"], p["int8_bytes"], ""))
        agree = f"{100 * p['int8_vs_fake_quant_agreement']:.2f}%"
        rows.append(("PTQ int8 path", p["int8_accuracy"], p["int8_bytes"], agree))
    print(f"{summary['model']} / {summary['dataset']}")
    print(f"{'model':<22} {'test acc':>9} {'bytes':>10} {'agree w/ fake-quant':>20}")
    for name, acc, size, agree in rows:
        print(f"{name:<22} {100 * acc:>8.2f}% {size:>10,} {agree:>20}")
