r"""The compression pipeline (``recipes.compress``): dense → pruned → shared → student →
quantized → file, one table row per stage, the per-layer size report and the load check.

Usage:
  python -m experiments.compress --config experiments/configs/digits_deep_compression.py \
      --workdir runs/demo
  python -m experiments.compress --config experiments/configs/digits_deep_compression.py:quick \
      --workdir runs/demo_quick --config.sharing.bits=4
  python -m experiments.compress --config experiments/configs/digits_deep_compression.py \
      --help   # every field and its default
"""

from jaxopt_models.compression import format_size_report
from jaxopt_models.recipes import cli, compress

cli.define_flags(compress.default_config)


def _report(result) -> None:
    _, results = result
    print(format_size_report(results["size_report"]), end="\n\n")
    print(f"{results['model']} on {results['dataset']}: float32 {results['float32_bytes']:,} bytes")
    print(results["table"], end="")
    rt = results["roundtrip"]
    print(
        f"load_compressed({rt['path']}): predictions identical on all {rt['num_test']} "
        f"test examples: {rt['predictions_identical']}"
    )


if __name__ == "__main__":
    cli.main(compress.run, _report)
