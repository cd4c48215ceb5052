"""Readers: Visium, legacy ST, HEST-1k, whole-slide images and bulk RNA-seq cohorts into SpatialData / AnnData."""

from ._bulk import bulk
from ._cohort import cohort
from ._hest import hest
from ._legacy_st import legacy_st
from ._visium import visium
from ._wsi import wsi
from ._zarr import read_zarr

__all__ = ["bulk", "cohort", "hest", "legacy_st", "read_zarr", "visium", "wsi"]
