"""End-to-end tests of the compression pipeline (``recipes.compress``) and
``experiments.compress``."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import ROOT, load_config, run_script, use_compilation_cache, write_fake_fashion_mnist
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_models import compression, data
from jaxopt_models.metrics import classification_report
from jaxopt_models.models import get_model
from jaxopt_models.recipes import build, compress
from jaxopt_models.recipes.compress import measure_latency
from jaxopt_models.recipes.report import PLOTS, format_stage_table, pareto_front
from jaxopt_models.tree import rule_for

use_compilation_cache()

COMPRESS_CONFIGS = [
    "digits_deep_compression",
    "fashion_mnist_lenet300_deep_compression",
    "fashion_mnist_lenet5_deep_compression",
]


def _predict(model, variables, x):
    return np.asarray(jnp.argmax(model.apply(variables, jnp.asarray(x), train=False), -1))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """``python -m experiments.compress`` on the digits `quick` config, run once.

    Stages: dense, pruned, shared, student, quantized, file.
    """
    workdir = str(tmp_path_factory.mktemp("digits_dc"))
    out = run_script(
        "compress",
        "--config",
        os.path.join(ROOT, "experiments/configs/digits_deep_compression.py") + ":quick",
        "--workdir",
        workdir,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    return load_config("digits_deep_compression", "quick"), out.stdout, results, workdir


def test_cli_prints_the_stage_table(digits_run):
    _, stdout, results, _ = digits_run
    for row in results["stages"]:
        assert f"| {row['stage']}" in stdout
    assert results["table"] in stdout
    assert "predictions identical on all 359 test examples: True" in stdout
    assert "file: " in stdout and "smaller than float32" in stdout  # the per-layer report


def test_every_stage_is_reported_and_written(digits_run):
    config, _, results, workdir = digits_run
    stages = [r["stage"] for r in results["stages"]]
    assert stages == ["dense", "pruned", "shared", "student", "quantized", "file"]
    for name in ("stages.md", "results.json", "model.jxcf", *PLOTS):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    for name in PLOTS:
        with open(os.path.join(workdir, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    for stage in stages[:-1]:
        path = os.path.join(workdir, "files", f"{stage}.jxcf")
        assert os.path.getsize(path) == results["stages"][stages.index(stage)]["bytes"]
    assert os.path.getsize(os.path.join(workdir, "model.jxcf")) == results["stages"][-1]["bytes"]
    with open(os.path.join(workdir, "stages.md")) as f:
        table = f.read()
    assert table == results["table"]
    ds = data.get_dataset("digits")
    teacher = get_model("mlp", num_classes=10, **_kwargs(config.model))
    student = get_model("mlp", num_classes=10, **_kwargs(config.stages.student.model))
    for row in results["stages"]:
        assert f"| {row['stage']}" in table
        assert row["ratio"] == pytest.approx(results["float32_bytes"] / row["bytes"])
        assert row["latency_ms"] > 0
        # each stage's file predicts what its row reports
        name = "model.jxcf" if row["stage"] == "file" else f"files/{row['stage']}.jxcf"
        variables = compression.load_compressed(os.path.join(workdir, name))
        model = teacher if row["stage"] in ("dense", "pruned", "shared") else student
        pred = _predict(model, variables, ds.x_test)
        report = classification_report(ds.y_test, pred, 10)
        assert np.mean(pred == ds.y_test) == pytest.approx(row["accuracy"], abs=1e-9), row["stage"]
        assert report["macro_f1"] == pytest.approx(row["macro_f1"], abs=1e-9), row["stage"]
    for sub in ("dense", "pruned", "shared", "student"):  # the training stages' logs
        assert os.path.exists(os.path.join(workdir, sub, "metrics.jsonl")), sub
    # Each stage makes the file smaller, except the float student before quantization.
    b = {r["stage"]: r["bytes"] for r in results["stages"]}
    assert b["dense"] > b["pruned"] > b["shared"] and b["student"] > b["quantized"] >= b["file"]
    assert results["float32_bytes"] == 4 * 17_226


def _kwargs(section) -> dict:
    return {
        k: tuple(v) if isinstance(v, (list, tuple)) else v
        for k, v in section.items()
        if k != "name"
    }


def test_compressed_file_predicts_like_the_quantized_model(digits_run):
    config, _, results, workdir = digits_run
    ds = data.get_dataset("digits")
    assert results["roundtrip"] == {
        "path": os.path.join(workdir, "model.jxcf"),
        "predictions_identical": True,
        "num_test": len(ds.y_test),
        "mismatches": 0,
    }
    rows = {r["stage"]: r for r in results["stages"]}
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
        assert rows["file"][key] == rows["quantized"][key]
    # The saved student predicts as reported.
    student = get_model("mlp", num_classes=10, **_kwargs(config.stages.student.model))
    loaded = compression.load_compressed(os.path.join(workdir, "model.jxcf"))
    pred = _predict(student, loaded, ds.x_test)
    assert np.mean(pred == ds.y_test) == pytest.approx(rows["file"]["accuracy"])


def test_corrupted_or_truncated_file_raises(digits_run, tmp_path):
    _, _, _, workdir = digits_run
    with open(os.path.join(workdir, "model.jxcf"), "rb") as f:
        blob = bytearray(f.read())
    blob[len(blob) // 2] ^= 0x10
    bad = tmp_path / "bad.jxcf"
    bad.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="checksum"):
        compression.load_compressed(bad)
    short = tmp_path / "short.jxcf"
    short.write_bytes(bytes(blob[:-7]))
    with pytest.raises(ValueError, match="truncated"):
        compression.load_compressed(short)


def test_pruned_and_shared_files_hold_the_targets(digits_run):
    config, _, _, workdir = digits_run
    pruned = compression.load_compressed(os.path.join(workdir, "files", "pruned.jxcf"))["params"]
    shared = compression.load_compressed(os.path.join(workdir, "files", "shared.jxcf"))["params"]
    targets = {"Dense_0": 0.9, "Dense_1": 0.9, "Dense_2": 0.7}  # the config's per-layer targets
    assert config.pruning.sparsity == 0.9 and dict(config.pruning.layers) == {"Dense_2": 0.7}
    for layer, s in targets.items():
        k = np.asarray(pruned[layer]["kernel"])
        zeros = k == 0
        assert zeros.sum() >= round(s * k.size)  # exact per-layer sparsity (or more zeros)
        assert zeros.sum() <= round(s * k.size) + 2
        ks = np.asarray(shared[layer]["kernel"])
        np.testing.assert_array_equal(ks[zeros], 0.0)  # pruned weights stay exactly zero
        assert np.unique(ks).size <= 2**config.sharing.bits


def test_final_file_holds_the_quantized_student(digits_run):
    config, _, _, workdir = digits_run
    params = compression.load_compressed(os.path.join(workdir, "model.jxcf"))["params"]
    assert params["Dense_0"]["kernel"].shape == (64, config.stages.student.model.features[0])
    for layer in ("Dense_0", "Dense_1"):
        for leaf, bits in (("kernel", config.ptq.weight_bits), ("bias", config.ptq.bias_bits)):
            w = np.asarray(params[layer][leaf], np.float64)
            axis = 0 if leaf == "kernel" else None  # kernels: one scale per output channel
            scale = np.abs(w).max(axis=axis) / (2 ** (bits - 1) - 1)
            steps = w / np.where(scale > 0, scale, 1)
            np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
            assert np.abs(np.round(steps)).max() <= 2 ** (bits - 1) - 1


def test_conv_channel_pruning_slims_and_shares_per_kind(tmp_path):
    """LeNet-style CNN on digits: channel pruning, slimming, 6-bit conv / 4-bit dense codes."""
    c = load_config("digits_deep_compression", "quick")
    c.model = {"name": "lenet5", "features": (6, 8), "padding": "SAME", "hidden": (16,)}
    c.num_epochs = 2
    c.pruning.structure = "channels"
    c.pruning.sparsity = 0.5
    c.pruning.layers = {}
    c.stages.prune.slim = True
    c.sharing.bits = 4
    c.sharing.layers = {"Conv": 6}
    c.stages.student.enabled = False
    c.sweep.sparsities = ()
    c.sweep.bits = (3,)
    c.plots = False
    final, results = compress.run(c, str(tmp_path))
    rows = {r["stage"]: r for r in results["stages"]}
    assert list(rows) == ["dense", "pruned", "slimmed", "shared", "quantized", "file"]
    assert rows["slimmed"]["params"] < rows["pruned"]["params"]
    assert rows["slimmed"]["kept"]["Conv_1"] <= 8 and rows["slimmed"]["kept"]["Dense_0"] <= 16
    # Slimming only removes zeros and constants: the same predictions up to rounding.
    assert abs(rows["slimmed"]["accuracy"] - rows["pruned"]["accuracy"]) <= 2 / results["num_test"]
    assert final.model.hidden == (rows["slimmed"]["kept"]["Dense_0"],)
    logits_kernel = np.asarray(final.params["Dense_1"]["kernel"])  # the output layer stays
    assert logits_kernel.shape[-1] == 10 and np.all(np.any(logits_kernel != 0, axis=0))
    for layer, bits in (("Conv_0", 6), ("Conv_1", 6), ("Dense_0", 4), ("Dense_1", 4)):
        s = final.shared[layer]["kernel"]
        assert compression.is_shared(s) and s.codebook.shape == (2**bits,)
    assert results["roundtrip"]["predictions_identical"]


def test_lenet300_fashion_config_runs_on_tiny_data(tmp_path):
    """The Fashion-MNIST LeNet-300-100 config end to end on a small fake IDX dataset."""
    c = load_config("fashion_mnist_lenet300_deep_compression", "quick")
    c.dataset.data_dir = write_fake_fashion_mnist(tmp_path, 512, 128)
    c.dataset.num_train, c.dataset.num_test = 512, 128
    c.sweep.bits = ()
    final, results = compress.run(c, None)
    rows = {r["stage"]: r for r in results["stages"]}
    assert list(rows) == ["dense", "pruned", "shared", "quantized", "file"]
    assert (results["num_train"], results["num_val"], results["num_test"]) == (461, 51, 128)
    for layer, target in (("Dense_0", 0.93), ("Dense_1", 0.92), ("Dense_2", 0.75)):
        k = np.asarray(final.params[layer]["kernel"])
        assert (k == 0).sum() >= round(target * k.size), layer
    assert results["float32_bytes"] == 4 * 266_610
    assert rows["file"]["ratio"] > 30


SHAPES = {"digits": (8, 8, 1), "fashion_mnist": (28, 28, 1)}


def fake_data(name: str, n: int = 512) -> build.Data:
    """Zeros shaped like ``name``'s images: what ``compress.check`` reads of the data."""
    x, y = np.zeros((n, *SHAPES[name]), np.float32), np.zeros((n,), np.int32)
    return build.Data(name, 10, x, y, x[:10], y[:10], x[:10], y[:10])


