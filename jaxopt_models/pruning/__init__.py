"""Pruning: scores, exact masks, sparsity distributions and schedules, and ``prune``.

``prune(scorer, schedule)`` is an optax transform: chain it after any optimizer and the
pruned weights are exactly 0.0 after every ``optax.apply_updates``.

One-shot pruning of a single Dense kernel from its input Hessian ``X^T X``:
``sparsegpt(kernel, hessian, sparsity=0.5)`` (with error compensation) and
``wanda(kernel, hessian, n_m=(2, 4))`` (scores only).

Example:
  >>> import optax
  >>> from jaxopt_models import pruning
  >>> tx = optax.chain(
  ...     optax.adam(1e-3),
  ...     pruning.prune("magnitude", pruning.polynomial(0.9, 0, 10_000, frequency=100)),
  ... )
"""

from jaxopt_models.pruning.distributions import DISTRIBUTIONS as DISTRIBUTIONS
from jaxopt_models.pruning.distributions import FilterFn as FilterFn
from jaxopt_models.pruning.distributions import default_filter as default_filter
from jaxopt_models.pruning.distributions import erk_sparsity as erk_sparsity
from jaxopt_models.pruning.distributions import per_layer_sparsity as per_layer_sparsity
from jaxopt_models.pruning.distributions import uniform_sparsity as uniform_sparsity
from jaxopt_models.pruning.lottery import LotteryResult as LotteryResult
from jaxopt_models.pruning.lottery import LotteryRound as LotteryRound
from jaxopt_models.pruning.lottery import iterative_magnitude_pruning as iterative_magnitude_pruning
from jaxopt_models.pruning.masks import apply_masks as apply_masks
from jaxopt_models.pruning.masks import check_masks as check_masks
from jaxopt_models.pruning.masks import compute_masks as compute_masks
from jaxopt_models.pruning.schedules import Schedule as Schedule
from jaxopt_models.pruning.schedules import constant as constant
from jaxopt_models.pruning.schedules import one_shot as one_shot
from jaxopt_models.pruning.schedules import polynomial as polynomial
from jaxopt_models.pruning.scores import SCORERS as SCORERS
from jaxopt_models.pruning.scores import Scorer as Scorer
from jaxopt_models.pruning.scores import get_scorer as get_scorer
from jaxopt_models.pruning.scores import magnitude_scores as magnitude_scores
from jaxopt_models.pruning.scores import random_scores as random_scores
from jaxopt_models.pruning.scores import saliency_scores as saliency_scores
from jaxopt_models.pruning.sparsegpt import sparsegpt as sparsegpt
from jaxopt_models.pruning.structures import Channels as Channels
from jaxopt_models.pruning.structures import NByM as NByM
from jaxopt_models.pruning.structures import Structure as Structure
from jaxopt_models.pruning.structures import Unstructured as Unstructured
from jaxopt_models.pruning.structures import channels as channels
from jaxopt_models.pruning.structures import n_by_m as n_by_m
from jaxopt_models.pruning.structures import unstructured as unstructured
from jaxopt_models.pruning.summary import format_summary as format_summary
from jaxopt_models.pruning.summary import sparsity_summary as sparsity_summary
from jaxopt_models.pruning.summary import summary as summary
from jaxopt_models.pruning.transform import KeepMasksState as KeepMasksState
from jaxopt_models.pruning.transform import PruneState as PruneState
from jaxopt_models.pruning.transform import find_prune_state as find_prune_state
from jaxopt_models.pruning.transform import keep_masks as keep_masks
from jaxopt_models.pruning.transform import prune as prune
from jaxopt_models.pruning.transform import replace_masks as replace_masks
from jaxopt_models.pruning.wanda import wanda as wanda
