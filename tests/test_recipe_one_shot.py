"""recipes.one_shot end to end on digits: the error / accuracy order of the pruning methods,
exact sparsity, GPTQ against RTN, a second run from the saved model, and config errors that
stop the run before anything trains."""

import json
import os

import pytest
from _helpers import run_script, use_compilation_cache

from jaxopt_models.recipes import one_shot
from jaxopt_models.recipes.build import ConfigError

use_compilation_cache()


def _config():
    c = one_shot.default_config()
    c.dataset.name = "digits"
    c.model.name = "mlp"
    c.model.features = (64, 64)  # kernels 64x64, 64x64, 64x10
    c.batch_size = 64
    c.eval_batch_size = 512
    c.num_epochs = 8
    c.plots = False
    c.checkpoint.every_seconds = 0.0
    c.one_shot.methods = ("magnitude", "wanda", "sparsegpt", "rtn bits=3", "gptq bits=3")
    c.one_shot.sparsity = 0.5
    c.one_shot.calibration_examples = 512
    return c


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("one_shot"))
    return workdir, one_shot.run(_config(), workdir)


def test_rows_order_and_files(first_run):
    workdir, results = first_run
    rows = {r["method"]: r for r in results["rows"]}
    assert list(rows) == ["dense", "magnitude", "wanda", "sparsegpt", "rtn bits=3", "gptq bits=3"]
    assert rows["dense"]["test_accuracy"] > 0.9
    with open(os.path.join(workdir, "table.md")) as f:
        table = f.read()
    assert "| gptq bits=3 " in table and "### sparsegpt" in table
    with open(os.path.join(workdir, "one_shot.json")) as f:
        on_disk = json.load(f)
    assert [r["test_accuracy"] for r in on_disk["rows"]] == [
        r["test_accuracy"] for r in results["rows"]
    ]
    assert os.path.isfile(os.path.join(workdir, "dense", "variables.msgpack"))


def test_sparsegpt_wanda_magnitude_order_at_50_percent(first_run):
    rows = {r["method"]: r for r in first_run[1]["rows"]}
    errors = [rows[m]["mean_rel_error"] for m in ("sparsegpt", "wanda", "magnitude")]
    assert errors[0] < errors[1] < errors[2], errors
    output = [rows[m]["test_output_error"] for m in ("sparsegpt", "wanda", "magnitude")]
    assert output[0] < output[1] < output[2], output
    # accuracy on 359 test digits: SparseGPT ahead of both; Wanda and magnitude are close
    accuracy = [rows[m]["test_accuracy"] for m in ("sparsegpt", "wanda", "magnitude")]
    assert accuracy[0] > max(accuracy[1:]), accuracy
    assert rows["dense"]["test_accuracy"] - accuracy[0] < 0.02


def test_exact_sparsity_in_the_output_params(first_run):
    rows = {r["method"]: r for r in first_run[1]["rows"]}
    dense_nonzeros = rows["dense"]["nonzeros"]
    for method in ("magnitude", "wanda", "sparsegpt"):
        layers = rows[method]["layers"]
        assert [layer["path"] for layer in layers] == ["Dense_0", "Dense_1", "Dense_2"]
        pruned = 0
        for layer in layers:
            assert layer["size"] - layer["nonzeros"] == round(0.5 * layer["size"]), layer
            pruned += round(0.5 * layer["size"])
        # counted again on the whole returned params (biases untouched)
        assert rows[method]["nonzeros"] == dense_nonzeros - pruned
        assert rows[method]["kernel_sparsity"] == pytest.approx(0.5)


def test_gptq_beats_rtn(first_run):
    rows = {r["method"]: r for r in first_run[1]["rows"]}
    gptq, rtn = rows["gptq bits=3"], rows["rtn bits=3"]
    assert gptq["mean_rel_error"] < 0.5 * rtn["mean_rel_error"]
    assert gptq["test_output_error"] < 0.5 * rtn["test_output_error"]
    assert rows["dense"]["test_accuracy"] - gptq["test_accuracy"] < 0.01
    assert gptq["bytes"] == rtn["bytes"] < rows["dense"]["bytes"] / 5  # packed 3-bit kernels


