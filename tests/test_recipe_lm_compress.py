"""recipes.lm_compress: dense -> (student) -> prune -> quantize -> file on a tiny LM run; the
file reproduces the compressed model's logits exactly; bad stage combinations are refused."""

import json
import os

import numpy as np
import pytest
from _helpers import run_script, train_tiny_lm, use_compilation_cache

from jaxopt_models.compression import load_compressed
from jaxopt_models.recipes import lm_compress
from jaxopt_models.recipes.build import ConfigError

use_compilation_cache()


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return train_tiny_lm(str(tmp_path_factory.mktemp("lm") / "dense"))


def _config(source, **fields):
    c = lm_compress.default_config()
    c.source_dir = source
    c.calibration_examples = 32
    c.calibration_batch_size = 32
    c.eval_batch_size = 16
    c.decode.prompt_tokens = 4
    c.decode.new_tokens = 8
    c.decode.rounds = 1
    c.plots = False
    for key, value in fields.items():
        section, _, field = key.rpartition(".")
        (c[section] if section else c)[field] = value
    return c


@pytest.fixture(scope="module")
def pipeline(lm_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("lm_compress") / "run")
    config = _config(lm_dir, **{"quantize.embedding_bits": 8, "plots": True})
    config.sweep = ("rtn bits=8",)
    return workdir, lm_compress.run(config, workdir)


def test_stages_rows_and_files(pipeline):
    workdir, results = pipeline
    stages = {r["stage"]: r for r in results["stages"]}
    assert list(stages) == ["dense", "pruned", "quantized", "file"]
    dense = stages["dense"]
    with open(os.path.join(results["source_dir"], "results.json")) as f:
        assert dense["val_bits_per_byte"] == pytest.approx(
            json.load(f)["val_bits_per_byte"], rel=1e-5
        )
    # 50% SparseGPT: half the kernel weights are zero, and stay zero through the joint GPTQ
    assert stages["pruned"]["kernel_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert stages["file"]["nonzeros"] <= stages["pruned"]["nonzeros"]
    assert stages["file"]["nonzeros"] < 0.75 * dense["nonzeros"]
    # the file stores 4-bit kernels and an 8-bit embedding: far below the float32 file
    assert stages["file"]["ratio"] > 5
    assert stages["file"]["bytes"] == os.path.getsize(os.path.join(workdir, "model.jxcf"))
    # the reloaded file is the compressed model: the same scores, the same logits
    assert results["file_logits_equal"] is True
    assert stages["file"]["val_bits_per_byte"] == stages["quantized"]["val_bits_per_byte"]
    for r in stages.values():
        assert r["decode_tokens_per_second"] > 0
    for name in ("results.json", "table.md", "model.jxcf", "perplexity_vs_bytes.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert "bytes on disk" in results["table"]


def test_the_file_holds_the_compressed_weights(pipeline):
    workdir, _ = pipeline
    loaded = load_compressed(os.path.join(workdir, "model.jxcf"))
    kernels = [np.asarray(x) for x in _kernels(loaded)]
    assert kernels and all(np.mean(k == 0) >= 0.49 for k in kernels)


def _kernels(tree):
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "kernel":
                yield value
            else:
                yield from _kernels(value)


def test_pareto_points_include_the_sweep(pipeline):
    _, results = pipeline
    labels = [p["label"] for p in results["points"]]
    assert labels[-1] == "rtn bits=8" and "file" in labels
    assert any(p["pareto"] for p in results["points"])


def test_prune_only_and_rtn_after_magnitude(lm_dir):
    results = lm_compress.run(
        _config(lm_dir, **{"prune.method": "magnitude", "quantize.method": "rtn"}), None
    )
    assert [r["stage"] for r in results["stages"]] == ["dense", "pruned", "quantized", "file"]
    assert results["file_logits_equal"]
    # RTN keeps the magnitude-pruned zeros exactly zero (0 is on every grid)
    stages = {r["stage"]: r for r in results["stages"]}
    assert stages["quantized"]["nonzeros"] <= stages["pruned"]["nonzeros"]


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"prune.method": "wanda", "quantize.method": "gptq"}, "GPTQ moves pruned weights"),
        ({"prune.method": "none", "quantize.method": "none"}, "nothing to do"),
        ({"prune.method": "lasso"}, "config.prune.method"),
        ({"quantize.bits": 9}, "bits"),
        ({"prune.sparsity": 1.0}, "sparsity"),
        ({"quantize.budget": "sensitivity", "quantize.bits": 1}, "cannot be met"),
        ({"prune.n_m": "2:4", "prune.budget": "owl"}, "prune.budget"),
        ({"dataset.name": "bible_kjv"}, "corpus"),
        ({"decode.new_tokens": 500}, "context"),
    ],
)
def test_config_errors_before_any_work(lm_dir, fields, match):
    with pytest.raises((ConfigError, ValueError), match=match):
        lm_compress.run(_config(lm_dir, **fields), None)


