"""Tests of the train recipe (recipes/train.py) and the workdir / split helpers it uses from
recipes/build.py: outputs, reloading, held-out splits, overwriting, timed checkpoints and
resuming a killed run, augmentation and config errors."""

import json
import struct

import jax
import ml_collections
import numpy as np
import pytest
from _helpers import assert_trees_bitwise_equal, synthetic_dataset, use_compilation_cache

from jaxopt_models import recipes
from jaxopt_models.recipes import build, train
from jaxopt_models.training import Checkpointer
from jaxopt_models.training.tensorboard import read_events

use_compilation_cache()


def tiny_config(**overrides):
    """The MLP 64-32-10 on 256 digits: 230 train (7 steps of 32) / 26 val / 100 test."""
    c = train.default_config()
    c.dataset.num_train = 256
    c.dataset.num_test = 100
    c.model.features = (32,)
    c.batch_size = 32
    c.eval_batch_size = 64
    c.num_epochs = 3
    c.optimizer.learning_rate = 1e-2
    c.plots = False
    c.update_from_flattened_dict(overrides)
    return c


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_run_writes_results_model_curves_and_reloads_to_the_same_predictions(tmp_path):
    config = tiny_config(plots=True, tensorboard=True)
    state, results = train.run(config, str(tmp_path))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["test_accuracy"] == results["test_accuracy"] > 0.5
    assert on_disk["params"] == results["params"] == 64 * 32 + 32 + 32 * 10 + 10
    assert on_disk["config"] == json.loads(json.dumps(config.to_dict()))
    assert (results["num_train"], results["num_val"], results["num_test"]) == (230, 26, 100)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    width, height = _png_size(tmp_path / "curves.png")
    assert width > 100 and height > 100
    (events_file,) = (tmp_path / "tensorboard").iterdir()
    assert len(read_events(str(events_file))) == 1 + config.num_epochs  # version + epochs
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]

    model, variables = recipes.load_trained(str(tmp_path))
    assert_trees_bitwise_equal(variables, jax.device_get(state.variables))
    data = build.load_data(config)
    logits = model.apply(variables, data.x_test, train=False)
    np.testing.assert_array_equal(logits, state.apply_fn(state.variables, data.x_test))
    accuracy = float((np.argmax(np.asarray(logits), -1) == data.y_test).mean())
    assert accuracy == results["test_accuracy"]


def test_validation_is_held_out_of_training_and_the_test_split_is_used_once(monkeypatch):
    ds = synthetic_dataset()
    config = tiny_config(batch_size=20, **{"dataset.validation_fraction": 0.25})
    data = build.load_data(config, ds)
    train_ids, val_ids = set(data.x_train[:, 0]), set(data.x_val[:, 0])
    assert len(val_ids) == 50 and len(train_ids) == 150 and not train_ids & val_ids
    assert train_ids | val_ids == set(ds.x_train[:, 0])
    np.testing.assert_array_equal(data.x_test, ds.x_test)
    assert len(data.x_train) == len(data.y_train) and len(data.x_val) == len(data.y_val)
    again = build.load_data(config, ds)  # the same split every time (a resumed run)
    np.testing.assert_array_equal(again.x_val, data.x_val)

    evaluated = []
    real = build.evaluate_classifier

    def spy(state, x, y, *args, **kwargs):
        split = "test" if np.array_equal(x, ds.x_test) else "val"
        if split == "val":
            assert set(x[:, 0]) == val_ids
        evaluated.append((split, int(state.step)))
        return real(state, x, y, *args, **kwargs)

    monkeypatch.setattr(build, "evaluate_classifier", spy)
    _, results = train.run(config, None, dataset=ds)
    steps = 150 // 20
    assert evaluated == [("val", steps), ("val", 2 * steps), ("val", 3 * steps), ("test", 21)]
    assert all("val_accuracy" in r and "val_macro_f1" in r for r in results["history"])
    assert not [k for r in results["history"] for k in r if k.startswith("test")]
    assert results["val_accuracy"] == results["history"][-1]["val_accuracy"]
    assert {"test_accuracy", "test_loss", "test_macro_f1"} <= set(results)


def test_refuses_a_finished_run_and_overwrite_replaces_it_checkpoints_too(tmp_path):
    config = tiny_config(num_epochs=1, **{"checkpoint.every_steps": 7})
    train.run(config, str(tmp_path))
    assert Checkpointer(tmp_path / "checkpoints").all_steps() == [7]
    with pytest.raises(build.ConfigError, match=r"already holds a finished run \(results.json\)"):
        train.run(config, str(tmp_path))
    _, results = train.run(config, str(tmp_path), overwrite=True)
    assert results["resumed_from_step"] == 0
    (tmp_path / "results.json").unlink()  # a killed run: checkpoints but no results
    with pytest.raises(ValueError, match=r"already holds checkpoints \(latest step 7\)"):
        train.run(config, str(tmp_path))
    with pytest.raises(build.ConfigError, match="is not a directory"):
        train.run(config, str(tmp_path / "metrics.jsonl"))


