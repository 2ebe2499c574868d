"""Offline data sources, the IDX reader, deterministic batching and augmentation."""

from jaxopt_models.data.augment import SHIFT_MODES as SHIFT_MODES
from jaxopt_models.data.augment import make_augment as make_augment
from jaxopt_models.data.augment import random_flip as random_flip
from jaxopt_models.data.augment import random_shift as random_shift
from jaxopt_models.data.batching import epoch_permutation as epoch_permutation
from jaxopt_models.data.batching import eval_batches as eval_batches
from jaxopt_models.data.batching import steps_per_epoch as steps_per_epoch
from jaxopt_models.data.batching import train_batches as train_batches
from jaxopt_models.data.idx import read_idx as read_idx
from jaxopt_models.data.idx import write_idx as write_idx
from jaxopt_models.data.sources import Dataset as Dataset
from jaxopt_models.data.sources import class_names as class_names
from jaxopt_models.data.sources import dataset_names as dataset_names
from jaxopt_models.data.sources import digits as digits
from jaxopt_models.data.sources import fashion_mnist as fashion_mnist
from jaxopt_models.data.sources import get_dataset as get_dataset
from jaxopt_models.data.sources import load_idx_dir as load_idx_dir
from jaxopt_models.data.sources import mnist as mnist
from jaxopt_models.data.sources import mnist1d as mnist1d
