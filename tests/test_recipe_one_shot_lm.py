"""recipes.one_shot on a finished language-model run: calibration windows from the run's
training stream, perplexity / bits per byte on its held-out streams, the stored forms."""

import json
import math
import os

import numpy as np
import pytest
from _helpers import train_tiny_lm, use_compilation_cache

from jaxopt_models.recipes import lm, load_lm, one_shot

use_compilation_cache()


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return train_tiny_lm(str(tmp_path_factory.mktemp("lm") / "dense"))


def _config(source, *methods):
    c = one_shot.default_config()
    c.source_dir = source
    c.dataset.name = "python_stdlib"
    c.eval_batch_size = 16
    c.one_shot.methods = methods
    c.one_shot.calibration_examples = 64
    c.one_shot.calibration_batch_size = 32
    return c


def test_load_lm_gives_the_runs_model_and_streams(lm_dir):
    trained = load_lm(lm_dir)
    with open(os.path.join(lm_dir, "results.json")) as f:
        saved = json.load(f)
    assert len(trained.dataset.val) == saved["num_tokens"]["val"]
    scorer = lm.make_lm_eval(trained.model, None, 16, trained.config.context)
    val = scorer(trained.variables["params"], trained.dataset.val, trained.dataset.tokenizer)
    assert val["bits_per_byte"] == pytest.approx(saved["val_bits_per_byte"], rel=1e-5)


def test_one_shot_on_an_lm_run(lm_dir, tmp_path):
    workdir = str(tmp_path / "one_shot")
    results = one_shot.run(
        _config(lm_dir, "magnitude", "sparsegpt", "sparsegpt n_m=2:4", "rtn bits=3", "gptq bits=3"),
        workdir,
    )
    assert results["kind"] == "lm"
    rows = {r["method"]: r for r in results["rows"]}
    with open(os.path.join(lm_dir, "results.json")) as f:
        saved = json.load(f)
    # the dense row is the run's own final evaluation (every held-out byte once)
    assert rows["dense"]["val_bits_per_byte"] == pytest.approx(saved["val_bits_per_byte"], rel=1e-5)
    for r in rows.values():
        assert r["val_perplexity"] == pytest.approx(math.exp(r["val_loss"]), rel=1e-9)
        assert r["test_bits_per_byte"] > 0
    for name in ("magnitude", "sparsegpt"):
        for layer in rows[name]["layers"]:
            if layer["settings"] is not None:
                assert layer["nonzeros"] == pytest.approx(
                    layer["size"] / 2, abs=layer["size"] * 0.01
                )
    # every method leaves the model worse than dense but in its neighbourhood
    dense = rows["dense"]["val_bits_per_byte"]
    for name, r in rows.items():
        if name != "dense":
            assert dense < r["val_bits_per_byte"] < 3 * dense, name
    assert rows["gptq bits=3"]["val_bits_per_byte"] < rows["rtn bits=3"]["val_bits_per_byte"]
    # 3-bit kernels; the float embedding (the tied head) is most of this tiny model
    assert rows["gptq bits=3"]["bytes"] < rows["dense"]["bytes"] / 2
    assert "val bits/byte" in results["table"]
    for name in ("one_shot.json", "table.md"):
        assert os.path.exists(os.path.join(workdir, name))


def test_a_classifier_source_is_not_an_lm(lm_dir, tmp_path):
    with pytest.raises(ValueError, match="not a language"):
        load_lm(_fake_classifier(tmp_path))


def _fake_classifier(tmp_path) -> str:
    d = tmp_path / "clf"
    d.mkdir()
    (d / "results.json").write_text(json.dumps({"model": "mlp", "config": {"model": {}}}))
    return str(d)


def test_another_corpus_is_refused(lm_dir):
    c = _config(lm_dir, "rtn")
    c.dataset.name = "bible_kjv"
    with pytest.raises(ValueError, match="python_stdlib.*config.dataset.name='bible_kjv'"):
        one_shot.run(c, None)


def test_missing_source_is_named(tmp_path):
    c = _config(str(tmp_path / "nope"), "rtn")
    with pytest.raises(Exception, match="source_dir"):
        one_shot.run(c, None)
    np.testing.assert_equal(os.path.exists(tmp_path / "nope"), False)