def test_a_student_with_another_tokenizer_is_refused(lm_dir, tmp_path):
    other = tmp_path / "student"
    other.mkdir()
    with open(os.path.join(lm_dir, "results.json")) as f:
        results = json.load(f)
    results["vocab_size"] = 300
    (other / "results.json").write_text(json.dumps(results))
    for name in ("variables.msgpack",):
        os.symlink(os.path.join(lm_dir, name), other / name)
    os.symlink(os.path.join(lm_dir, "tokenizer"), other / "tokenizer")
    with pytest.raises((ConfigError, ValueError), match="vocab_size=300"):
        lm_compress.run(_config(lm_dir, student_dir=str(other)), None)


def test_budgets_are_allocated_printed_and_saved(lm_dir, tmp_path, capsys):
    fields = {
        "prune.method": "wanda",
        "prune.sparsity": 0.7,
        "prune.budget": "owl",
        "quantize.method": "rtn",
        "quantize.bits": 3,
        "quantize.budget": "sensitivity",
        "quantize.allowed_bits": (2, 3, 4),
    }
    workdir = str(tmp_path / "budgets")
    results = lm_compress.run(_config(lm_dir, **fields), workdir)
    alloc = results["allocations"]
    assert alloc["prune"]["rule"] == "owl" and alloc["quantize"]["rule"] == "sensitivity"
    prune_layers, bit_layers = alloc["prune"]["layers"], alloc["quantize"]["layers"]
    sizes = np.array([b["params"] for b in prune_layers], float)
    levels = np.array([b["level"] for b in prune_layers])
    assert np.sum(sizes * levels) / sizes.sum() == pytest.approx(0.7, abs=1e-6)
    assert len(set(np.round(levels, 6))) > 1  # not uniform
    bits = np.array([b["level"] for b in bit_layers])
    sizes = np.array([b["params"] for b in bit_layers], float)
    assert np.sum(sizes * bits) / sizes.sum() <= 3 + 1e-9 and set(bits) <= {2, 3, 4}
    # the allocation is what was applied: each layer's zeros follow its own sparsity
    stages = {r["stage"]: r for r in results["stages"]}
    assert stages["pruned"]["kernel_sparsity"] == pytest.approx(0.7, abs=0.01)
    assert "allocation (owl)" in capsys.readouterr().out
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["allocations"]["prune"]["rules"] == alloc["prune"]["rules"]


def test_the_script_runs_the_quick_config_and_refuses_bad_input_in_one_line(lm_dir, tmp_path):
    base = [
        "--config",
        "experiments/configs/text_bible_gpt_compress.py:quick",
        f"--config.source_dir={lm_dir}",
        "--config.dataset.name=python_stdlib",
        "--config.decode.prompt_tokens=4",
        "--config.decode.new_tokens=8",
        "--config.plots=False",
    ]
    workdir = tmp_path / "run"
    out = run_script("lm_compress", *base, "--workdir", str(workdir), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "bytes on disk" in out.stdout and "file logits equal" in out.stdout
    assert (workdir / "model.jxcf").exists()
    bad = run_script(
        "lm_compress", *base, "--workdir", str(tmp_path / "bad"), "--config.prune.budget=owlish"
    )
    assert bad.returncode == 2 and "config.prune.budget" in bad.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "bad").exists()
