"""Classification metrics (accuracy, P/R/F1, confusion) and language-model metrics."""

from jaxopt_models.metrics.classification import AVERAGES as AVERAGES
from jaxopt_models.metrics.classification import accuracy as accuracy
from jaxopt_models.metrics.classification import classification_report as classification_report
from jaxopt_models.metrics.classification import confusion_matrix as confusion_matrix
from jaxopt_models.metrics.classification import precision_recall_f1 as precision_recall_f1
from jaxopt_models.metrics.language import LMLoss as LMLoss
from jaxopt_models.metrics.language import bits_per_byte as bits_per_byte
from jaxopt_models.metrics.language import bits_per_token as bits_per_token
from jaxopt_models.metrics.language import lm_loss as lm_loss
from jaxopt_models.metrics.language import perplexity as perplexity
from jaxopt_models.metrics.language import tokens_per_second as tokens_per_second
