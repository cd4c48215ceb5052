"""Datasets: synthetic tissue with known ground truth (and, later, real public data)."""

from ._toy import toy_bulk_cohort, toy_st

__all__ = ["toy_bulk_cohort", "toy_st"]
