"""The experiment scripts' command line (``recipes.cli``): --help, --show_config, overrides,
and one-line ``error:`` exits (status 2) before anything trains."""

import json
import os
import time

import pytest
from _helpers import load_config, run_script

from jaxopt_models.recipes import cli, compress, crossval, distill, lottery, ptq, train

# script -> (its recipe, a config file it runs, a flag of its own)
SCRIPTS = {
    "train": (train, "digits_mlp.py", None),
    "distill": (distill, "fashion_mnist_kd_mlp.py", "--teacher_dir"),
    "lottery": (lottery, "fashion_mnist_lenet300_lottery.py", None),
    "quantize": (ptq, "fashion_mnist_lenet5_ptq.py", "--float_dir"),
    "crossval": (crossval, "digits_mlp_cv.py", None),
    "compress": (compress, "digits_deep_compression.py", None),
}
# a run that would take far longer than the bound if the error came after training
ENDLESS = "--config.num_epochs=100000"
BOUND_S = 90  # JAX's start-up on a loaded machine; training ENDLESS would take hours


def config_path(name: str) -> str:
    return f"experiments/configs/{name}"


def assert_one_line_error(out, *needles: str) -> str:
    """Exit status 2, no traceback, one ``error:`` line naming every needle; returns it."""
    assert out.returncode == 2, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], out.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_lists_every_field_with_its_default(script):
    recipe, _, own_flag = SCRIPTS[script]
    out = run_script(script, "--help", timeout=BOUND_S)
    assert "error:" not in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = cli.field_listing(recipe.default_config())
    assert len(lines) > 40
    for line in lines:  # e.g. "config.pruning.sparsity = 0.9"
        assert line in out.stdout, line
    for flag in ("--config", "--workdir", "--[no]overwrite", "--[no]show_config", own_flag):
        assert flag is None or flag in out.stdout, flag


def test_show_config_prints_the_resolved_fields_and_exits(tmp_path):
    out = run_script(
        "train",
        "--config",
        config_path("digits_mlp.py:quick"),
        "--config.optimizer.learning_rate=0.25",
        "--show_config",
        "--workdir",
        str(tmp_path / "run"),
        timeout=BOUND_S,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    shown = out.stdout.strip().splitlines()
    assert "config.optimizer.learning_rate = 0.25" in shown  # the override
    assert "config.num_epochs = 3" in shown  # the variant
    assert "config.model.features = (128, 64)" in shown  # the file
    assert "config.pruning.method = 'none'" in shown  # the recipe's default
    assert shown == cli.field_listing(_resolved_digits_quick())
    assert not (tmp_path / "run").exists()  # nothing ran


def _resolved_digits_quick():
    c = load_config("digits_mlp", "quick")
    c.optimizer.learning_rate = 0.25
    return c


@pytest.mark.parametrize(
    "script,args,needles",
    [
        ("train", ["--config.pruning.sparsity=1.5"], ["config.pruning.sparsity=1.5", "[0, 1)"]),
        ("train", ["--config.nope=1"], ["unknown config field", "nope"]),
        ("train", ["--config.optimizer.nope=1"], ["unknown config field", "optimizer.nope"]),
        ("lottery", ["--config.lottery.prune_fraction=1.0"], ["config.lottery.prune_fraction"]),
        ("quantize", ["--config.ptq.calibration=best"], ["config.ptq.calibration='best'"]),
        ("crossval", ["--config.crossval.k=1"], ["k=1"]),
        (
            "distill",
            ["--config.protocol.student_num_train=200", "--config.distillation.alpha=2.0"],
            ["alpha"],
        ),
        ("compress", ["--config.ptq.weight_bits=33"], ["config.ptq.weight_bits=33"]),
    ],
)
def test_a_bad_override_fails_in_one_line_before_training(script, args, needles, tmp_path):
    _, config, _ = SCRIPTS[script]
    if script == "crossval":
        config += ":quick"
    workdir = tmp_path / "run"
    t0 = time.perf_counter()
    out = run_script(
        script,
        "--config",
        config_path(config),
        "--workdir",
        str(workdir),
        "--config.dataset.name=digits",  # no download, whatever the config's data
        ENDLESS,
        *args,
        timeout=BOUND_S,
    )
    assert time.perf_counter() - t0 < BOUND_S
    assert_one_line_error(out, *needles)
    assert not workdir.exists() or os.listdir(workdir) == []  # nothing written


def test_a_config_of_another_recipe_is_refused_naming_the_field(tmp_path):
    out = run_script(
        "train",
        "--config",
        config_path("digits_deep_compression.py"),
        "--workdir",
        str(tmp_path / "run"),
        timeout=BOUND_S,
    )
    line = assert_one_line_error(out, "is not read by the 'train' recipe")
    assert "config.distillation" in line  # the first of the compress-only fields
    out = run_script(
        "crossval",
        "--config",
        config_path("digits_mlp.py"),
        "--workdir",
        str(tmp_path / "run"),
        timeout=BOUND_S,
    )
    assert_one_line_error(out, "config.crossval is missing", "'crossval' recipe")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args,needles",
    [
        ([config_path("digits_mlp.py:huge")], ["variant='huge'", "allowed values"]),
        ([config_path("no_such_config.py")], ["--config cannot be loaded", "no_such_config"]),
        (None, ["--config is required"]),
    ],
)
def test_a_bad_config_file_fails_in_one_line(args, needles, tmp_path):
    cmd = ["--workdir", str(tmp_path / "run")]
    if args is not None:
        cmd = ["--config", *args, *cmd]
    assert_one_line_error(run_script("train", *cmd, timeout=BOUND_S), *needles)
    assert not (tmp_path / "run").exists()


def test_a_missing_workdir_or_a_workdir_that_is_a_file_fails(tmp_path):
    out = run_script("train", "--config", config_path("digits_mlp.py"), timeout=BOUND_S)
    assert_one_line_error(out, "--workdir is required")
    path = tmp_path / "a_file"
    path.write_text("not a directory")
    out = run_script(
        "train", "--config", config_path("digits_mlp.py"), "--workdir", str(path), ENDLESS
    )
    assert_one_line_error(out, "exists and is not a directory")
    assert path.read_text() == "not a directory"


@pytest.mark.parametrize("script,flag", [("distill", "--teacher_dir"), ("quantize", "--float_dir")])
def test_a_saved_run_flag_must_name_a_finished_run(script, flag, tmp_path):
    _, config, _ = SCRIPTS[script]
    out = run_script(
        script,
        "--config",
        config_path(config),
        "--workdir",
        str(tmp_path / "run"),
        f"{flag}={tmp_path / 'nothing_here'}",
        "--config.dataset.name=digits",
        ENDLESS,
        timeout=BOUND_S,
    )
    assert_one_line_error(out, f"{flag[2:]}=", "variables.msgpack")


def test_a_finished_workdir_needs_overwrite(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"test_accuracy": -1.0}))
    args = [
        "--config",
        config_path("digits_mlp.py:quick"),
        "--workdir",
        str(tmp_path),
        "--config.num_epochs=1",
        "--config.plots=False",
        "--config.dataset.num_train=300",
    ]
    out = run_script("train", *args, timeout=BOUND_S)
    assert_one_line_error(out, "already holds a finished run", "--overwrite")
    assert json.loads((tmp_path / "results.json").read_text()) == {"test_accuracy": -1.0}
    out = run_script("train", *args, "--overwrite")
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["num_train"] == 270 and results["test_accuracy"] > 0.1
