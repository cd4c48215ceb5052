"""Plots of images, predictions, scores and training.

Nothing is public yet; conventions as for :mod:`bitro.pp`.
"""

__all__: list[str] = []
