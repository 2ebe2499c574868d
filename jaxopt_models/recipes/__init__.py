"""Recipes: each is ``default_config()`` + ``run(config, workdir)``, composing the library.

- ``train``: one model, optional pruning / QAT / augmentation.
- ``distill``: teacher, student alone and distilled students over seeds and temperatures.
- ``lottery``: iterative magnitude pruning with rewinding vs random re-init.
- ``ptq``: float / QAT training, calibration and the int8 inference path.
- ``crossval``: k-fold cross-validation of a train config.
- ``compress``: the Deep Compression pipeline as a list of stages, to a compressed file.

``recipes.build`` is the only module that turns a config into data, model, optimizer and
transforms; ``recipes.config`` holds the one schema per technique every recipe shares.
Experiment scripts are flags plus one ``run`` call (``recipes.cli.main``).
"""

from jaxopt_models.recipes.build import Data as Data
from jaxopt_models.recipes.build import load_data as load_data
from jaxopt_models.recipes.config import base_config as base_config
from jaxopt_models.recipes.config import check_fields as check_fields
from jaxopt_models.recipes.config import distillation_section as distillation_section
from jaxopt_models.recipes.config import optimizer_section as optimizer_section
from jaxopt_models.recipes.config import pruning_section as pruning_section
from jaxopt_models.recipes.config import ptq_section as ptq_section
from jaxopt_models.recipes.config import quantization_section as quantization_section
from jaxopt_models.recipes.config import sharing_section as sharing_section
from jaxopt_models.recipes.loading import TrainedLM as TrainedLM
from jaxopt_models.recipes.loading import is_lm_run as is_lm_run
from jaxopt_models.recipes.loading import load_lm as load_lm
from jaxopt_models.recipes.loading import load_trained as load_trained
