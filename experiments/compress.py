r"""The compression pipeline (``recipes.compress``): dense → pruned → shared → student →
quantized → file, one table row per stage.

Usage:
  python -m experiments.compress --config experiments/configs/digits_deep_compression.py \
      --workdir runs/demo
  python -m experiments.compress --config experiments/configs/digits_deep_compression.py \
      --help   # every field and its default
"""

from jaxopt_models.recipes import cli, compress

cli.define_flags(compress.default_config)


def _report(result) -> None:
    _, results = result
    print(results["table"])
    print(f"compressed file: {results['roundtrip']['path']} (predictions identical on "
          f"{results['roundtrip']['num_test']} test examples)")


if __name__ == "__main__":
    cli.main(compress.run, _report)
