"""Shared fixtures: synthetic data built once per session, deep-copied for each test that may change it."""

from __future__ import annotations

import copy
import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on two cores: one BLAS / torch thread each (and in the
    # processes they start) instead of two each fighting for the same cores
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

LONGEST_FIRST = ("test_docs_build_without_warnings",)
"""Tests that take minutes: started first, so that the other worker runs the rest beside them."""


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.originalname not in LONGEST_FIRST)  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _torch_threads_unchanged(request):
    """A test that changes torch's thread count fails (it would change the numerics of every later test)."""
    import sys

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and before is not None and torch.get_num_threads() != before:
        after = torch.get_num_threads()
        torch.set_num_threads(before)
        pytest.fail(f"{request.node.nodeid} changed torch's threads from {before} to {after}", pytrace=False)


@pytest.fixture
def training_noise():
    """torch on one thread during the test; the value is how far two identical training runs may differ.

    Comparisons of two CPU training runs (weights, or predictions) use it as an absolute tolerance.
    Measured: on two threads with the cores shared, two identical 2-epoch ``fit`` calls in one process
    differed by up to 5e-5 in a weight (equal when idle); on one thread in a pytest-xdist worker by 1e-9
    (MKL's kernels are not bit-reproducible between calls). The same three slides in another order
    moved a weight by 3.5e-3.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield 1e-6
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def _toy_st_session():
    import bitro as bt

    return bt.datasets.toy_st(n_spots=25, n_genes=60, seed=3)


@pytest.fixture
def toy_st(_toy_st_session):
    """A small synthetic ST section (25 spots, 60 genes); each test gets its own copy."""
    return copy.deepcopy(_toy_st_session)


@pytest.fixture(scope="session")
def toy_cohort():
    """A small synthetic bulk cohort (4 slides, 2 patients); read-only, shared by the session."""
    import bitro as bt

    return bt.datasets.toy_bulk_cohort(n_slides=4, n_genes=60, cells_per_slide=600, seed=5)


@pytest.fixture(scope="session")
def _toy_cohort_cells(toy_cohort):
    """The toy cohort's slides with watershed cells and morphology features (the toy nuclei are flat discs)."""
    import bitro as bt

    slides = copy.deepcopy(toy_cohort[0])
    for s in slides:
        bt.pp.segment_cells(s, method="watershed", progress=False)
        bt.pp.cell_features(s)
    return slides


@pytest.fixture
def toy_slides(_toy_cohort_cells):
    """Copies of the four toy cohort slides with their cells and features (for training and transfer tests)."""
    return copy.deepcopy(_toy_cohort_cells)


@pytest.fixture
def bitro_log(caplog):
    """``caplog`` that also sees the ``bitro`` logger (which does not propagate to the root logger)."""
    import logging

    logger = logging.getLogger("bitro")
    logger.addHandler(caplog.handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old)


@pytest.fixture
def toy_cells(toy_st):
    """The toy section with its TRUE nuclei written as the cells layer (``true_boundaries`` + ``bitro_cells``).

    Lets steps after segmentation be tested on exact cells.
    """
    from bitro import _constants as K
    from bitro.pp._cells import write_cells

    info = toy_st.attrs[K.ATTRS_KEY]
    write_cells(toy_st, toy_st[info[K.ATTR_TRUE_CELLS]], image=info[K.ATTR_IMAGE], method="true")
    return toy_st


@pytest.fixture(scope="session")
def _toy_sections():
    """Four preprocessed toy sections toy0-toy3 (watershed cells, morphology features, assignment, graph)."""
    import bitro as bt
    from bitro.tl._preprocess import ensure_preprocessed, preprocessing_settings

    sections = [bt.datasets.toy_st(n_spots=36, n_genes=40, seed=s, sample_id=f"toy{s}") for s in range(4)]
    for s in sections:
        # the toy nuclei are flat discs, which the watershed suits (and the U-Net never saw); morphology
        # features, as the toy cohort's slides have (tests mix models and samples of both)
        settings = preprocessing_settings(
            {"segmentation": {"method": "watershed"}, "features": {"method": "morphology"}}
        )
        ensure_preprocessed(s, settings, kind="spot")
    return sections


