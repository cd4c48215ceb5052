"""Plots of images, cells, predictions, scores and training.

Every function takes the data object first and keyword-only options (enforced by
``tests/test_api_conventions.py``), and follows one contract (:mod:`bitro.pl._utils`): ``save=``
writes the figure; ``show=None`` shows it only when the plot made its own figure on an interactive
backend without ``save`` or ``return_fig``; it returns the figure when ``return_fig=True``, else its
axes unless the figure was shown (then ``None``).
"""

from ._cells import cell_expression
from ._scores import gene_scores
from ._segmentation import segmentation
from ._spatial import spatial_prediction
from ._training import training_history

__all__ = ["cell_expression", "gene_scores", "segmentation", "spatial_prediction", "training_history"]
