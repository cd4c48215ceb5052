"""Plots of images, cells, predictions, scores and training.

Every function takes the data object first and keyword-only options (enforced by
``tests/test_api_conventions.py``).
"""

from ._prediction import cell_expression, spatial_prediction
from ._scores import gene_scores
from ._segmentation import segmentation
from ._training import training_history

__all__ = ["cell_expression", "gene_scores", "segmentation", "spatial_prediction", "training_history"]
