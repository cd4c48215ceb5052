"""Every element, table, column, ``obsm`` and ``uns`` key that bitro reads or writes.

Other modules import these names instead of spelling strings, so a key changes in one place.
Keys follow spatialdata's naming rules: ``[A-Za-z0-9_.-]``, no leading ``__``.
"""

from __future__ import annotations

# --- SpatialData attrs ---------------------------------------------------------------------------
ATTRS_KEY = "bitro"
"""``sdata.attrs[ATTRS_KEY]`` holds the keys a step used, the pixel size and the package version."""

ATTR_IMAGE = "image_key"
ATTR_SPOTS = "spots_key"
ATTR_TISSUE = "tissue_key"
ATTR_TABLE = "table_key"
ATTR_PSEUDO_TABLE = "pseudo_spots_table_key"
"""attrs["bitro"] entry: the table of the pseudo-spots predict laid where a sample has no spots (its
measured expression, e.g. a slide's bulk profile, stays the ``table_key``)."""
ATTR_CELLS_SHAPES = "cells_shapes_key"
ATTR_CELLS_TABLE = "cells_table_key"
ATTR_TRUE_CELLS = "true_cells_key"
ATTR_MPP = "mpp"
"""µm per pixel of the full-resolution image (the frame of the spot coordinates in ``obsm["spatial"]``)."""
ATTR_IMAGE_MPP = "image_mpp"
"""µm per pixel of level 0 of the image ``image_key`` names (differs from ``mpp`` for a Visium hires image)."""
ATTR_COORDINATE_SYSTEM = "coordinate_system"
"""The coordinate system every reader maps its elements to; its unit is the µm."""
ATTR_TECHNOLOGY = "technology"
ATTR_CELLS_IMAGE = "cells_image_key"
"""The image the cells layer was segmented from."""
ATTR_SPOT_ASSIGNMENT = "spot_assignment_key"
ATTR_GRAPH = "cell_graph_key"
ATTR_FEATURES = "features_key"
ATTR_FEATURES_MPP = "features_mpp"
"""µm per pixel the cell features were measured at (the image's, or a model's with ``cell_features(mpp=)``)."""
ATTR_SEGMENTATION_MPP = "segmentation_mpp"
ATTR_SEGMENTATION = "segmentation"
ATTR_CELLS_ID = "cells_id"
"""attrs["bitro"] entry: a random id of the current cells layer, recorded by the cell predictions made from it."""
"""attrs["bitro"] entry: the method and options that made the cells layer (what a model trained on it records)."""
"""µm per pixel of the image level the segmentation read (its network may resample further)."""
ATTR_PRED_SPOTS = "pred_spots_key"
"""The table of spot (or slide) predictions the last :func:`bitro.tl.predict` wrote."""
ATTR_PRED_CELLS = "pred_cells_key"
"""The table of cell predictions the last :func:`bitro.tl.predict` wrote."""
ATTR_SAMPLE_ID = "sample_id"
ATTR_VERSION = "version"

# --- element names -------------------------------------------------------------------------------
TABLE_KEY = "table"
"""Spots x genes table (ST) or 1 x genes table annotating the tissue polygon (bulk)."""

CELLS_TABLE_KEY = "bitro_cells"
"""Cells table written by segmentation, annotating the ``{method}_boundaries`` shapes."""

TRUE_CELLS_TABLE_KEY = "true_cells"
"""Ground-truth cells table of the synthetic tissue (cells x genes of true expression)."""

FULL_IMAGE_SUFFIX = "_full_image"
"""Spot data: ``{sample_id}_full_image``, as spatialdata-io names the full-resolution Visium image."""

HIRES_IMAGE_SUFFIX = "_hires_image"
HE_IMAGE_SUFFIX = "_he_image"
"""Whole slides: ``{sample_id}_he_image``."""

TISSUE_SUFFIX = "_tissue"
"""Whole slides: ``{sample_id}_tissue`` tissue polygon."""

