r"""The language-model compression pipeline (``recipes.lm_compress``): a trained LM, an
optional student, one-shot pruning, quantization and the compressed file, one row per stage.

Usage:
  python -m experiments.lm_compress \
      --config experiments/configs/text_bible_gpt_compress.py --workdir runs/lm_bible_compress
  python -m experiments.lm_compress \
      --config experiments/configs/text_bible_gpt_compress.py --workdir runs/lm_c2 \
      --config.prune.budget=owl --config.prune.sparsity=0.7 --config.quantize.method=none
  python -m experiments.lm_compress \
      --config experiments/configs/text_bible_gpt_compress.py --help  # every field
"""

from jaxopt_models.recipes import cli, lm_compress

cli.define_flags(lm_compress.default_config)


if __name__ == "__main__":
    cli.main(lm_compress.run, lm_compress.print_results)
