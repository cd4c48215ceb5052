"""Synthetic H&E tissue with known ground truth: ``toy_st`` (spots) and ``toy_bulk_cohort`` (slides)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro._logging import logger
from bitro._validate import check_choice, check_float, check_int, check_name

from ._cell_types import CellType, Programs, cell_types, expression_programs
from ._elements import to_spatialdata
from ._layout import blob, sample_section
from ._render import Stain


def toy_st(
    *,
    n_spots: int = 36,
    n_genes: int = 100,
    n_cell_types: int = 4,
    grid: Literal["hex", "square"] = "hex",
    spot_diameter_um: float = 55.0,
    spot_spacing_um: float = 100.0,
    mpp: float = 0.5,
    cell_spacing_um: float = 14.0,
    region_size_um: float = 150.0,
    region_sharpness: float = 2.5,
    cell_type_proportions: np.ndarray | list[float] | None = None,
    cell_noise: float = 0.2,
    stain_jitter: float = 1.0,
    sample_id: str = "toy",
    seed: int = 0,
    program_seed: int = 0,
    lazy: bool | None = None,
):
    """Synthetic spatial-transcriptomics section with known cell-level ground truth.

    An H&E-like RGB image (pink eosin, purple hematoxylin nuclei) of ``n_cell_types`` cell types
    that differ in nucleus size, shape, stain intensity and texture and cluster into tissue
    regions; a hexagonal (Visium-like) or square (legacy ST-like) grid of spots; and a spots x
    genes count table whose counts are Poisson draws from the summed true expression of the cells
    whose centroids lie inside each spot.

    Cell types (morphology and expression programs) depend only on ``program_seed``, so any two
    toy datasets with the same ``program_seed`` and ``n_cell_types`` share them — whatever their
    ``seed`` — and a model trained on one applies to the other. ``seed`` varies the layout, the
    mixture and the noise.

    Parameters
    ----------
    n_spots
        Number of spots, laid out row by row on a near-square grid.
    n_genes
        Number of genes. Gene ``j`` has the same program whatever ``n_genes`` is.
    n_cell_types
        Number of cell types: the first four are tumor, stroma, lymphocyte, myeloid; more are drawn
        from ``program_seed``.
    grid
        ``"hex"`` (Visium) or ``"square"`` (legacy ST) spot lattice.
    spot_diameter_um, spot_spacing_um
        Spot diameter and centre-to-centre distance in µm (Visium: 55 and 100; legacy ST: 100 and 200).
    mpp
        Pixel size of the image in µm per pixel.
    cell_spacing_um
        Spacing of the lattice the cells sit on; sparser types leave sites empty.
    region_size_um
        Typical size of a region of one cell type.
    region_sharpness
        How pure the regions are (0 = types mixed at random).
    cell_type_proportions
        Relative abundance of each type (default: equal).
    cell_noise
        Log-normal noise of each cell's expression around its type's program.
    stain_jitter
        How much the stain deviates from the reference H&E colours (0 = reference).
    sample_id
        Dataset id: prefix of the element names and name of the coordinate system.
    seed
        Seed of the layout, mixture and noise.
    program_seed
        Seed of the cell types' morphology and expression programs.
    lazy
        Keep the image as a lazy dask array rendered chunk by chunk. Default: only for images
        above 64 megapixels.

    Returns
    -------
    :class:`spatialdata.SpatialData`
        The section, with these elements (``attrs["bitro"]`` names them, with ``mpp`` and the
        coordinate system):

        - image ``{sample_id}_full_image``: multiscale, chunked RGB uint8 ``(c, y, x)``;
        - shapes ``{sample_id}``: spot circles (``radius`` in pixels);
        - shapes ``{sample_id}_true_cells``: true nucleus polygons;
        - table ``"table"``: spots x genes, raw counts in ``X``, the Poisson rates in
          ``layers["true_rate"]``, ``obsm["true_type_fraction"]``, ``obs`` ``spot_id``, ``region``,
          ``array_row``, ``array_col``, ``n_cells``;
        - table ``"true_cells"``: cells x genes of true expression, ``obs`` ``cell_type``, centroid in
          px and µm, ``area_um2``, ``state``, ``spot_id`` of the containing spot (``<NA>`` outside
          every spot), ``varm["type_program"]``, and ``uns["toy"]["cell_types"]`` mapping each type
          to its column in ``type_program`` and ``true_type_fraction``.

        All elements are in full-resolution pixel coordinates, mapped to the coordinate system
        ``sample_id`` (in µm) by a scale of ``mpp`` and a translation (the stage position).

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.datasets.toy_st(n_spots=16, seed=1)
    >>> sdata["table"].shape
    (16, 100)
    """
    n_spots = check_int(n_spots, "n_spots", min_value=1)
    n_genes = check_int(n_genes, "n_genes", min_value=1)
    n_cell_types = check_int(n_cell_types, "n_cell_types", min_value=1)
    grid = check_choice(grid, "grid", ("hex", "square"))
    spot_diameter_um = check_float(spot_diameter_um, "spot_diameter_um", min_value=0, strict_min=True)
    spot_spacing_um = check_float(spot_spacing_um, "spot_spacing_um", min_value=0, strict_min=True)
    if spot_diameter_um >= spot_spacing_um:
        raise ValueError(
            f"`spot_diameter_um` ({spot_diameter_um}) must be smaller than `spot_spacing_um` "
            f"({spot_spacing_um}): spots may not overlap."
        )
    params = _check_tissue_params(
        mpp, cell_spacing_um, region_size_um, region_sharpness, cell_noise, stain_jitter, lazy
    )
    sample_id = check_name(sample_id, "sample_id")
    toy = _Toy.build(params, n_genes, n_cell_types, program_seed, K.FULL_IMAGE_SUFFIX)
    proportions = _check_proportions(cell_type_proportions, n_cell_types)
    seed = check_int(seed, "seed", min_value=0)
    rng = np.random.default_rng(seed)

    # spot centres (µm) on the chosen lattice, with a margin of one spacing around the grid
    n_cols = int(np.ceil(np.sqrt(n_spots)))
    index = np.arange(n_spots)
    row, col = index // n_cols, index % n_cols
    dy = spot_spacing_um * (np.sqrt(3) / 2 if grid == "hex" else 1.0)
    sx = spot_spacing_um * (col + 1 + (0.5 * (row % 2) if grid == "hex" else 0.0))
    sy = dy * row + spot_spacing_um
    width = spot_spacing_um * (n_cols + 1.5 + (0.5 if grid == "hex" else 0.0))
    height = dy * row.max() + 2 * spot_spacing_um
    # tissue: a rounded outline that contains every spot with room to spare
    half_w, half_h = (
        (sx.max() - sx.min()) / 2 + 0.7 * spot_spacing_um,
        (sy.max() - sy.min()) / 2 + 0.7 * spot_spacing_um,
    )
    outline = blob(
        ((sx.max() + sx.min()) / 2, (sy.max() + sy.min()) / 2), (half_w * 1.08, half_h * 1.08), rng, wobble=0.03
    )

    array_col = 2 * col + row % 2 if grid == "hex" else col
    spots = pd.DataFrame(
        {K.ARRAY_ROW_KEY: row, K.ARRAY_COL_KEY: array_col, "x_um": sx, "y_um": sy},
        index=[f"{c}x{r}" for c, r in zip(array_col, row, strict=True)],
    )
    sdata = toy.draw(
        sample_id,
        outline,
        (width, height),
        proportions,
        rng,
        uns=toy.uns(seed),
        spots=spots,
        spot_radius_um=spot_diameter_um / 2,
    )
    table = sdata[K.TABLE_KEY]
    logger.info(
        "toy_st: %d spots, %d cells, %d genes, median %d cells per spot",
        table.n_obs,
        sdata[K.TRUE_CELLS_TABLE_KEY].n_obs,
        n_genes,
        np.median(table.obs[K.N_CELLS_KEY]),
    )
    return sdata


def toy_bulk_cohort(
    *,
    n_slides: int = 8,
    n_patients: int | None = None,
    n_genes: int = 100,
    n_cell_types: int = 4,
    cells_per_slide: int = 2000,
    mixture_concentration: float = 2.0,
    mpp: float = 0.5,
    cell_spacing_um: float = 14.0,
    region_size_um: float = 150.0,
    region_sharpness: float = 2.5,
    cell_noise: float = 0.2,
    stain_jitter: float = 1.0,
    sample_prefix: str = "slide",
    seed: int = 0,
    program_seed: int = 0,
    lazy: bool | None = None,
):
    """Synthetic bulk RNA-seq cohort: whole-slide images with the summed expression of their cells.

    Each patient has its own cell-type mixture (drawn from a Dirichlet distribution) and stain;
    each of its slides varies around them. A slide's bulk profile is a Poisson draw from the
    summed true expression of all its cells. Cell types are those of :func:`toy_st` with the
    same ``program_seed`` and ``n_cell_types``, so models move between the two.

    Parameters
    ----------
    n_slides
        Number of slides (one bulk sample each).
    n_patients
        Number of patients the slides belong to, assigned in turn (default: ``ceil(n_slides / 2)``).
    n_genes
        Number of genes.
    n_cell_types
        Number of cell types (see :func:`toy_st`).
    cells_per_slide
        Approximate number of cells on each slide: sets the tissue area.
    mixture_concentration
        Dirichlet concentration of the patients' mixtures (small = more different patients).
    mpp, cell_spacing_um, region_size_um, region_sharpness, cell_noise, stain_jitter
        As in :func:`toy_st`.
    sample_prefix
        Slides are called ``{sample_prefix}{i}``; patients ``patient{j}``.
    seed
        Seed of the cohort (layouts, mixtures, stains, noise).
    program_seed
        Seed of the cell types' morphology and expression programs.
    lazy
        As in :func:`toy_st`.

    Returns
    -------
    ``(slides, cohort)``: a list of :class:`spatialdata.SpatialData`, one per slide, with
    images ``{sample_id}_he_image``, shapes ``{sample_id}_tissue`` (tissue polygon) and
    ``{sample_id}_true_cells``, tables ``"table"`` (1 x genes bulk counts annotating the tissue
    polygon) and ``"true_cells"``; and the cohort :class:`anndata.AnnData` (slides x genes, raw
    counts in ``X``, ``layers["true_rate"]``, ``obs`` ``sample_id``, ``patient_id``,
    ``slide_id``, ``n_cells``, ``obsm["true_type_fraction"]``).

    Examples
    --------
    >>> import bitro as bt
    >>> slides, cohort = bt.datasets.toy_bulk_cohort(n_slides=2, cells_per_slide=300)
    >>> cohort.obs["patient_id"].tolist()
    ['patient0', 'patient0']
    """
    import anndata as ad

    n_slides = check_int(n_slides, "n_slides", min_value=1)
    n_patients = -(-n_slides // 2) if n_patients is None else check_int(n_patients, "n_patients", min_value=1)
    if n_patients > n_slides:
        raise ValueError(f"`n_patients` ({n_patients}) cannot exceed `n_slides` ({n_slides}).")
    n_genes = check_int(n_genes, "n_genes", min_value=1)
    n_cell_types = check_int(n_cell_types, "n_cell_types", min_value=1)
    cells_per_slide = check_int(cells_per_slide, "cells_per_slide", min_value=1)
    concentration = check_float(mixture_concentration, "mixture_concentration", min_value=0, strict_min=True)
    params = _check_tissue_params(
        mpp, cell_spacing_um, region_size_um, region_sharpness, cell_noise, stain_jitter, lazy
    )
    sample_prefix = check_name(sample_prefix, "sample_prefix")
    toy = _Toy.build(params, n_genes, n_cell_types, program_seed, K.HE_IMAGE_SUFFIX)
    seed = check_int(seed, "seed", min_value=0)
    seq = np.random.SeedSequence(seed)
    patient_seqs, slide_seqs = seq.spawn(2)
    patients = []
    for p_seq in patient_seqs.spawn(n_patients):
        p_rng = np.random.default_rng(p_seq)
        patients.append((p_rng.dirichlet(np.full(n_cell_types, concentration)), Stain.draw(p_rng, toy.stain_jitter)))

    uns = toy.uns(seed)
    density = np.mean([t.density for t in toy.types])
    site_area = toy.layout["cell_spacing_um"] ** 2 * np.sqrt(3) / 2
    slides, rows = [], []
    for i, s_seq in enumerate(slide_seqs.spawn(n_slides)):
        rng = np.random.default_rng(s_seq)
        patient = i % n_patients
        mixture, patient_stain = patients[patient]
        proportions = rng.dirichlet(20 * mixture + 0.5)  # slides vary around their patient
        # tissue area for the requested number of cells, an irregular outline, glass around it
        radius = np.sqrt(cells_per_slide * site_area / density / np.pi) * rng.uniform(0.9, 1.1)
        margin = 0.25 * radius + 20
        semi = (radius * rng.uniform(1.0, 1.25), radius * rng.uniform(0.8, 1.0))
        width, height = 2 * (semi[0] * 1.3 + margin), 2 * (semi[1] * 1.3 + margin)
        outline = blob((width / 2, height / 2), semi, rng, wobble=0.12)
        sample_id = f"{sample_prefix}{i}"
        sdata = toy.draw(sample_id, outline, (width, height), proportions, rng, uns=uns, stain_around=patient_stain)
        slides.append(sdata)
        rows.append((sample_id, f"patient{patient}", sdata[K.TABLE_KEY]))

    bulk = [r[2] for r in rows]
    cohort = ad.AnnData(
        X=np.vstack([b.X for b in bulk]),
        obs=pd.DataFrame(
            {
                K.SAMPLE_ID_KEY: [r[0] for r in rows],
                K.PATIENT_ID_KEY: pd.Categorical([r[1] for r in rows]),
                K.SLIDE_KEY: [r[0] for r in rows],
                K.N_CELLS_KEY: [int(b.obs[K.N_CELLS_KEY].iloc[0]) for b in bulk],
            },
            index=[r[0] for r in rows],
        ),
        var=bulk[0].var.copy(),
        layers={K.TRUE_RATE_LAYER: np.vstack([b.layers[K.TRUE_RATE_LAYER] for b in bulk])},
        obsm={K.TYPE_FRACTION_KEY: np.vstack([b.obsm[K.TYPE_FRACTION_KEY] for b in bulk])},
        uns=copy.deepcopy(uns),
    )
    logger.info(
        "toy_bulk_cohort: %d slides of %d patients, %d cells in all",
        n_slides,
        n_patients,
        cohort.obs[K.N_CELLS_KEY].sum(),
    )
    return slides, cohort


def _check_tissue_params(
    mpp, cell_spacing_um, region_size_um, region_sharpness, cell_noise, stain_jitter, lazy
) -> dict:
    if lazy is not None and not isinstance(lazy, bool):
        raise TypeError(f"`lazy` must be True, False or None, got {lazy!r}.")
    mpp = check_float(mpp, "mpp", min_value=0.05, max_value=5.0)
    cell_spacing_um = check_float(cell_spacing_um, "cell_spacing_um", min_value=4.0)
    return {
        "mpp": mpp,
        "stain_jitter": check_float(stain_jitter, "stain_jitter", min_value=0, max_value=3),
        "layout": {
            "cell_spacing_um": cell_spacing_um,
            "region_size_um": check_float(region_size_um, "region_size_um", min_value=cell_spacing_um),
            "region_sharpness": check_float(region_sharpness, "region_sharpness", min_value=0),
            "cell_noise": check_float(cell_noise, "cell_noise", min_value=0, max_value=3),
        },
        "lazy": lazy,
    }


@dataclass(frozen=True)
class _Toy:
    """What the sections of one generator call share: cell types, programs and the checked tissue parameters."""

    types: tuple[CellType, ...]
    programs: Programs
    program_seed: int
    mpp: float
    stain_jitter: float
    layout: dict[str, float]
    """The tissue's keyword arguments of :func:`sample_section` (cell spacing, regions, noise)."""
    lazy: bool | None
    image_suffix: str
    """Of the image element's name: ``{sample_id}{image_suffix}``."""

    @classmethod
    def build(cls, params: dict, n_genes: int, n_cell_types: int, program_seed, image_suffix: str) -> _Toy:
        """The cell types and programs of ``program_seed``, with ``params`` from :func:`_check_tissue_params`."""
        program_seed = check_int(program_seed, "program_seed", min_value=0)
        types = cell_types(n_cell_types, program_seed)
        programs = expression_programs(n_genes, n_cell_types, program_seed)
        return cls(types=types, programs=programs, program_seed=program_seed, image_suffix=image_suffix, **params)

    def uns(self, seed: int) -> dict:
        """The tables' ``uns``: the ground truth's parameters under ``"toy"``."""
        # Cell-type order as {name: column}, not a list: zarr reads string lists back as numpy
        # StringDType arrays, and deep-copying those crashes numpy < 2.1 (which cellpose 3 pins).
        return {
            K.TOY_UNS_KEY: {
                "cell_types": {t.name: i for i, t in enumerate(self.types)},
                "morphology": {t.name: t.to_dict() for t in self.types},
                "mpp": self.mpp,
                "seed": seed,
                "program_seed": self.program_seed,
            }
        }

    def draw(
        self,
        sample_id: str,
        outline,
        size_um: tuple[float, float],
        proportions: np.ndarray,
        rng: np.random.Generator,
        *,
        uns: dict,
        spots: pd.DataFrame | None = None,
        spot_radius_um: float | None = None,
        stain_around: Stain | None = None,
    ):
        """Draw a section and its stain, and render them into the SpatialData ``sample_id``.

        The tissue is ``outline`` clipped to the ``size_um`` (width, height) image. The stain is a
        fresh draw or, with ``stain_around`` (a patient's stain), a slide's variation of it.
        ``rng`` draws the cells, then the stain, then the image and the counts.
        """
        import shapely

        width_um, height_um = size_um
        section = sample_section(
            outline.intersection(shapely.box(0, 0, width_um, height_um)),
            width_um=width_um,
            height_um=height_um,
            types=self.types,
            programs=self.programs,
            proportions=proportions,
            rng=rng,
            **self.layout,
        )
        if stain_around is None:
            stain = Stain.draw(rng, self.stain_jitter)
        else:
            stain = _jitter_stain(stain_around, rng, 0.3 * self.stain_jitter)
        return to_spatialdata(
            section,
            sample_id=sample_id,
            mpp=self.mpp,
            types=self.types,
            programs=self.programs,
            stain=stain,
            image_suffix=self.image_suffix,
            spots=spots,
            spot_radius_um=spot_radius_um,
            uns=uns,
            lazy=self.lazy,
            rng=rng,
        )


def _check_proportions(proportions, n_cell_types: int) -> np.ndarray:
    if proportions is None:
        return np.full(n_cell_types, 1 / n_cell_types)
    p = np.asarray(proportions, dtype=float)
    if p.shape != (n_cell_types,) or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(
            f"`cell_type_proportions` must be {n_cell_types} non-negative numbers with a positive sum, got {proportions!r}."
        )
    return np.maximum(p / p.sum(), 1e-9)


def _jitter_stain(stain: Stain, rng: np.random.Generator, jitter: float) -> Stain:
    delta = Stain.draw(rng, jitter)
    return Stain(
        h_vector=stain.h_vector,
        e_vector=stain.e_vector,
        h_scale=stain.h_scale * delta.h_scale,
        e_scale=stain.e_scale * delta.e_scale,
    )
