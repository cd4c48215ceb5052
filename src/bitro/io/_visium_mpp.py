"""Visium pixel size: µm per full-resolution pixel from the spot pitch, and elements mapped to µm."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from bitro import _sdata
from bitro._logging import logger

VISIUM_SPOT_PITCH_UM = 100.0
"""Centre-to-centre distance of neighbouring Visium spots; two array columns apart on one array row."""

SPACERANGER_SPOT_DIAMETER_UM = 65.0
"""What Space Ranger's ``spot_diameter_fullres`` spans according to 10x's documentation ("a theoretical 65 µm
spot"); only used for the pixel size when the spot pitch cannot be measured."""


def _spot_pitch_px(positions: pd.DataFrame) -> float | None:
    """Median distance in full-resolution pixels between spots two array columns apart on one array row."""
    spots = pd.DataFrame(
        {
            "r": positions["array_row"].to_numpy(),
            "c": positions["array_col"].to_numpy(),
            "x": positions["pxl_col_in_fullres"].to_numpy(float),
            "y": positions["pxl_row_in_fullres"].to_numpy(float),
        }
    )
    pairs = spots.merge(spots.assign(c=spots["c"] - 2), on=["r", "c"], suffixes=("", "_n"))
    dist = np.hypot(pairs["x_n"] - pairs["x"], pairs["y_n"] - pairs["y"]).to_numpy()
    dist = dist[dist > 0]
    return float(np.median(dist)) if dist.size else None


def _pixel_size(mpp, positions, scalefactors, *, positions_file: Path, scalefactors_file: Path) -> tuple[float, str]:
    diameter = scalefactors.get("spot_diameter_fullres")
    if mpp is not None:
        return mpp, "(given)"
    pitch = _spot_pitch_px(positions)
    if pitch is not None:
        mpp = VISIUM_SPOT_PITCH_UM / pitch
        how = f"from the {VISIUM_SPOT_PITCH_UM:g} µm spot pitch ({pitch:.3f} px) in {positions_file.name}"
        if diameter is not None:
            how += f"; spot_diameter_fullres spans {diameter * mpp:.1f} µm"
        return mpp, how
    if diameter is None:
        raise ValueError(
            f"Cannot tell the pixel size: {positions_file} has no two spots two array columns apart on one row "
            f"and {scalefactors_file} has no 'spot_diameter_fullres'; pass `mpp`."
        )
    mpp = SPACERANGER_SPOT_DIAMETER_UM / float(diameter)
    warnings.warn(
        f"{positions_file}: the spot pitch cannot be measured; pixel size {mpp:.4f} µm/px taken as "
        f"{SPACERANGER_SPOT_DIAMETER_UM:g} µm / spot_diameter_fullres ({diameter:.3f} px, {scalefactors_file}), "
        "which Space Ranger versions define differently; pass `mpp` if it is known.",
        UserWarning,
        stacklevel=3,
    )
    return mpp, f"from {SPACERANGER_SPOT_DIAMETER_UM:g} µm / spot_diameter_fullres"


def _rgb_in_um(sdata, dataset_id: str, *, mpp: float) -> None:
    """Map every element to the coordinate system ``dataset_id`` in µm (as all bitro readers do) and drop alpha.

    spatialdata-io maps to full-resolution pixels; scaling by ``mpp`` after that transformation
    keeps the pixel coordinate systems (``*_downscaled_*``) as they are.
    """
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale, Sequence, get_transformation, set_transformation

    to_um = Scale([mpp, mpp], axes=("x", "y"))
    for key, element in list(sdata.images.items()):
        level0 = _sdata.level0(element)
        if level0.sizes["c"] == 4:  # RGBA PNGs: alpha carries no stain
            transformations = get_transformation(level0, get_all=True)
            sdata.images[key] = Image2DModel.parse(
                level0.isel(c=slice(0, 3)).data,
                dims=("c", "y", "x"),
                c_coords=["r", "g", "b"],
                transformations=transformations,
                scale_factors=[2] * (len(element) - 1) if hasattr(element, "keys") else None,
            )
            logger.info("visium %s: alpha channel of %s dropped", dataset_id, key)
    for _, _, element in sdata.gen_spatial_elements():
        t = get_transformation(element, to_coordinate_system=dataset_id)
        set_transformation(element, Sequence([t, to_um]), to_coordinate_system=dataset_id)


def _um_per_pixel(element, coordinate_system: str) -> float:
    """µm per level-0 pixel of an image mapped to a µm coordinate system (x scale of its affine)."""
    from spatialdata.transformations import get_transformation

    level0 = _sdata.level0(element)
    matrix = get_transformation(level0, to_coordinate_system=coordinate_system).to_affine_matrix(("x", "y"), ("x", "y"))
    return float(abs(matrix[0, 0]))
