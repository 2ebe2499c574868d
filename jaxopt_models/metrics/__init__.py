"""Classification metrics and k-fold cross-validation."""

from jaxopt_models.metrics.classification import AVERAGES as AVERAGES
from jaxopt_models.metrics.classification import accuracy as accuracy
from jaxopt_models.metrics.classification import classification_report as classification_report
from jaxopt_models.metrics.classification import confusion_matrix as confusion_matrix
from jaxopt_models.metrics.classification import precision_recall_f1 as precision_recall_f1
from jaxopt_models.metrics.crossval import kfold_cross_validate as kfold_cross_validate
from jaxopt_models.metrics.crossval import kfold_indices as kfold_indices
