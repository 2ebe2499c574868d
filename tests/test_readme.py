"""The README's API tour runs as written, and its set-up commands are the two make targets."""

import os
import re

import jax
import numpy as np

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
