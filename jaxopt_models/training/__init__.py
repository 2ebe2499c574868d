"""The training engine: state, optimizers, compiled steps, parallelism, checkpoints, ``fit``.

It knows no model, dataset or technique: it takes an apply function (through the
``TrainState``), a loss, an optimizer (any optax transform, e.g. one chained with
``pruning.prune``), batches and plain settings. Recipes (``jaxopt_models.recipes``) compose
it with the rest of the library.
"""

from jaxopt_models.training.checkpoint import Checkpointer as Checkpointer
from jaxopt_models.training.checkpoint import CheckpointMismatchError as CheckpointMismatchError
from jaxopt_models.training.distributed import distributed_settings as distributed_settings
from jaxopt_models.training.distributed import initialize_distributed as initialize_distributed
from jaxopt_models.training.distributed import is_main_process as is_main_process
from jaxopt_models.training.distributed import launch_local as launch_local
from jaxopt_models.training.io import append_jsonl as append_jsonl
from jaxopt_models.training.io import atomic_write_bytes as atomic_write_bytes
from jaxopt_models.training.io import atomic_write_json as atomic_write_json
from jaxopt_models.training.loop import NAN_POLICIES as NAN_POLICIES
from jaxopt_models.training.loop import FitSettings as FitSettings
from jaxopt_models.training.loop import check_settings as check_settings
from jaxopt_models.training.loop import fit as fit
from jaxopt_models.training.model_io import load_variables as load_variables
from jaxopt_models.training.model_io import save_variables as save_variables
from jaxopt_models.training.optimizers import OPTIMIZERS as OPTIMIZERS
from jaxopt_models.training.optimizers import SCHEDULES as SCHEDULES
from jaxopt_models.training.optimizers import make_optimizer as make_optimizer
from jaxopt_models.training.optimizers import make_schedule as make_schedule
from jaxopt_models.training.parallel import DATA_AXIS as DATA_AXIS
from jaxopt_models.training.parallel import PARALLEL_MODES as PARALLEL_MODES
from jaxopt_models.training.parallel import ParallelStep as ParallelStep
from jaxopt_models.training.parallel import bind_extra as bind_extra
from jaxopt_models.training.parallel import cross_replica_mean as cross_replica_mean
from jaxopt_models.training.parallel import make_mesh as make_mesh
from jaxopt_models.training.sharded import SHARDED_MODES as SHARDED_MODES
from jaxopt_models.training.sharded import TENSOR_AXIS as TENSOR_AXIS
from jaxopt_models.training.sharded import ShardedStep as ShardedStep
from jaxopt_models.training.sharded import check_param_specs as check_param_specs
from jaxopt_models.training.sharded import fsdp_specs as fsdp_specs
from jaxopt_models.training.sharded import make_device_mesh as make_device_mesh
from jaxopt_models.training.sharded import per_device_bytes as per_device_bytes
from jaxopt_models.training.sharded import state_shardings as state_shardings
from jaxopt_models.training.state import TrainState as TrainState
from jaxopt_models.training.state import count_params as count_params
from jaxopt_models.training.state import create_train_state as create_train_state
from jaxopt_models.training.steps import apply_objective as apply_objective
from jaxopt_models.training.steps import cross_entropy as cross_entropy
from jaxopt_models.training.steps import eval_step as eval_step
from jaxopt_models.training.steps import make_eval_step as make_eval_step
from jaxopt_models.training.steps import make_train_step as make_train_step
from jaxopt_models.training.steps import train_step as train_step
from jaxopt_models.training.tensorboard import EventWriter as EventWriter
