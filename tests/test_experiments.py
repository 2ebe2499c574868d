"""Every experiment config loads, shrinks with ``:quick`` and runs; the train and crossval
scripts end to end."""

import glob
import json
import os
import re

import jax
import numpy as np
import pytest
from _helpers import (
    ROOT,
    experiment_scripts,
    load_config,
    recipe_of,
    run_script,
    use_compilation_cache,
    write_fake_fashion_mnist,
)

from experiments.configs import inherit
from jaxopt_models import data
from jaxopt_models.recipes import config as schema
from jaxopt_models.recipes import load_trained, lottery, train

use_compilation_cache()

CONFIGS = sorted(
    os.path.basename(p)[:-3]
    for p in glob.glob(f"{ROOT}/experiments/configs/*.py")
    if not os.path.basename(p).startswith("_")
)
SCRIPTS = experiment_scripts()
TRAIN_CONFIGS = [
    "digits_mlp",
    "fashion_mnist_lenet300",
    "fashion_mnist_lenet5",
    "mnist1d_mlp",
    "mnist1d_cnn",
    "mnist1d_gru",
]


def script_of(name: str) -> str:
    """The one ``experiments.<script>`` the config's docstring runs it with."""
    with open(os.path.join(ROOT, "experiments", "configs", f"{name}.py")) as f:
        text = f.read()
    doc = re.match(r'r?"""(.*?)"""', text, re.S).group(1)
    scripts = set(re.findall(r"python -m experiments\.(\w+)", doc))
    assert len(scripts) == 1, (name, scripts)
    assert f"experiments/configs/{name}.py" in doc  # the command names this very file
    return scripts.pop()


@pytest.fixture(scope="module")
def fake_idx_dir(tmp_path_factory):
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fake_fashion"), 256, 64)