@pytest.fixture
def toy_sections(_toy_sections):
    """Copies of the four preprocessed toy sections."""
    return copy.deepcopy(_toy_sections)


@pytest.fixture(scope="session")
def _her2st_c3():
    """HER2ST section C3 as read from tests/data (read once: decoding its 92 Mpx JPEG takes seconds)."""
    from pathlib import Path

    import bitro as bt

    return bt.datasets.her2st("C3", data_dir=Path(__file__).parent / "data" / "her2st")


@pytest.fixture
def her2st_crop(_her2st_c3):
    """``her2st_crop((x0, y0, x1, y1))``: a new SpatialData of that box (µm) of C3; the shared section is untouched."""
    from bitro.cli._her2st_predict import crop_section

    return lambda box: crop_section(_her2st_c3, box)


@pytest.fixture
def cmu_crop(tmp_path):
    """``cmu_crop(name, y, x, size)``: a crop of CMU-1 (0.499 µm/px) written as a small Aperio slide; returns its path."""
    from pathlib import Path

    import numpy as np
    import tifffile

    image = tifffile.imread(Path(__file__).parent / "data" / "wsi" / "CMU-1-Small-Region.svs")

    def crop(name: str, y: int, x: int, size: int, folder=None) -> Path:
        folder = Path(folder or tmp_path)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.svs"
        tifffile.imwrite(
            path,
            np.ascontiguousarray(image[y : y + size, x : x + size]),
            description="Aperio Image Library v12 |AppMag = 20|MPP = 0.499",
            photometric="rgb",
        )
        return path

    return crop