def check(c) -> None:
    ds = fake_data(c.dataset.name)
    compress.check(c, ds, build.build_model(c.model, 10, c.quantization))


@pytest.mark.parametrize("name", COMPRESS_CONFIGS)
@pytest.mark.parametrize("variant", ["", "quick"])
def test_configs_are_valid_for_their_models(name, variant):
    c = load_config(name, variant)
    assert c.dataset.name in data.dataset_names()
    check(c)  # every section, the per-layer rules against the model's kernels included


def test_config_errors():
    c = load_config("digits_deep_compression", "quick")
    c.stages.prune.slim = True
    with pytest.raises(ValueError, match="slim=True needs config.pruning.structure='channels'"):
        check(c)
    c = load_config("digits_deep_compression", "quick")
    c.stages.share.epochs = -1
    with pytest.raises(ValueError, match="config.stages.share.epochs=-1"):
        check(c)
    c = load_config("digits_deep_compression", "quick")
    c.stages.student.teacher = "oracle"
    with pytest.raises(ValueError, match="config.stages.student.teacher='oracle'"):
        check(c)
    c = load_config("digits_deep_compression", "quick")
    c.pruning.layers = {"Dense_7": 0.5}
    with pytest.raises(ValueError, match=r"config.pruning.layers.*Dense_7"):
        check(c)
    c = load_config("digits_deep_compression", "quick")
    c.ptq.weight_bits = 33
    with pytest.raises(ValueError, match=r"config.ptq.weight_bits=33"):
        check(c)
    with pytest.raises(ValueError, match="is missing: the 'compress' recipe"):
        compress.run(load_config("digits_mlp"), None)
    with pytest.raises(ValueError, match="variant='huge'"):
        load_config("digits_deep_compression", "huge")


