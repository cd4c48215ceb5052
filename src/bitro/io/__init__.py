"""Readers: Visium, legacy ST, HEST-1k, whole-slide images and bulk RNA-seq cohorts into SpatialData / AnnData."""

from ._bulk import bulk
from ._visium import visium

__all__ = ["bulk", "visium"]
