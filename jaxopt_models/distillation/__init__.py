"""Knowledge-distillation losses: soft targets (KD), logit matching and hint losses.

Pure functions over arrays and pytrees, the frozen ``Teacher`` and the per-example loss
factory; the teacher-student protocol that uses them is ``jaxopt_models.recipes.distill``.
"""

from jaxopt_models.distillation.features import HIDDEN_STATE_LOSSES as HIDDEN_STATE_LOSSES
from jaxopt_models.distillation.features import FeatureProjection as FeatureProjection
from jaxopt_models.distillation.features import capture_features as capture_features
from jaxopt_models.distillation.features import feature_loss as feature_loss
from jaxopt_models.distillation.features import hidden_state_loss as hidden_state_loss
from jaxopt_models.distillation.features import (
    init_feature_projection as init_feature_projection,
)
from jaxopt_models.distillation.features import project_features as project_features
from jaxopt_models.distillation.losses import distillation_loss as distillation_loss
from jaxopt_models.distillation.losses import kd_loss as kd_loss
from jaxopt_models.distillation.losses import mse_logits_loss as mse_logits_loss
from jaxopt_models.distillation.losses import validate_alpha as validate_alpha
from jaxopt_models.distillation.losses import validate_temperature as validate_temperature
from jaxopt_models.distillation.teacher import DISTILL_LOSSES as DISTILL_LOSSES
from jaxopt_models.distillation.teacher import Teacher as Teacher
from jaxopt_models.distillation.teacher import make_distill_loss as make_distill_loss
from jaxopt_models.distillation.teacher import teacher_logits as teacher_logits
