"""Training: state, optimizers, compiled steps and the experiment loop."""

from jaxopt_models.training.checkpoint import Checkpointer as Checkpointer
from jaxopt_models.training.compress import CompressedModel as CompressedModel
from jaxopt_models.training.compress import compress_and_evaluate as compress_and_evaluate
from jaxopt_models.training.compress import default_compress_config as default_compress_config
from jaxopt_models.training.compress import layer_setting as layer_setting
from jaxopt_models.training.compress import measure_latency as measure_latency
from jaxopt_models.training.compress import (
    validate_compress_config as validate_compress_config,
)
from jaxopt_models.training.compress_report import format_stage_table as format_stage_table
from jaxopt_models.training.compress_report import pareto_front as pareto_front
from jaxopt_models.training.compress_report import write_plots as write_plots
from jaxopt_models.training.config import augment_from_config as augment_from_config
from jaxopt_models.training.config import default_config as default_config
from jaxopt_models.training.distill import Teacher as Teacher
from jaxopt_models.training.distill import compute_teacher_logits as compute_teacher_logits
from jaxopt_models.training.distill import default_distill_config as default_distill_config
from jaxopt_models.training.distill import distill_train_step as distill_train_step
from jaxopt_models.training.distill import make_distill_loss as make_distill_loss
from jaxopt_models.training.distill import make_distill_train_step as make_distill_train_step
from jaxopt_models.training.distill import (
    make_precomputed_distill_train_step as make_precomputed_distill_train_step,
)
from jaxopt_models.training.distill import train_and_distill as train_and_distill
from jaxopt_models.training.distributed import distributed_settings as distributed_settings
from jaxopt_models.training.distributed import initialize_distributed as initialize_distributed
from jaxopt_models.training.distributed import is_main_process as is_main_process
from jaxopt_models.training.distributed import launch_local as launch_local
from jaxopt_models.training.int8_inference import Int8Layer as Int8Layer
from jaxopt_models.training.int8_inference import Int8Model as Int8Model
from jaxopt_models.training.int8_inference import build_int8_model as build_int8_model
from jaxopt_models.training.int8_inference import (
    calibrate_activation_ranges as calibrate_activation_ranges,
)
from jaxopt_models.training.int8_inference import capture_layer_inputs as capture_layer_inputs
from jaxopt_models.training.int8_inference import fake_quant_apply as fake_quant_apply
from jaxopt_models.training.int8_inference import int8_apply as int8_apply
from jaxopt_models.training.io import append_jsonl as append_jsonl
from jaxopt_models.training.io import atomic_write_bytes as atomic_write_bytes
from jaxopt_models.training.io import atomic_write_json as atomic_write_json
from jaxopt_models.training.loop import dataset_kwargs as dataset_kwargs
from jaxopt_models.training.loop import evaluate as evaluate
from jaxopt_models.training.loop import fit as fit
from jaxopt_models.training.loop import load_dataset as load_dataset
from jaxopt_models.training.loop import model_kwargs as model_kwargs
from jaxopt_models.training.loop import print_results as print_results
from jaxopt_models.training.loop import train_and_evaluate as train_and_evaluate
from jaxopt_models.training.model_io import load_variables as load_variables
from jaxopt_models.training.model_io import save_variables as save_variables
from jaxopt_models.training.optimizers import OPTIMIZERS as OPTIMIZERS
from jaxopt_models.training.optimizers import SCHEDULES as SCHEDULES
from jaxopt_models.training.optimizers import make_optimizer as make_optimizer
from jaxopt_models.training.optimizers import make_schedule as make_schedule
from jaxopt_models.training.parallel import DATA_AXIS as DATA_AXIS
from jaxopt_models.training.parallel import PARALLEL_MODES as PARALLEL_MODES
from jaxopt_models.training.parallel import ParallelStep as ParallelStep
from jaxopt_models.training.parallel import cross_replica_mean as cross_replica_mean
from jaxopt_models.training.parallel import make_mesh as make_mesh
from jaxopt_models.training.pruning_config import PRUNING_METHODS as PRUNING_METHODS
from jaxopt_models.training.pruning_config import PRUNING_SCHEDULES as PRUNING_SCHEDULES
from jaxopt_models.training.pruning_config import (
    default_pruning_config as default_pruning_config,
)
from jaxopt_models.training.pruning_config import find_prune_state as find_prune_state
from jaxopt_models.training.pruning_config import make_pruning as make_pruning
from jaxopt_models.training.pruning_config import pruning_enabled as pruning_enabled
from jaxopt_models.training.pruning_config import pruning_results as pruning_results
from jaxopt_models.training.pruning_config import schedule_steps as schedule_steps
from jaxopt_models.training.pruning_config import sparsity_summary as sparsity_summary
from jaxopt_models.training.pruning_config import with_pruning as with_pruning
from jaxopt_models.training.quant_config import (
    default_quantization_config as default_quantization_config,
)
from jaxopt_models.training.quant_config import quant_model_kwargs as quant_model_kwargs
from jaxopt_models.training.quant_config import quant_params_fn as quant_params_fn
from jaxopt_models.training.quant_config import quantization_enabled as quantization_enabled
from jaxopt_models.training.state import TrainState as TrainState
from jaxopt_models.training.state import count_params as count_params
from jaxopt_models.training.state import create_train_state as create_train_state
from jaxopt_models.training.steps import apply_objective as apply_objective
from jaxopt_models.training.steps import cross_entropy as cross_entropy
from jaxopt_models.training.steps import eval_step as eval_step
from jaxopt_models.training.steps import make_eval_step as make_eval_step
from jaxopt_models.training.steps import make_train_step as make_train_step
from jaxopt_models.training.steps import train_step as train_step
