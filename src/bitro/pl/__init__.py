"""Plots of images, cells, predictions, scores and training.

Every function takes the data object first and keyword-only options (enforced by
``tests/test_api_conventions.py``).
"""

from ._segmentation import segmentation

__all__ = ["segmentation"]