TRUE_CELLS_SUFFIX = "_true_cells"
"""Synthetic tissue: ``{sample_id}_true_cells`` ground-truth nucleus polygons."""

BOUNDARIES_SUFFIX = "_boundaries"
"""Segmentation output: ``{method}_boundaries``, e.g. ``cellpose_boundaries`` (as sopa names it)."""

# --- table columns -------------------------------------------------------------------------------
REGION_KEY = "region"
SPOT_ID_KEY = "spot_id"
CELL_ID_KEY = "cell_id"
TISSUE_ID_KEY = "tissue_id"
SAMPLE_ID_KEY = "sample_id"
PATIENT_ID_KEY = "patient_id"
SLIDE_KEY = "slide_id"
"""Cohort ``obs`` column naming the slide's ``sample_id`` (the prefix of its elements)."""

SLIDE_PATH_KEY = "slide_path"
COHORT_UNS_KEY = "bitro_cohort"
"""Cohort ``uns``: samples without a slide and slides without expression, as ``bt.io.cohort`` found them."""

CELL_TYPE_KEY = "cell_type"
IN_TISSUE_KEY = "in_tissue"
ARRAY_ROW_KEY = "array_row"
ARRAY_COL_KEY = "array_col"
CENTROID_X_PX, CENTROID_Y_PX = "x_px", "y_px"
CENTROID_X_UM, CENTROID_Y_UM = "x_um", "y_um"
AREA_UM2_KEY = "area_um2"
N_CELLS_KEY = "n_cells"

# --- layers / obsm / varm / uns ------------------------------------------------------------------
TRUE_RATE_LAYER = "true_rate"
"""Expected counts (Poisson rate) of each spot or sample: the summed true expression of its cells."""

TYPE_FRACTION_KEY = "true_type_fraction"
"""``obsm``: fraction of each cell type among the cells of a spot or slide (columns: ``uns`` cell types)."""

TYPE_PROGRAM_KEY = "type_program"
"""``varm``: expression rate of each gene per cell type (genes x cell types)."""

MARKER_OF_KEY = "marker_of"
"""``var``: the cell type a gene marks, or ``"none"``."""

TOY_UNS_KEY = "toy"
"""``uns``: parameters of the synthetic tissue (cell types, seeds, pixel size)."""

SPOT_DISTANCE_KEY = "spot_distance_um"
ASSIGN_UNS_KEY = "bitro_assign"
GRAPH_KEY = "bitro_graph"
"""Cell graph: ``obsp[f"{GRAPH_KEY}_connectivities"]`` and ``obsp[f"{GRAPH_KEY}_distances"]`` (µm)."""
FEATURES_KEY = "bitro_features"
PRED_KEY = "bitro_pred"
"""Prefix of the prediction tables: ``bitro_pred_spots`` (or ``bitro_pred_slide``) and ``bitro_pred_cells``."""
PRED_LEVELS = {"spot": "spots", "bulk": "slide"}
"""Suffix of the bag-level prediction table of each label kind (the cell-level one is ``_cells``)."""
STD_LAYER = "std"
"""Layer of the prediction tables: the standard deviation of each prediction (its uncertainty)."""
TARGET_KEY = "bitro_target"
PEARSON_KEY = "bitro_pearson"
EVAL_KEY = "bitro_eval"

# --- bulk RNA-seq --------------------------------------------------------------------------------
GENE_ID_KEY = "gene_id"
"""``var``: the gene id as the file spells it (versioned Ensembl id for GDC / HTSeq files)."""
GENE_NAME_KEY = "gene_name"
GENE_TYPE_KEY = "gene_type"
COUNTS_LAYER = "counts"
TPM_LAYER = "tpm"
FILE_KEY = "file"
"""``obs``: the name of the file a sample was read from."""
GENE_MODEL_KEY = "gene_model"
"""``obs``: the gene model a GDC file names in its ``# gene-model:`` line (e.g. ``GENCODE v36``)."""
