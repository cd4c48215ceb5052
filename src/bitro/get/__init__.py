"""Accessors in the style of :mod:`scanpy.get`: predictions and measurements as AnnData or DataFrames.

Every function takes the data object first and keyword-only options.
"""

from ._predictions import observed_df, prediction_df, predictions

__all__ = ["observed_df", "prediction_df", "predictions"]