@pytest.fixture
def her2st_crop_files(tmp_path):
    """A box of HER2ST C3 as legacy ST files (counts, spots, JPEG): pixels 2900-4000 x 2600-3700 (0.76 mm, ~15 spots)."""
    import warnings
    from pathlib import Path

    import numpy as np
    import pandas as pd
    from PIL import Image

    src = Path(__file__).parent / "data" / "her2st"
    x0, y0, size = 2900, 2600, 1100
    spots = pd.read_csv(src / "ST-spotfiles" / "C3_selection.tsv", sep="\t")
    inside = spots["pixel_x"].between(x0, x0 + size) & spots["pixel_y"].between(y0, y0 + size)
    spots = spots[inside].assign(pixel_x=lambda d: d["pixel_x"] - x0, pixel_y=lambda d: d["pixel_y"] - y0)
    counts = pd.read_csv(src / "ST-cnts" / "C3.tsv.gz", sep="\t", index_col=0)
    ids = [f"{x}x{y}" for x, y in zip(spots["x"], spots["y"], strict=True)]
    has_counts = np.array([i in counts.index for i in ids], dtype=bool)
    spots = spots[has_counts & (spots["selected"].to_numpy() == 1)]  # selected spots with counts
    counts = counts.loc[counts.index.isin(ids)]
    out = tmp_path / "her2st_crop"  # laid out like the her2st repository's data/ (bt.datasets.her2st reads it)
    files = [out / "ST-cnts" / "C3.tsv.gz", out / "ST-spotfiles" / "C3_selection.tsv", out / "ST-imgs" / "C3_HE.jpg"]
    for f in files:
        f.parent.mkdir(parents=True)
    counts.to_csv(files[0], sep="\t")
    spots.to_csv(files[1], sep="\t", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # a 92 Mpx scan, our own test data
        with Image.open(next((src / "ST-imgs").glob("*.jpg"))) as image:
            image.crop((x0, y0, x0 + size, y0 + size)).save(files[2], quality=95)
    return files


@pytest.fixture
def her2st_as_spaceranger(her2st_crop_files, tmp_path):
    """The HER2ST C3 box in Space Ranger 3's ``outs`` layout, with its full-resolution H&E beside it.

    Real counts, spot positions and H&E (legacy ST: 100 µm spots on a 200 µm square grid, not Visium's
    hexagonal 100 µm one), written as ``filtered_feature_bc_matrix.h5`` + ``spatial/`` so that the
    Visium path can be run on a full-resolution image; tests/data has no Visium run with one.
    Returns ``(outs folder, full-resolution image, µm per pixel)``.
    """
    import json

    import h5py
    import numpy as np
    import pandas as pd
    import tifffile
    from PIL import Image

    counts_file, spots_file, image_file = her2st_crop_files
    counts = pd.read_csv(counts_file, sep="\t", index_col=0)
    spots = pd.read_csv(spots_file, sep="\t")
    spots.index = [f"{x}x{y}" for x, y in zip(spots["x"], spots["y"], strict=True)]
    spots = spots.loc[counts.index]
    barcodes = [f"ST{i}-1" for i in range(len(spots))]
    neighbours = spots.sort_values(["y", "x"])
    pitch = np.nanmedian(np.diff(neighbours["pixel_x"])[np.diff(neighbours["x"]) == 1])  # px per 200 µm
    mpp = 200.0 / pitch
    outs = tmp_path / "spaceranger_outs"
    (outs / "spatial").mkdir(parents=True)
    matrix = counts.to_numpy().T.astype(np.int32)  # genes x spots, as 10x stores it (CSC of spots x genes)
    nz = [np.flatnonzero(matrix[:, j]) for j in range(matrix.shape[1])]
    with h5py.File(outs / "filtered_feature_bc_matrix.h5", "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array(barcodes, dtype="S")
        m["data"] = np.concatenate([matrix[idx, j] for j, idx in enumerate(nz)]).astype(np.int32)
        m["indices"] = np.concatenate(nz).astype(np.int64)
        m["indptr"] = np.cumsum([0] + [len(idx) for idx in nz]).astype(np.int64)
        m["shape"] = np.array(matrix.shape, dtype=np.int32)
        feats = m.create_group("features")
        genes = np.array(counts.columns, dtype="S")
        feats["id"], feats["name"] = genes, genes
        feats["feature_type"] = np.array([b"Gene Expression"] * len(genes))
        feats["genome"] = np.array([b"GRCh38"] * len(genes))
        feats["_all_tag_keys"] = np.array([b"genome"])
        f.attrs["library_ids"] = np.array([b"C3"])
    pd.DataFrame({
        "barcode": barcodes, "in_tissue": 1, "array_row": spots["y"].to_numpy(), "array_col": spots["x"].to_numpy(),
        "pxl_row_in_fullres": spots["pixel_y"].to_numpy(), "pxl_col_in_fullres": spots["pixel_x"].to_numpy(),
    }).to_csv(outs / "spatial" / "tissue_positions.csv", index=False)  # fmt: skip
    with Image.open(image_file) as image:
        rgb = np.asarray(image.convert("RGB"))
        hires = image.resize((rgb.shape[1] // 4, rgb.shape[0] // 4))
        hires.save(outs / "spatial" / "tissue_hires_image.png")
        image.resize((rgb.shape[1] // 16, rgb.shape[0] // 16)).save(outs / "spatial" / "tissue_lowres_image.png")
    scalefactors = {"spot_diameter_fullres": 100.0 / mpp, "fiducial_diameter_fullres": 150.0 / mpp,
                    "tissue_hires_scalef": 0.25, "tissue_lowres_scalef": 1 / 16}  # fmt: skip
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors))
    fullres = tmp_path / "C3_fullres.tif"
    tifffile.imwrite(fullres, rgb, photometric="rgb")
    return outs, fullres, mpp
