"""The command line of every experiment script: flags, one recipe call, clear errors.

``python -m experiments.<script> --config FILE[:variant] --workdir DIR [--config.a.b=v ...]``

- ``--help`` lists every overridable field of the recipe with its default (``--config``'s
  help text), and ``--show_config`` prints the resolved config (after the file, the variant
  and the overrides) and exits.
- A bad command line or config (an unknown field, a value out of range, a workdir that is a
  file, a finished run without ``--overwrite``, a missing dataset or optional package) prints
  one line ``error: ...`` naming the field and exits with status 2 before anything trains;
  errors during training keep their traceback (they are bugs or real failures).
"""

import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from jaxopt_models.recipes.build import ConfigError

FLAGS = flags.FLAGS


def field_listing(config, prefix: str = "config") -> list[str]:
    """``["config.a.b = default", ...]`` for every leaf field of ``config``."""
    lines = []
    for key in sorted(config.keys()):
        value = config[key]
        name = f"{prefix}.{key}"
        is_section = hasattr(value, "keys") and hasattr(value, "items")
        if is_section and len(value.keys()):
            lines.extend(field_listing(value, name))
        else:  # an empty section (e.g. per-layer rules) is "{}", on one line
            lines.append(f"{name} = {'{}' if is_section else repr(value)}")
    return lines


def define_flags(default_config: Callable[[], Any], **extra: tuple[str, Any, str]) -> None:
    """Defines ``--config``, ``--workdir``, ``--resume``, ``--overwrite``, ``--show_config``.

    Args:
      default_config: the recipe's ``default_config`` (its fields go into ``--help``).
      **extra: more string flags, ``name=(kind, default, help)`` with kind ``"string"``,
        ``"integer"`` or ``"bool"``.
    """
    listing = "\n".join("    " + line for line in field_listing(default_config()))
    if "config" not in FLAGS:
        config_flags.DEFINE_config_file(
            "config",
            None,
            "Experiment config file (path[:variant]); any field can be overridden with "
            "--config.<field>=<value>. Fields and defaults of this recipe:\n" + listing,
            lock_config=True,
        )
    specs = (
        ("workdir", "string", None, "Output directory."),
        ("resume", "bool", False, "Continue from the newest checkpoint in the workdir."),
        ("overwrite", "bool", False, "Replace a finished run in the workdir."),
        ("show_config", "bool", False, "Print the resolved config and exit."),
    ) + tuple((n, *v) for n, v in extra.items())
    for name, kind, default, help_ in specs:
        if name not in FLAGS:
            getattr(flags, f"DEFINE_{kind}")(name, default, help_)
    # --help shows the main module's key flags; these are defined here, so declare them
    # key flags of the script (absl names the main module by sys.argv[0])
    main_module = sys.argv[0] if sys.argv else "__main__"
    for name in ("config", *(spec[0] for spec in specs)):
        FLAGS.register_key_flag_for_module(main_module, FLAGS[name])


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _one_line(text: str) -> str:
    """A (multi-line) parse error as one line: a wrapped traceback keeps only its last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "Traceback (most recent call last):" in lines:
        return f"{lines[0].rstrip(':')}: {lines[-1]}"
    return " ".join(lines)


def _parse(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _fail(_one_line(str(e)))
    except (AttributeError, KeyError, ValueError, TypeError, OSError) as e:
        # config_flags: an unknown field, a bad value or a config file that cannot load
        text = str(e).strip("'\"") or type(e).__name__
        if isinstance(e, (AttributeError, KeyError)):
            given = [
                a.split("=", 1)[0]
                for a in argv[1:]
                if a.startswith("--config.") and text in a.split("=", 1)[0].split(".")
            ]
            where = f" in {given[0]}" if given else ""
            text = f"unknown config field {text!r}{where} (see --help for the fields)"
        _fail(_one_line(text))
    return []


def main(run: Callable[..., Any], report: Callable[[Any], None] | None = None) -> None:
    """Parses the command line and calls ``run(config, workdir, **flags)``; prints ``report``.

    ``run`` receives the resolved config, ``--workdir`` and the flags ``overwrite`` (and
    ``resume`` is written into ``config.resume`` when the config has that field).
    Config errors exit with status 2 and one line; see the module docstring.
    """

    def _main(argv: list[str]) -> None:
        del argv
        logging.set_verbosity(logging.WARNING)
        config = FLAGS.config
        if config is None:
            _fail("--config is required (a config file, e.g. experiments/configs/digits_mlp.py)")
        try:  # config_flags reports a config file that failed to load on first use
            config.keys()
        except OSError as e:
            last = [ln.strip() for ln in str(e).splitlines() if ln.strip()][-1]
            _fail(f"--config cannot be loaded: {last}")
        if FLAGS.show_config:
            print("\n".join(field_listing(config)))
            return
        if not FLAGS.workdir:
            _fail("--workdir is required")
        if FLAGS.resume:
            if "resume" not in config:
                _fail("--resume: this recipe does not resume from checkpoints")
            with config.unlocked():
                config.resume = True
        try:
            result = run(config, FLAGS.workdir, overwrite=FLAGS.overwrite)
        except ConfigError as e:
            _fail(str(e))
        if report is not None:
            import jax  # noqa: PLC0415

            if jax.process_index() == 0:
                report(result)

    app.run(_main, flags_parser=_parse)