def test_per_layer_rules_prefer_names_over_kinds():
    m = {"Conv": 8, "Dense_1": 4}
    assert rule_for(m, "Conv_3/kernel", 5) == 8
    assert rule_for(m, "Dense_1/kernel", 5) == 4
    assert rule_for(m, "Dense_0/kernel", 5) == 5
    assert rule_for(None, "Dense_0/kernel", 5) == 5


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 50), st.floats(0, 1, allow_nan=False)), min_size=1, max_size=20
    )
)
def test_pareto_front_is_exactly_the_undominated_points(pairs):
    points = [{"bytes": b, "accuracy": a} for b, a in pairs]
    front = pareto_front(points)
    key = lambda p: (p["bytes"], p["accuracy"])

    def dominated(p):
        return any(
            q["bytes"] <= p["bytes"] and q["accuracy"] >= p["accuracy"] and key(q) != key(p)
            for q in points
        )

    assert len(set(front)) == len(front)
    assert [points[i]["bytes"] for i in front] == sorted(points[i]["bytes"] for i in front)
    accs = [points[i]["accuracy"] for i in front]
    assert all(a < b for a, b in zip(accs[:-1], accs[1:], strict=True))
    front_keys = {key(points[i]) for i in front}
    for i, p in enumerate(points):
        if i in front:
            assert not dominated(p)
        else:  # dominated, or an identical point is on the front
            assert dominated(p) or key(p) in front_keys


def test_format_stage_table():
    row = {
        "stage": "dense",
        "accuracy": 0.91234,
        "macro_precision": 0.9,
        "macro_recall": 0.8,
        "macro_f1": 0.85,
        "params": 1234,
        "nonzeros": 1000,
        "bytes": 5000,
        "ratio": 12.34,
    }
    table = format_stage_table([row, {**row, "stage": "file", "latency_ms": 1.5}])
    lines = table.strip().split("\n")
    assert len(lines) == 4 and lines[0].startswith("| stage")
    assert "91.23" in lines[2] and "1,234" in lines[2] and "12.3x" in lines[2]
    assert lines[2].rstrip().endswith("- |") and lines[3].rstrip().endswith("1.500 |")


def test_measure_latency_times_every_model():
    f = lambda v, x, train=False: x @ v
    out = measure_latency(
        {"a": (f, jnp.ones((4, 2))), "b": (f, jnp.ones((4, 3)))}, np.ones((2, 4)), rounds=2, iters=1
    )
    assert set(out) == {"a", "b"} and all(t > 0 for t in out.values())
    with pytest.raises(ValueError, match="rounds=0"):
        measure_latency({"a": (f, jnp.ones((4, 2)))}, np.ones((2, 4)), rounds=0, iters=1)
