"""Datasets: synthetic tissue with known ground truth, and public data (local copy or cached download)."""

from ._her2st import her2st
from ._toy import toy_bulk_cohort, toy_st

__all__ = ["her2st", "toy_bulk_cohort", "toy_st"]