def test_defaults_checkpoint_every_60_seconds():
    c = train.default_config()
    assert c.checkpoint.every_seconds == 60 and c.checkpoint.every_steps == 0
    settings = build.fit_settings(c, 10)
    assert settings.checkpoint_every_seconds == 60.0 and settings.checkpoint_every_steps == 0
    assert settings.data_signature == {"seed": 0, "batch_size": 128}


class Killed(Exception):
    pass


def test_a_killed_run_resumes_from_its_timed_checkpoint_identically(tmp_path, monkeypatch):
    # every_seconds tiny: a checkpoint at every metric sync (every 2 steps and epoch ends)
    config = tiny_config(sync_every_steps=2, **{"checkpoint.every_seconds": 1e-6})
    ref_state, ref = train.run(config, None)
    real = build.batches_fn

    def dying_batches_fn(*args, **kwargs):
        batches = real(*args, **kwargs)

        def wrapped(epoch, start):
            for i, batch in enumerate(batches(epoch, start), start):
                if epoch * 7 + i + 1 == 12:
                    raise Killed("killed before step 12")
                yield batch

        return wrapped

    with monkeypatch.context() as m:
        m.setattr(build, "batches_fn", dying_batches_fn)
        with pytest.raises(Killed):
            train.run(config, str(tmp_path))
    assert not (tmp_path / "results.json").exists()
    # syncs at steps 2, 4, 6, 7 (epoch end), 9 and 11
    assert Checkpointer(tmp_path / "checkpoints").latest_step() == 11
    config.resume = True
    state, results = train.run(config, str(tmp_path))
    assert results["resumed_from_step"] == 11 and results["steps"] == 21
    assert_trees_bitwise_equal(state.params, ref_state.params)
    assert_trees_bitwise_equal(state.opt_state, ref_state.opt_state)
    strip = lambda h: [{k: v for k, v in r.items() if k != "train_seconds"} for r in h]
    assert strip(results["history"]) == strip(ref["history"])
    assert results["test_accuracy"] == ref["test_accuracy"]
    assert results["test_loss"] == ref["test_loss"]


def test_augmentation_changes_the_run_and_its_errors_name_the_field():
    _, plain = train.run(tiny_config(num_epochs=1), None)
    _, augmented = train.run(tiny_config(num_epochs=1, **{"augment.shift": 1}), None)
    assert augmented["test_loss"] != plain["test_loss"]
    for field, value, match in (
        ("shift", -1, "config.augment: augment shift must be an int >= 0"),
        ("flip", "yes", "config.augment: augment flip must be True or False"),
        ("mode", "wrap", r"config.augment: augment mode='wrap' is not one of"),
    ):
        bad = tiny_config(num_epochs=1)
        fields = {"shift": 0, "flip": False, "mode": "edge", field: value}
        bad.augment = ml_collections.ConfigDict(fields)  # (a typed field would refuse "yes")
        with pytest.raises(build.ConfigError, match=match):
            train.run(bad, None)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"batch_size": 0}, r"config.batch_size=0 must be an int >= 1"),
        ({"batch_size": 512}, r"config.batch_size=512 is larger than the 230 training"),
        ({"num_epochs": 0}, r"config.num_epochs=0 must be an int >= 1"),
        ({"model.name": "nope"}, r"model name='nope'.*allowed"),
        ({"dataset.name": "nope"}, r"dataset name='nope'.*allowed"),
        ({"optimizer.learning_rate": -0.1}, r"optimizer.learning_rate=-0.1"),
        ({"dataset.validation_fraction": 1.0}, r"config.dataset.validation_fraction=1.0"),
        ({"checkpoint.every_seconds": -1.0}, r"config.checkpoint.every_seconds=-1.0"),
        ({"nan_policy": "ignore"}, r"nan_policy='ignore'.*allowed"),
        ({"parallel": "dp"}, r"config.parallel='dp'.*allowed"),
    ],
)
def test_bad_config_values_are_config_errors_naming_the_field(overrides, match):
    with pytest.raises(build.ConfigError, match=match):
        train.run(tiny_config(**overrides), None)


def test_a_field_the_recipe_does_not_read_is_refused():
    c = tiny_config()
    c.stages = ml_collections.ConfigDict({"prune": {"enabled": True}})
    with pytest.raises(build.ConfigError, match=r"config.stages is not read by the 'train'"):
        train.run(c, None)
    c = tiny_config()
    c.pruning.ramp_fraction = 0.5
    with pytest.raises(build.ConfigError, match=r"config.pruning.ramp_fraction is not read"):
        train.run(c, None)


def test_print_results_shows_the_headline_numbers(capsys):
    results = {
        "model": "mlp",
        "dataset": "digits",
        "val_accuracy": 0.9,
        "test_accuracy": 0.875,
        "test_macro_precision": 0.8,
        "test_macro_recall": 0.7,
        "test_macro_f1": 0.75,
        "params": 12345,
        "train_seconds": 1.25,
    }
    train.print_results(results)
    out = capsys.readouterr().out
    for text in ("mlp / digits", "0.9000", "0.8750", "0.7500", "12,345", "1.2"):
        assert text in out