def test_the_config_list_is_complete():
    assert set(TRAIN_CONFIGS) <= set(CONFIGS)
    assert {script_of(n) for n in CONFIGS} == set(SCRIPTS)  # every script has a config
    assert {"train", "distill", "lottery", "quantize", "crossval", "compress"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("variant", ["", "quick"])
def test_config_loads_and_its_script_accepts_it(name, variant):
    c = load_config(name, variant)
    script = script_of(name)
    # the recipe of the docstring's script reads every field of the config
    schema.check_fields(c, recipe_of(script).default_config(), script)
    assert c.dataset.name in data.dataset_names() + data.corpus_names()
    for other in SCRIPTS:  # a recipe that cannot run it refuses it
        ref = recipe_of(other).default_config()
        if set(ref.keys()) - set(c.keys()):  # the missing fields are named first
            with pytest.raises(ValueError, match=f"is missing: the '{other}' recipe reads it"):
                schema.check_fields(c, ref, other)
        elif set(c.keys()) - set(ref.keys()):
            with pytest.raises(ValueError, match=f"is not read by the '{other}' recipe"):
                schema.check_fields(c, ref, other)


@pytest.mark.parametrize("name", CONFIGS)
def test_quick_variant_shrinks_the_run(name):
    full, quick = load_config(name), load_config(name, "quick")
    # a recipe that trains nothing (it compresses a finished run) shrinks its calibration
    length = next(k for k in ("num_epochs", "num_steps", "calibration_examples") if k in full)
    assert quick[length] < full[length]
    inf = float("inf")
    assert (quick.dataset.get("num_train") or inf) <= (full.dataset.get("num_train") or inf)
    # nothing but the run's size changes
    assert quick.get("model", {}) == full.get("model", {})
    assert quick.dataset.name == full.dataset.name


@pytest.mark.parametrize("name", CONFIGS)
def test_unknown_variant_is_refused_naming_the_allowed_ones(name):
    with pytest.raises(ValueError, match=r"variant='huge'.*allowed values: .*'quick'"):
        load_config(name, "huge")


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_train_config_runs_one_short_epoch(name, fake_idx_dir, tmp_path):
    c = load_config(name, "quick")
    c.num_epochs = 1
    c.eval_batch_size = 64
    c.plots = False
    if c.dataset.name == "fashion_mnist":
        c.dataset.data_dir = fake_idx_dir
    c.dataset.num_train = 128
    c.dataset.num_test = 64
    c.batch_size = min(c.batch_size, 32)
    _, results = train.run(c, str(tmp_path))
    assert (results["num_train"], results["num_val"], results["num_test"]) == (115, 13, 64)
    assert len(results["history"]) == 1 and results["steps"] == 115 // c.batch_size
    # the reported test accuracy is the saved model's
    model, variables = load_trained(str(tmp_path))
    ds = data.get_dataset(
        c.dataset.name,
        **{k: v for k, v in c.dataset.items() if k in ("data_dir", "num_train", "num_test")},
    )
    logits = jax.jit(lambda x: model.apply(variables, x, train=False))(ds.x_test)
    accuracy = float(np.mean(np.argmax(logits, -1) == ds.y_test))
    assert accuracy == pytest.approx(results["test_accuracy"], abs=1e-9)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["test_accuracy"] == results["test_accuracy"]
    assert on_disk["config"]["model"] == json.loads(json.dumps(c.model.to_dict()))


def test_train_script_trains_and_prints_a_table(tmp_path):
    out = run_script(
        "train",
        "--config",
        "experiments/configs/digits_mlp.py",
        "--workdir",
        str(tmp_path),
        "--config.num_epochs=2",
        "--config.plots=False",
        "--config.optimizer.name=momentum",
        "--config.optimizer.learning_rate=0.05",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert f"| test accuracy        | {results['test_accuracy']:>20.4f} |" in out.stdout
    assert results["config"]["optimizer"]["name"] == "momentum"
    assert results["config"]["num_epochs"] == 2 and len(results["history"]) == 2
    assert results["test_accuracy"] > 0.7
    assert (tmp_path / "variables.msgpack").exists() and not (tmp_path / "curves.png").exists()


def test_train_script_rejects_an_unknown_optimizer_in_one_line(tmp_path):
    out = run_script(
        "train",
        "--config",
        "experiments/configs/digits_mlp.py",
        "--workdir",
        str(tmp_path / "run"),
        "--config.optimizer.name=lion9",
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "optimizer.name='lion9'" in last
    assert "allowed values" in last
    assert not (tmp_path / "run" / "results.json").exists()


def test_crossval_script(tmp_path):
    out = run_script(
        "crossval",
        "--config",
        "experiments/configs/digits_mlp_cv.py:quick",
        "--workdir",
        str(tmp_path),
        "--config.crossval.k=2",
        "--config.num_epochs=2",
        "--config.plots=False",
        "--config.dataset.num_train=400",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    cv = json.loads((tmp_path / "cv.json").read_text())
    assert cv["k"] == 2 and len(cv["folds"]) == 2
    accs = [f["accuracy"] for f in cv["folds"]]
    assert cv["mean"]["accuracy"] == pytest.approx(np.mean(accs))
    assert cv["std"]["accuracy"] == pytest.approx(np.std(accs, ddof=1))
    assert f"accuracy         {cv['mean']['accuracy']:.4f} ± {cv['std']['accuracy']:.4f}" in (
        out.stdout
    )
    for i in range(2):  # each fold trains on one half and is scored on the other
        fold = json.loads((tmp_path / f"fold_{i}" / "results.json").read_text())
        assert (fold["num_train"], fold["num_test"], fold["num_val"]) == (200, 200, 0)
        assert fold["test_accuracy"] == accs[i]


def test_inherit_copies_a_base_config_into_another_recipes_config():
    base = load_config("fashion_mnist_lenet300", "quick")
    with pytest.raises(ValueError, match=r"\['pruning'\].*drop="):
        inherit(lottery.default_config(), base)  # the lottery recipe has no pruning section
    c = inherit(lottery.default_config(), base, drop=("pruning",))
    assert "pruning" not in c and c.lottery.rounds == lottery.default_config().lottery.rounds
    assert c.model.to_dict() == base.model.to_dict()  # the model section whole
    assert (c.dataset.num_train, c.optimizer.schedule) == (6000, "cosine")
    assert c.dataset.data_dir is None and c.num_epochs == base.num_epochs