def test_second_run_from_the_saved_model_with_rules(first_run, tmp_path):
    workdir, results = first_run
    c = _config()
    c.source_dir = os.path.join(workdir, "dense")
    c.one_shot.methods = ("sparsegpt n_m=2:4", "gptq group_size=16")
    c.one_shot.layers = {"Dense_2": "skip", "Dense_1": {"sparsity": 0.25, "bits": 8}}
    second = one_shot.run(c, str(tmp_path))
    assert not os.path.exists(tmp_path / "dense")
    rows = {r["method"]: r for r in second["rows"]}
    assert rows["dense"]["test_accuracy"] == results["rows"][0]["test_accuracy"]
    layers = {layer["path"]: layer for layer in rows["sparsegpt n_m=2:4"]["layers"]}
    assert layers["Dense_0"]["nonzeros"] == layers["Dense_0"]["size"] // 2
    # the rule's sparsity replaces the 2:4 pattern on Dense_1
    assert layers["Dense_1"]["size"] - layers["Dense_1"]["nonzeros"] == 1024
    assert layers["Dense_2"]["settings"] is None and layers["Dense_2"]["rel_error"] is None
    gptq = {layer["path"]: layer for layer in rows["gptq group_size=16"]["layers"]}
    assert (gptq["Dense_0"]["bits"], gptq["Dense_1"]["bits"]) == (4, 8)
    assert gptq["Dense_0"]["settings"]["group_size"] == 16


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("one_shot.bits", 9, r"config\.one_shot\.bits=9 must be an int in \[2, 8\]"),
        ("one_shot.sparsity", 1.0, r"config\.one_shot\.sparsity=1\.0 must be a number in \[0, 1\)"),
        ("one_shot.methods", ("gptq bitz=3",), r"methods\[0\]='gptq bitz=3': 'bitz' is not read"),
        ("one_shot.methods", ("obs",), r"config\.one_shot\.methods\[0\]='obs' is not known"),
        (
            "one_shot.n_m",
            "2:5",
            r"config\.one_shot\.n_m=2:5 does not fit layer 'Dense_0' .*m=5 must divide its 64",
        ),
        ("one_shot.layers", {"Dense_7": "skip"}, r"config\.one_shot\.layers names \['Dense_7'\]"),
        ("one_shot.layers", {"Dense_1": {"bitz": 3}}, r"layers\['Dense_1'\]\.bitz is not a one"),
        ("one_shot.calibration_examples", 0, r"calibration_examples=0 must be an int >= 1"),
        ("source_dir", "no/such/run", r"config\.source_dir='no/such/run' is not a directory"),
    ],
)
def test_config_errors_stop_before_training(tmp_path, field, value, match):
    c = _config()
    section, _, key = field.rpartition(".")
    target = c[section] if section else c
    target[key] = value
    with pytest.raises(ConfigError, match=match):
        one_shot.run(c, str(tmp_path))
    assert not os.path.exists(tmp_path / "dense")


def test_cli_reports_a_config_error_in_one_line(tmp_path):
    proc = run_script(
        "one_shot",
        "--config",
        "experiments/configs/fashion_mnist_lenet300_one_shot.py:quick",
        "--workdir",
        str(tmp_path),
        "--config.one_shot.bits=9",
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: config.one_shot.bits=9 must be an int in [2, 8]"
    ]


def test_budgets_per_method_entry(tmp_path):
    """``budget=`` per entry: OWL and sensitivity sparsities average to the target, a
    mixed-precision allocation to at most the mean bits; the head rule stays "skip"."""
    c = _config()
    c.one_shot.methods = (
        "wanda sparsity=0.7 budget=owl",
        "sparsegpt sparsity=0.7 budget=sensitivity",
        "rtn bits=3 budget=sensitivity",
    )
    c.one_shot.allowed_bits = (2, 3, 4)
    c.one_shot.layers = {"Dense_2": "skip"}
    results = one_shot.run(c, None)
    rows = {r["method"]: r for r in results["rows"]}
    for entry in c.one_shot.methods[:2]:
        alloc = rows[entry]["allocation"]
        sizes = [b["params"] for b in alloc["layers"]]
        levels = [b["level"] for b in alloc["layers"]]
        assert sum(s * x for s, x in zip(sizes, levels, strict=True)) / sum(sizes) == pytest.approx(
            0.7
        )
        assert alloc["rules"]["Dense_2"] == "skip"
        done = {r["path"]: r for r in rows[entry]["layers"]}
        for b in alloc["layers"]:  # what was allocated is what was applied
            layer = done[b["path"]]
            assert 1 - layer["nonzeros"] / layer["size"] == pytest.approx(b["level"], abs=0.02)
    bits = rows["rtn bits=3 budget=sensitivity"]["allocation"]
    assert bits["achieved"] <= 3 + 1e-9
    assert "allocation" in results["layer_tables"][0]


@pytest.mark.parametrize(
    "entry, match",
    [
        ("smoothquant budget=sensitivity", "does not apply to 'smoothquant'"),
        ("rtn budget=owl", "does not apply to 'rtn'"),
        ("sparsegpt n_m=2:4 budget=owl", "n:m pattern"),
        ("gptq bits=2 budget=sensitivity", "allowed_bits"),
        ("wanda budget=greedy", "budget"),
    ],
)
def test_budget_errors_before_training(tmp_path, entry, match):
    c = _config()
    c.one_shot.methods = (entry,)
    c.one_shot.allowed_bits = (3, 4, 8)
    with pytest.raises(ConfigError, match=match):
        one_shot.run(c, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "dense")
