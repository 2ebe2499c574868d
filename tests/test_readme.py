"""The README's API tour runs as written, its set-up commands are the two make targets, and
its experiment commands name scripts, configs, variants and fields that exist."""

import os
import re

import jax
import numpy as np
from _helpers import experiment_scripts, load_config, recipe_of

from jaxopt_models.recipes import cli
from jaxopt_models.recipes import config as schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_readme_names_the_two_setup_commands():
    text = _readme()
    assert "make demo" in text and "make test" in text
    with open(os.path.join(ROOT, "Makefile")) as f:
        makefile = f.read()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_api_tour_runs(tmp_path, capsys):
    text = _readme()
    section = text.split("## A 30-line tour of the API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 45
    code = code.replace("/tmp/tour.jxc", str(tmp_path / "tour.jxc"))
    namespace: dict = {}
    exec(compile(code, "README.md tour", "exec"), namespace)
    out = capsys.readouterr().out
    assert "bytes on disk" in out
    params = namespace["state"].params
    float32_bytes = 4 * sum(x.size for x in jax.tree.leaves(params))
    assert namespace["nbytes"] < float32_bytes / 5
    # pruned weights stay exactly zero and the file restores the shared weights bitwise
    kernel = np.asarray(params["Dense_0"]["kernel"])
    assert abs((kernel == 0).mean() - 0.9) < 1e-3
    restored = namespace["restored"]
    shared = namespace["compression"].shared_params(namespace["shared"])
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(shared), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


COMMAND = re.compile(
    r"python -m experiments\.(\w+)\s+--config[ =]\s*experiments/configs/(\w+)\.py(?::([\w,]+))?"
)


def _commands() -> str:
    """The README with its shell line continuations and line breaks joined."""
    return re.sub(r"\s+", " ", _readme().replace("\\\n", " "))


def test_experiment_commands_name_scripts_and_configs_that_run_together():
    text = _commands()
    scripts = set(re.findall(r"-m experiments\.(\w+)", text))
    assert scripts, "the README shows no experiment command"
    assert scripts <= set(experiment_scripts()) | {"launch"}
    commands = COMMAND.findall(text)
    assert len(commands) >= 3
    for script, name, variant in commands:
        config = load_config(name, variant or "")  # a variant the config knows
        # the script's recipe reads every field of the config (and misses none)
        schema.check_fields(config, recipe_of(script).default_config(), script)


def test_config_overrides_in_the_readme_name_real_fields():
    fields = set()
    for script in experiment_scripts():
        listing = cli.field_listing(recipe_of(script).default_config())
        fields |= {line.split(" = ")[0] for line in listing}
    overrides = re.findall(r"--(config\.[\w.]+)=", _commands())
    for field in overrides:
        assert field in fields or field.split(".")[1] == "model", field
