r"""Quantization: QAT and post-training int8 quantization with real integer inference.

Trains the config's model (quantization-aware when ``config.quantization`` asks for it),
optionally a float baseline with the same budget, then with ``config.ptq.enabled``
calibrates per-layer activation ranges on a few training batches and evaluates the float
model, the fake-quant model and the int8 path (int8 x int8 -> int32 layers), with the
agreement of the int8 path's predictions with the fake-quant model and the stored sizes.

Usage:
  python -m experiments.quantize --config experiments/configs/fashion_mnist_lenet5_ptq.py \
      --workdir runs/fm_lenet5_ptq
  python -m experiments.quantize --config experiments/configs/fashion_mnist_lenet5_qat4.py \
      --workdir runs/fm_lenet5_qat4 --float_dir runs/fm_lenet5_ptq/float
  # quick local try: --config=experiments/configs/fashion_mnist_lenet5_ptq.py:quick

Writes ``<workdir>/float/`` and ``<workdir>/qat/`` (``results.json``, ``variables.msgpack``)
and ``<workdir>/summary.json``.
"""

import functools
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from jaxopt_models import quantization as qz
from jaxopt_models.models import get_model
from jaxopt_models.training import (
    atomic_write_json,
    load_dataset,
    load_variables,
    model_kwargs,
    save_variables,
    train_and_evaluate,
)
from jaxopt_models.training.int8_inference import (
    build_int8_model,
    calibrate_activation_ranges,
    fake_quant_apply,
    int8_apply,
)
from jaxopt_models.training.quant_config import quantization_enabled

FLAGS = flags.FLAGS
if "workdir" not in FLAGS:  # several experiment modules may share a process
    flags.DEFINE_string("workdir", None, "Directory for the runs and summary.json.")
if "float_dir" not in FLAGS:  # several experiment modules may share a process
    flags.DEFINE_string("float_dir", None, "Reuse the float model saved in this directory.")
if "config" not in FLAGS:  # several experiment modules may share a process
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def float_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with its quantization section reset to float."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.quantization.weight_mode = "uniform"
    c.quantization.weight_bits = 0
    c.quantization.act_bits = 0
    return c


def train_or_load(config, ds, directory: str, load: bool) -> tuple[Any, dict[str, Any]]:
    """Trains ``config`` into ``directory`` (or loads it from there): ``(params, results)``."""
    if load:
        variables, _ = load_variables(
            directory, config, ds.x_train[:1], ds.num_classes, collections=("params",)
        )
        with open(os.path.join(directory, "results.json")) as f:
            return variables["params"], json.load(f)
    state, results = train_and_evaluate(config, directory, dataset=ds)
    params = jax.device_get(state.params)
    save_variables(directory, {"params": params})
    return params, results


def predict(fn, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Argmax predictions of ``fn(x_batch) -> logits`` over ``x`` (batched)."""
    preds = [np.asarray(fn(x[i : i + batch_size]).argmax(-1)) for i in range(0, len(x), batch_size)]
    return np.concatenate(preds)


def stored_weights(config, params) -> Any:
    """The params as stored after QAT: kernels quantized as trained and bit-packed."""
    s = config.quantization
    axis = -1 if s.per_channel else None
    if s.weight_mode == "binary":
        q = qz.quantize_params(params, quantizer=functools.partial(qz.binarize, axis=axis))
    elif s.weight_mode == "ternary":
        quantizer = functools.partial(qz.ternarize, axis=axis, threshold=s.ternary_threshold)
        q = qz.quantize_params(params, quantizer=quantizer)
    elif s.weight_bits:
        q = qz.quantize_params(params, bits=s.weight_bits, axis=axis, symmetric=s.weight_symmetric)
    else:
        return params
    return qz.pack_params(q)


def ptq(config, ds, params) -> dict[str, Any]:
    """Calibrates, builds the int8 model and evaluates float / fake-quant / int8 on the test set."""
    model = get_model(config.model.name, **model_kwargs(config, ds.num_classes))
    p = config.ptq
    calib = ds.x_train[: p.calibration_examples]
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
    bs = config.eval_batch_size
    y = ds.y_test
    pred = {
        k: predict(fn, ds.x_test, bs)
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


def run(config, workdir: str, float_dir: str | None = None) -> dict[str, Any]:
    """The whole experiment; returns (and writes) the summary."""
    ds = load_dataset(config)
    summary: dict[str, Any] = {"dataset": ds.name, "model": config.model.name}
    qat = quantization_enabled(config)
    float_params = None
    if not qat or config.compare_float:
        fdir = float_dir or os.path.join(workdir, "float")
        float_params, fres = train_or_load(float_config(config), ds, fdir, float_dir is not None)
        summary["float"] = {"test_accuracy": fres["test_accuracy"], "dir": fdir}
        summary["float"]["bytes"] = qz.size_bytes(float_params)
    if qat:
        qparams, qres = train_or_load(config, ds, os.path.join(workdir, "qat"), False)
        summary["qat"] = {
            "quantization": config.quantization.to_dict(),
            "test_accuracy": qres["test_accuracy"],
            "float_bytes": qz.size_bytes(qparams),
            "stored_bytes": qz.size_bytes(stored_weights(config, qparams)),
        }
        if "float" in summary:
            summary["qat"]["drop_points"] = 100 * (
                summary["float"]["test_accuracy"] - qres["test_accuracy"]
            )
    if config.ptq.enabled:
        if float_params is None:
            raise ValueError("config.ptq.enabled needs a float model (config.compare_float)")
        summary["ptq"] = ptq(config, ds, float_params)
        summary["ptq"]["drop_points"] = 100 * (
            summary["ptq"]["float_accuracy"] - summary["ptq"]["int8_accuracy"]
        )
    if jax.process_index() == 0:
        atomic_write_json(os.path.join(workdir, "summary.json"), summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
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


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    summary = run(FLAGS.config, FLAGS.workdir, FLAGS.float_dir)
    print_summary(summary)


if __name__ == "__main__":
    app.run(main)
