"""``bt.io.hest`` on a sample folder built here in the real HEST-1k layout, as its authors publish it.

Every fact of the layout below comes from the HEST-Library (github.com/mahmoodlab/HEST, read at commit
``afd42c3``), the HEST-1k dataset card (https://huggingface.co/datasets/MahmoodLab/hest), CellViT
(github.com/TIO-IKIM/CellViT) and libvips (github.com/libvips/libvips). Only the values are synthetic.

Folders and file names of one downloaded sample ``{id}``
    ``tutorials/1-Downloading-HEST-1k.ipynb`` ("Inspect freshly downloaded samples", the same list on the
    dataset card): ``wsis/`` (pyramidal generic TIFF, BigTIFF above 4.1 GB), ``st/`` (scanpy ``.h5ad``),
    ``metadata/``, ``spatial_plots/``, ``thumbnails/``, ``tissue_seg/``, ``pixel_size_vis/``, ``patches/``
    (256 x 256 patches at 0.5 µm/px in ``.h5``), ``patches_vis/``, ``transcripts/`` and ``xenium_seg/``
    (Xenium only), ``cellvit_seg/``. The names are those of the release copy,
    ``src/hest/utils.py::_process_row``: ``wsis/{id}.tif``, ``st/{id}.h5ad``, ``metadata/{id}.json``,
    ``thumbnails/{id}_downscaled_fullres.jpeg``, ``spatial_plots/{id}_spatial_plots.png``,
    ``pixel_size_vis/{id}_pixel_size_vis.png``, ``patches/{id}.h5``, ``patches_vis/{id}.png``,
    ``tissue_seg/{id}_contours.geojson`` and ``{id}_vis.jpg``, ``cellvit_seg/{id}_cellvit_seg.parquet`` and
    ``cellvit_seg/{id}_cellvit_seg.geojson.zip``; HEST finds them the same way in
    ``src/hest/HESTData.py::_read_st`` (parquet first, else ``{id}_cellvit_seg.geojson``).
``cellvit_seg/``
    The zip holds one member, ``{id}_cellvit_seg.geojson`` (``src/hest/readers.py::_process_cellvit``); the
    tutorial's ``download_hest`` unzips every ``cellvit_seg/*.zip`` in place, so a download made as documented
    holds the parquet, the zip and the GeoJSON. The GeoJSON is CellViT's ``cells.geojson`` (HEST runs CellViT
    with ``--geojson``, ``src/hest/segmentation/cell_segmenters.py``): a bare list, not a FeatureCollection,
    of one ``MultiPolygon`` feature per class, each polygon one closed ring, properties
    ``{"objectType": "annotation", "classification": {"name", "color"}}``, classes ``Neoplastic``,
    ``Inflammatory``, ``Connective``, ``Dead``, ``Epithelial`` with fixed colours (CellViT
    ``cell_segmentation/inference/cell_detection.py``: ``convert_geojson``, ``TYPE_NUCLEI_DICT``,
    ``COLOR_DICT``; ``cell_segmentation/utils/template_geojson.py``). The parquet is that GeoJSON read by
    ``GeojsonCellReader`` (``src/hest/io/seg_readers.py``: one row per polygon, string column ``class`` =
    the classification name, ``cell_id`` = 0..n-1) and written with ``GeoDataFrame.to_parquet``
    (GeoParquet, WKB ``geometry``, no CRS) in ``_process_cellvit``; HEST reads it with ``gpd.read_parquet``.
Tissue contours
    A GeoDataFrame with a ``tissue_id`` column, polygons (with holes) in full-resolution pixels
    (``HESTData.segment_tissue`` docstring), written with ``to_file(..., driver="GeoJSON")``
    (``HESTData.save_tissue_contours``) and read with ``gpd.read_file`` (``read_HESTData``).
``st/{id}.h5ad``
    ``tutorials/2-Interacting-with-HEST-1k.ipynb``: ``obs`` ``in_tissue``, ``pxl_col_in_fullres``,
    ``pxl_row_in_fullres``, ``array_col``, ``array_row`` and QC columns (``total_counts``,
    ``n_genes_by_counts``, ``pct_counts_mito``, ...); ``var`` QC columns and ``mito``; ``uns["spatial"]["ST"]``
    with ``images/downscaled_fullres`` and ``scalefactors`` (``spot_diameter_fullres``,
    ``tissue_downscaled_fullres_scalef``: ``src/hest/utils.py::register_downscale_img``); ``obsm["spatial"]``
    the spot centres in full-resolution pixels, x (``pxl_col_in_fullres``) then y (``pxl_row_in_fullres``),
    integers for Visium (``src/hest/readers.py``: Visium ``tissue_positions`` columns). ``X`` holds the raw
    counts as ``sc.read_10x_h5`` reads the filtered feature matrix (float32 CSR; ``readers.py``).
``metadata/{id}.json``
    The columns of ``assets/HEST_v1_1_0.csv`` (``dataset_title``, ``id``, ``image_filename``, ``organ``,
    ``disease_state``, ``oncotree_code``, ``species``, ``patient``, ``st_technology``, ``inter_spot_dist``,
    ``spot_diameter``, ``spots_under_tissue``, ``preservation_method``, ``nb_genes``,
    ``pixel_size_um_embedded``, ``pixel_size_um_estimated``, ``magnification``, ``fullres_px_width``,
    ``fullres_px_height``, ``tissue``, ``subseries``, ``hest_version_added``, ...) and what the readers and
    ``HESTData.save`` add (``fullres_width``/``fullres_height``, ``spot_estimate_dist``, ``adata_nb_col``).
    In that table ``pixel_size_um_embedded`` and ``patient`` are empty for many samples, and the embedded
    size can be far from the estimated one (TENX95: 1 vs 0.2125 µm/px); HEST uses
    ``pixel_size_um_estimated`` as the slide's pixel size (``read_HESTData``). Python's ``json`` writes a
    missing float as ``NaN``.
``wsis/{id}.tif``
    ``src/hest/utils.py::tiff_save``: pyvips ``tiffsave(pyramid=True, tile=True, 256 x 256,
    compression="lzw", resunit=cm, xres=1 / (pixel_size * 1e-4))`` with the estimated pixel size
    (``HESTData.save``); libvips appends each pyramid layer, halved (integer division) down to one tile, as
    a further page marked reduced-resolution (``libvips/foreign/vips2tiff.c``).
``patches/{id}.h5``
    Keys ``img``, ``coords`` and ``barcode`` (``HESTData.dump_patches``).

Not built: Xenium's ``transcripts/`` and ``xenium_seg/`` (the reader does not read them) and the deprecated
tissue-contour GeoJSON with a ``hole`` property (``read_HESTData`` only warns about it).
"""

from __future__ import annotations

import json
import logging
import uuid
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import geopandas as gpd
import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from scipy import sparse
from shapely.geometry import Polygon
from spatialdata.transformations import get_transformation

import bitro as bt
from bitro import _constants as K
from bitro.io._hest import CELLVIT_KEY

SID = "TENX999"  # synthetic; real ids look like TENX95, NCBI783, MEND139
MPP = 0.9  # pixel_size_um_estimated, also embedded in the TIFF as HEST's tiff_save does
MPP_EMBEDDED = 0.5  # the original slide's, as in the metadata; deliberately different
SPOT_UM, PITCH_UM = 55.0, 100.0  # Visium
HEIGHT, WIDTH = 900, 1200
CELLVIT_CLASSES = {  # CellViT TYPE_NUCLEI_DICT and COLOR_DICT
    1: ("Neoplastic", [255, 0, 0]),
    2: ("Inflammatory", [34, 221, 77]),
    3: ("Connective", [35, 92, 236]),
    4: ("Dead", [254, 255, 0]),
    5: ("Epithelial", [255, 159, 68]),
}
GENES = [
    "MT-CO1", "MT-ND1", "MT-ATP6", "ACTB", "GAPDH", "EPCAM", "KRT8", "KRT18", "ERBB2", "ESR1",
    "COL1A1", "COL3A1", "DCN", "LUM", "PTPRC", "CD3E", "CD74", "MS4A1", "LYZ", "CD68",
    "VIM", "MKI67", "TOP2A", "SCGB2A2", "MGP", "SPARC", "FN1", "IGKC", "JCHAIN", "TFF1",
]  # fmt: skip


# --- the sample, in the HEST-1k layout ------------------------------------------------------------------


@dataclass
class HestSample:
    """One HEST-1k sample written under ``root`` and the values it was built from."""

    root: Path
    sample_id: str
    meta: dict
    counts: sparse.csr_matrix
    barcodes: list[str]
    xy: np.ndarray  # spot centres, full-resolution pixels, x then y
    image: np.ndarray  # level 0, (y, x, rgb)
    levels: list[tuple[int, int]]  # (height, width) of each pyramid page
    nuclei: gpd.GeoDataFrame  # geometry, class, cell_id: as HEST's parquet
    tissue: gpd.GeoDataFrame  # geometry, tissue_id
    paths: dict[str, Path] = field(default_factory=dict)

    def write_meta(self, **changes) -> None:
        """Rewrite ``metadata/{id}.json`` with ``changes`` (``...`` drops the key)."""
        self.meta = {k: v for k, v in {**self.meta, **changes}.items() if v is not ...}
        self.paths["metadata"].write_text(json.dumps(self.meta, indent=4))  # NaN as Python's json writes it


def write_hest_sample(root: Path, sample_id: str = SID, *, seed: int = 0, bigtiff: bool = False) -> HestSample:
    """Write one Visium sample of HEST-1k under ``root`` (a fraction of a second)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    p = {
        "st": root / "st" / f"{sample_id}.h5ad",
        "wsi": root / "wsis" / f"{sample_id}.tif",
        "metadata": root / "metadata" / f"{sample_id}.json",
        "cellvit_parquet": root / "cellvit_seg" / f"{sample_id}_cellvit_seg.parquet",
        "cellvit_zip": root / "cellvit_seg" / f"{sample_id}_cellvit_seg.geojson.zip",
        "cellvit_geojson": root / "cellvit_seg" / f"{sample_id}_cellvit_seg.geojson",
        "contours": root / "tissue_seg" / f"{sample_id}_contours.geojson",
        "tissue_vis": root / "tissue_seg" / f"{sample_id}_vis.jpg",
        "thumbnail": root / "thumbnails" / f"{sample_id}_downscaled_fullres.jpeg",
        "spatial_plot": root / "spatial_plots" / f"{sample_id}_spatial_plots.png",
        "pixel_size_vis": root / "pixel_size_vis" / f"{sample_id}_pixel_size_vis.png",
        "patches": root / "patches" / f"{sample_id}.h5",
        "patches_vis": root / "patches_vis" / f"{sample_id}.png",
    }
    for path in p.values():
        path.parent.mkdir(parents=True, exist_ok=True)

    # Visium spots: orange-crate packing, 100 µm pitch, slightly rotated, integer full-resolution pixels
    array_row, col = np.divmod(np.arange(6 * 8), 8)
    array_col = 2 * col + array_row % 2
    pitch = PITCH_UM / MPP
    local = np.c_[array_col * pitch / 2, array_row * pitch * np.sqrt(3) / 2]
    local -= local.mean(axis=0)
    angle = np.deg2rad(0.7)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    xy = np.rint(local @ rot.T + [WIDTH / 2, HEIGHT / 2]).astype(np.int64)

    # tissue: an ellipse around the spots with a hole above them, and a small separate piece
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    cx, cy, a, b = WIDTH / 2, HEIGHT / 2, 0.45 * WIDTH, 0.45 * HEIGHT
    hole_c, hole_r = (cx, cy - 320), 40
    shell = np.c_[cx + a * np.cos(t), cy + b * np.sin(t)].astype(np.int32)  # mask_to_gdf: int32 contours
    hole = np.c_[hole_c[0] + hole_r * np.cos(t), hole_c[1] + hole_r * np.sin(t)].astype(np.int32)[::-1]
    islet = np.array([[40, 40], [120, 45], [115, 120], [45, 115]], dtype=np.int32)
    tissue = gpd.GeoDataFrame({"tissue_id": [0, 1]}, geometry=[Polygon(shell, [hole]), Polygon(islet)])

    # nuclei: small octagons inside the tissue, CellViT classes (all five present)
    centres = []
    while len(centres) < 60:
        x, y = rng.uniform([cx - a, cy - b], [cx + a, cy + b])
        if ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 < 0.9 and np.hypot(x - hole_c[0], y - hole_c[1]) > hole_r + 10:
            centres.append((x, y))
    centres = np.array(centres)
    radii = rng.uniform(4, 7, len(centres))
    types = np.r_[np.arange(1, 6), rng.integers(1, 6, len(centres) - 5)]
    octagon = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    rings = [
        np.round(np.c_[x + r * np.cos(octagon), y + 0.8 * r * np.sin(octagon)], 1).tolist()
        for (x, y), r in zip(centres, radii, strict=True)
    ]

    # the H&E image: light background, pink tissue, purple nuclei
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    mask = (((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 < 1) & (
        (xx - hole_c[0]) ** 2 + (yy - hole_c[1]) ** 2 >= hole_r**2
    )
    mask[40:120, 40:120] = True
    image = np.full((HEIGHT, WIDTH, 3), 242, dtype=np.uint8)
    image[mask] = (229, 168, 201)
    for (x, y), r in zip(centres, radii, strict=True):
        y0, y1, x0, x1 = int(y - r), int(y + r) + 1, int(x - r), int(x + r) + 1
        disc = (xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2 <= r**2
        image[y0:y1, x0:x1][disc] = (92, 48, 128)
    image[HEIGHT // 3, :] = (200, 120, 170)  # a line to tell x from y

    # wsis/: pyramidal generic TIFF as pyvips writes it (main-chain pages, reduced-resolution layers)
    resolution = 1 / (MPP * 1e-4)
    levels, level = [], image
    with tifffile.TiffWriter(p["wsi"], bigtiff=bigtiff) as tif:
        while True:
            tif.write(
                level,
                tile=(256, 256),
                photometric="rgb",
                compression="lzw",
                resolution=(resolution, resolution),
                resolutionunit="CENTIMETER",
                subfiletype=1 if levels else 0,
                metadata=None,
            )
            levels.append(level.shape[:2])
            if level.shape[0] <= 256 and level.shape[1] <= 256:
                break
            h, w = level.shape[0] // 2, level.shape[1] // 2
            level = level[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)

    # st/: counts x genes with HEST's obs/var/uns/obsm
    n, n_genes = len(xy), len(GENES)
    rates = rng.gamma(2.0, 3.0, n_genes)
    counts = sparse.csr_matrix(rng.poisson(rates, size=(n, n_genes)).astype(np.float32))
    barcodes = ["".join(rng.choice(list("ACGT"), 16)) + "-1" for _ in range(n)]
    dense = counts.toarray()
    mito = np.array([g.startswith("MT-") for g in GENES])
    total = dense.sum(axis=1)
    obs = pd.DataFrame(
        {
            "in_tissue": np.ones(n, dtype=np.int64),
            "array_row": array_row,
            "array_col": array_col,
            "pxl_col_in_fullres": xy[:, 0],
            "pxl_row_in_fullres": xy[:, 1],
            "n_genes_by_counts": (dense > 0).sum(axis=1),
            "total_counts": total,
            "log1p_total_counts": np.log1p(total),
            "total_counts_mito": dense[:, mito].sum(axis=1),
            "pct_counts_mito": 100 * dense[:, mito].sum(axis=1) / np.maximum(total, 1),
        },
        index=pd.Index(barcodes),
    )
    var = pd.DataFrame(
        {
            "gene_ids": [f"ENSG{i:011d}" for i in range(1, n_genes + 1)],
            "feature_types": "Gene Expression",
            "genome": "GRCh38",
            "mito": mito,
            "n_cells_by_counts": (dense > 0).sum(axis=0),
            "mean_counts": dense.mean(axis=0),
            "total_counts": dense.sum(axis=0),
        },
        index=pd.Index(GENES),
    )
    scale = 1000 / max(HEIGHT, WIDTH)
    thumb = Image.fromarray(image).resize((round(WIDTH * scale), round(HEIGHT * scale)))
    adata = ad.AnnData(X=counts, obs=obs, var=var, obsm={"spatial": xy.copy()})
    adata.uns["spatial"] = {
        "ST": {
            "images": {"downscaled_fullres": np.asarray(thumb)},
            "scalefactors": {"spot_diameter_fullres": SPOT_UM / MPP, "tissue_downscaled_fullres_scalef": scale},
        }
    }
    adata.write_h5ad(p["st"])

    # metadata/
    meta = {
        "dataset_title": "Synthetic Visium breast section (bitro test fixture)",
        "id": sample_id,
        "image_filename": f"{sample_id}.tif",
        "organ": "Breast",
        "disease_state": "Cancer",
        "oncotree_code": "IDC",
        "species": "Homo sapiens",
        "patient": "patient 2",
        "st_technology": "Visium",
        "data_publication_date": "1/22/23",
        "license": "CC BY 4.0",
        "study_link": None,
        "download_page_link1": None,
        "inter_spot_dist": PITCH_UM,
        "spot_diameter": SPOT_UM,
        "spots_under_tissue": n,
        "preservation_method": "FFPE",
        "nb_genes": n_genes,
        "treatment_comment": None,
        "pixel_size_um_embedded": MPP_EMBEDDED,
        "pixel_size_um_estimated": MPP,
        "magnification": "10x",
        "fullres_px_width": WIDTH,
        "fullres_px_height": HEIGHT,
        "tissue": "Breast",
        "disease_comment": None,
        "subseries": "Tissue sample 1",
        "hest_version_added": "v1_0_0",
        "fullres_width": WIDTH,
        "fullres_height": HEIGHT,
        "spot_estimate_dist": int(round(pitch)),
        "adata_nb_col": n_genes,
    }
    p["metadata"].write_text(json.dumps(meta, indent=4))

    # cellvit_seg/: CellViT's list of per-class MultiPolygon features, its parquet, its zip, and the unzipped copy
    features = []
    for cell_type in sorted(set(types.tolist())):
        name, color = CELLVIT_CLASSES[cell_type]
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.UUID(int=int(rng.integers(2**63)))),
                "geometry": {
                    "type": "MultiPolygon",
                    "coordinates": [[ring + ring[:1]] for ring, t in zip(rings, types, strict=True) if t == cell_type],
                },
                "properties": {"objectType": "annotation", "classification": {"name": name, "color": color}},
            }
        )
    text = json.dumps(features, indent=2)
    p["cellvit_geojson"].write_text(text)
    with zipfile.ZipFile(p["cellvit_zip"], "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{sample_id}_cellvit_seg.geojson", text)
    parts = []  # hest.io.seg_readers.GeojsonCellReader
    for feature in features:
        polygons = [Polygon(c[0]) for c in feature["geometry"]["coordinates"]]
        part = gpd.GeoDataFrame(geometry=polygons)
        part["class"] = feature["properties"]["classification"]["name"]
        parts.append(part)
    nuclei = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True))
    nuclei["cell_id"] = np.arange(len(nuclei))
    nuclei.to_parquet(p["cellvit_parquet"])

    # tissue_seg/
    with warnings.catch_warnings():  # pixel coordinates: no CRS, as HEST writes them
        warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)
        tissue.to_file(p["contours"], driver="GeoJSON")

    # the rest of a download, which the reader does not open
    small = thumb.resize((thumb.width // 4, thumb.height // 4))
    for key in ("tissue_vis", "thumbnail", "spatial_plot", "pixel_size_vis", "patches_vis"):
        small.save(p[key])
    with h5py.File(p["patches"], "w") as f:
        f["img"] = np.zeros((3, 224, 224, 3), dtype=np.uint8)
        f["coords"] = xy[:3] - 112
        f["barcode"] = np.array(barcodes[:3], dtype="S")

    return HestSample(
        root=root,
        sample_id=sample_id,
        meta=meta,
        counts=counts,
        barcodes=barcodes,
        xy=xy.astype(float),
        image=image,
        levels=levels,
        nuclei=nuclei,
        tissue=tissue,
        paths=p,
    )


@pytest.fixture
def sample(tmp_path) -> HestSample:
    return write_hest_sample(tmp_path / "hest_data")


def _classes(gdf) -> list[str]:
    return gdf[K.CELL_TYPE_KEY].astype(str).tolist()


# --- reading ---------------------------------------------------------------------------------------------


def test_layout_is_as_published(sample):
    """The fixture itself: files where HEST's own loader looks, in the formats it reads."""
    root, sid = sample.root, sample.sample_id
    assert {p.name for p in root.iterdir()} == {
        "st", "wsis", "metadata", "cellvit_seg", "tissue_seg", "thumbnails",
        "spatial_plots", "pixel_size_vis", "patches", "patches_vis",
    }  # fmt: skip
    parquet = gpd.read_parquet(sample.paths["cellvit_parquet"])  # GDFParquetCellReader
    assert list(parquet.columns) == ["geometry", "class", "cell_id"]
    assert parquet.crs is None
    assert set(parquet["class"]) == {name for name, _ in CELLVIT_CLASSES.values()}
    with zipfile.ZipFile(sample.paths["cellvit_zip"]) as zf:
        assert zf.namelist() == [f"{sid}_cellvit_seg.geojson"]
    contours = gpd.read_file(sample.paths["contours"])  # read_HESTData
    assert list(contours["tissue_id"]) == [0, 1]
    with tifffile.TiffFile(sample.paths["wsi"]) as tif:
        assert [page.shape[:2] for page in tif.pages] == sample.levels
        assert [int(page.subfiletype) for page in tif.pages] == [0] + [1] * (len(sample.levels) - 1)
        assert tif.pages[0].is_tiled
        assert tif.pages[0].compression == tifffile.COMPRESSION.LZW
    h5 = ad.read_h5ad(sample.paths["st"])
    assert np.array_equal(h5.obsm["spatial"], h5.obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy())


def test_reads_sample(sample):
    sid = sample.sample_id
    sdata = bt.io.hest(sample.root, sid)
    info = sdata.attrs[K.ATTRS_KEY]
    assert info[K.ATTR_MPP] == MPP  # pixel_size_um_estimated, not pixel_size_um_embedded
    assert info[K.ATTR_COORDINATE_SYSTEM] == sid
    assert set(sdata.coordinate_systems) == {sid}
    assert info[K.PATIENT_ID_KEY] == "patient 2"
    assert info[K.ATTR_TECHNOLOGY] == "Visium"

    # counts and spots exactly as in the h5ad, uns['spatial'] (HEST's thumbnail) dropped
    table = sdata[K.TABLE_KEY]
    h5 = ad.read_h5ad(sample.paths["st"])
    assert table.n_obs == h5.n_obs == 48
    assert list(table.obs_names) == list(h5.obs_names) == sample.barcodes
    assert list(table.var_names) == GENES
    assert np.array_equal(table.X.toarray(), h5.X.toarray())
    assert table.X.dtype == np.float32
    assert table.obs["pxl_col_in_fullres"].tolist() == h5.obs["pxl_col_in_fullres"].tolist()
    assert "spatial" not in table.uns
    spots = sdata[sid]
    assert np.array_equal(np.c_[spots.geometry.x, spots.geometry.y], sample.xy)
    assert np.allclose(spots["radius"], SPOT_UM / 2 / MPP)
    assert (spots.geometry.x.between(0, WIDTH - 1) & spots.geometry.y.between(0, HEIGHT - 1)).all()
    assert get_transformation(spots, to_coordinate_system=sid).scale.tolist() == [MPP, MPP]

    # the image: every pyramid page as a level, pixels untouched, x not swapped with y
    image = sdata[f"{sid}_full_image"]
    assert [image[f"scale{i}"]["image"].shape[1:] for i in range(len(image))] == sample.levels
    level0 = image["scale0"]["image"].data
    assert np.array_equal(level0[:, 250:350, 400:700].compute(), np.moveaxis(sample.image[250:350, 400:700], -1, 0))
    assert np.array_equal(level0[:, HEIGHT // 3, :].compute(), np.moveaxis(sample.image[HEIGHT // 3], -1, 0))

    # CellViT nuclei from the parquet, one row per polygon, with their class
    assert info[K.ATTR_CELLS_SHAPES] == CELLVIT_KEY
    nuclei = sdata[CELLVIT_KEY]
    assert len(nuclei) == len(sample.nuclei) == 60
    assert nuclei.geometry.geom_equals_exact(sample.nuclei.geometry, tolerance=1e-9).all()
    assert _classes(nuclei) == sample.nuclei["class"].tolist()
    assert get_transformation(nuclei, to_coordinate_system=sid).scale.tolist() == [MPP, MPP]

    # tissue contours: both pieces, the hole kept
    assert info[K.ATTR_TISSUE] == f"{sid}{K.TISSUE_SUFFIX}"
    outline = sdata[f"{sid}{K.TISSUE_SUFFIX}"].geometry.iloc[0]
    assert outline.equals(sample.tissue.union_all())
    assert outline.geom_type == "MultiPolygon"
    assert sorted(len(piece.interiors) for piece in outline.geoms) == [0, 1]
    assert outline.contains(spots.geometry).all()


def test_cellvit_geojson_without_parquet(sample):
    """A download without the parquet: the unzipped CellViT GeoJSON gives the same nuclei."""
    sample.paths["cellvit_parquet"].unlink()
    sample.paths["cellvit_zip"].unlink()
    nuclei = bt.io.hest(sample.root, sample.sample_id)[CELLVIT_KEY]
    assert nuclei.geometry.geom_equals_exact(sample.nuclei.geometry, tolerance=1e-9).all()
    assert _classes(nuclei) == sample.nuclei["class"].tolist()


def test_cellvit_zip_only(sample):
    """``{id}_cellvit_seg.geojson.zip`` as shipped, neither unzipped nor with the parquet."""
    sample.paths["cellvit_parquet"].unlink()
    sample.paths["cellvit_geojson"].unlink()
    sdata = bt.io.hest(sample.root, sample.sample_id)
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_CELLS_SHAPES] == CELLVIT_KEY
    nuclei = sdata[CELLVIT_KEY]
    assert nuclei.geometry.geom_equals_exact(sample.nuclei.geometry, tolerance=1e-9).all()
    assert _classes(nuclei) == sample.nuclei["class"].tolist()


def test_cellvit_zip_unreadable(sample):
    """A zip without the GeoJSON, or not a zip at all, is refused naming it (not skipped as if absent)."""
    sample.paths["cellvit_parquet"].unlink()
    sample.paths["cellvit_geojson"].unlink()
    with zipfile.ZipFile(sample.paths["cellvit_zip"], "w") as zf:
        zf.writestr("readme.txt", "nothing here")
    with pytest.raises(ValueError, match=rf"{sample.sample_id}_cellvit_seg\.geojson\.zip"):
        bt.io.hest(sample.root, sample.sample_id)
    sample.paths["cellvit_zip"].write_bytes(b"truncated download")
    with pytest.raises(ValueError, match=rf"{sample.sample_id}_cellvit_seg\.geojson\.zip.*BadZipFile"):
        bt.io.hest(sample.root, sample.sample_id)


def test_sample_without_segmentations(sample):
    """Only st/, wsis/ and metadata/ downloaded (no cellvit_seg/, no tissue_seg/); and both parts switched off."""
    sid = sample.sample_id
    sdata = bt.io.hest(sample.root, sid, nuclei=False, tissue=False)
    assert set(sdata.shapes) == {sid}
    for folder in ("cellvit_seg", "tissue_seg"):
        for path in (sample.root / folder).iterdir():
            path.unlink()
        (sample.root / folder).rmdir()
    sdata = bt.io.hest(sample.root, sid)
    assert set(sdata.shapes) == {sid}
    info = sdata.attrs[K.ATTRS_KEY]
    assert K.ATTR_CELLS_SHAPES not in info
    assert K.ATTR_TISSUE not in info
    assert sdata[K.TABLE_KEY].n_obs == 48


def test_bigtiff(tmp_path):
    """A slide above 4.1 GB ships as pyramidal generic BigTIFF."""
    sample = write_hest_sample(tmp_path, bigtiff=True)
    with tifffile.TiffFile(sample.paths["wsi"]) as tif:
        assert tif.is_bigtiff
    image = bt.io.hest(sample.root, sample.sample_id, nuclei=False, tissue=False)[f"{SID}_full_image"]
    assert len(image) == len(sample.levels)


# --- metadata as found in HEST-1k --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"pixel_size_um_embedded": None}, MPP),  # most samples: no embedded size
        ({"pixel_size_um_embedded": float("nan")}, MPP),
        ({"pixel_size_um_estimated": None}, MPP_EMBEDDED),
        ({"pixel_size_um_estimated": float("nan")}, MPP_EMBEDDED),  # written by json as NaN
        ({"pixel_size_um_estimated": ...}, MPP_EMBEDDED),
    ],
)
def test_pixel_size(sample, changes, expected):
    sample.write_meta(**changes)
    sdata = bt.io.hest(sample.root, sample.sample_id, nuclei=False)
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_MPP] == expected
    assert np.allclose(sdata[sample.sample_id]["radius"], SPOT_UM / 2 / expected)


@pytest.mark.parametrize(
    "changes",
    [
        {"pixel_size_um_estimated": None, "pixel_size_um_embedded": None},
        {"pixel_size_um_estimated": float("nan"), "pixel_size_um_embedded": ...},
        {"pixel_size_um_estimated": ..., "pixel_size_um_embedded": ...},
    ],
)
def test_no_pixel_size_is_refused(sample, changes):
    sample.write_meta(**changes)
    with pytest.raises(ValueError, match=rf"metadata/{SID}\.json.*pixel_size_um_estimated"):
        bt.io.hest(sample.root, sample.sample_id)


def test_pixel_size_not_a_number(sample):
    sample.write_meta(pixel_size_um_estimated="0.9 um")
    with pytest.raises(ValueError, match=rf"metadata/{SID}\.json.*'pixel_size_um_estimated' must be a number"):
        bt.io.hest(sample.root, sample.sample_id)


def test_patient_missing(sample):
    """``patient`` is empty for many HEST-1k samples (e.g. TENX111 in HEST_v1_1_0.csv)."""
    sample.write_meta(patient=None)
    info = bt.io.hest(sample.root, sample.sample_id, nuclei=False).attrs[K.ATTRS_KEY]
    assert K.PATIENT_ID_KEY not in info
    assert info[K.ATTR_TECHNOLOGY] == "Visium"


def test_spot_diameter_missing(sample, bitro_log):
    """Without ``spot_diameter`` the reader takes the technology's (55 µm Visium, 100 µm legacy ST) and says so."""
    sample.write_meta(spot_diameter=...)
    with bitro_log.at_level(logging.WARNING, logger="bitro"):
        spots = bt.io.hest(sample.root, sample.sample_id, nuclei=False)[sample.sample_id]
    assert np.allclose(spots["radius"], 27.5 / MPP)
    assert "no spot_diameter" in bitro_log.text
    sample.write_meta(st_technology="Spatial Transcriptomics")
    spots = bt.io.hest(sample.root, sample.sample_id, nuclei=False)[sample.sample_id]
    assert np.allclose(spots["radius"], 50.0 / MPP)


# --- written elements ------------------------------------------------------------------------------------


def test_zarr_round_trip(sample, tmp_path):
    sid = sample.sample_id
    sdata = bt.io.hest(sample.root, sid)
    sdata.write(tmp_path / "x.zarr")
    back = bt.io.read_zarr(tmp_path / "x.zarr")
    assert back.attrs[K.ATTRS_KEY] == sdata.attrs[K.ATTRS_KEY]
    assert set(back.images) == set(sdata.images)
    assert set(back.shapes) == set(sdata.shapes)
    table = back[K.TABLE_KEY]
    assert np.array_equal(table.X.toarray(), sample.counts.toarray())
    assert list(table.obs_names) == sample.barcodes
    assert list(table.var_names) == GENES
    assert table.obs["array_col"].tolist() == sdata[K.TABLE_KEY].obs["array_col"].tolist()
    assert table.uns["spatialdata_attrs"]["region"] == sid
    for key in (sid, CELLVIT_KEY, f"{sid}{K.TISSUE_SUFFIX}"):
        assert back[key].geometry.geom_equals_exact(sdata[key].geometry, tolerance=1e-9).all(), key
        assert get_transformation(back[key], to_coordinate_system=sid).scale.tolist() == [MPP, MPP]
    assert np.allclose(back[sid]["radius"], sdata[sid]["radius"])
    assert _classes(back[CELLVIT_KEY]) == sample.nuclei["class"].tolist()
    image = back[f"{sid}_full_image"]
    assert len(image) == len(sample.levels)
    assert np.array_equal(image["scale0"]["image"].values, np.moveaxis(sample.image, -1, 0))
    table.copy()  # the table read back is a usable AnnData


# --- refusals ---------------------------------------------------------------------------------------------


def test_missing_files(sample, tmp_path):
    root, sid = sample.root, sample.sample_id
    with pytest.raises(FileNotFoundError, match=r"'TENX95'.*st/TENX95\.h5ad"):
        bt.io.hest(root, "TENX95")  # not downloaded
    sample.paths["wsi"].unlink()
    with pytest.raises(FileNotFoundError, match=rf"wsis/{sid}\.tif"):
        bt.io.hest(root, sid)
    with pytest.raises(FileNotFoundError, match="`root`"):
        bt.io.hest(tmp_path / "nowhere", sid)


def test_metadata_not_json(sample):
    sample.paths["metadata"].write_text("{'id': 'TENX999'")
    with pytest.raises(ValueError, match=rf"metadata/{SID}\.json: not valid JSON"):
        bt.io.hest(sample.root, sample.sample_id)


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"spot_diameter": 0}, r"'spot_diameter' must be a spot diameter in µm > 0, got 0"),  # not the default
        ({"spot_diameter": -55}, r"'spot_diameter' must be a spot diameter in µm > 0"),
        ({"spot_diameter": 55000}, r"'spot_diameter' is 55000, outside the plausible 1-1000 µm"),  # in nm
        ({"pixel_size_um_estimated": 1e6}, r"'pixel_size_um_estimated' is 1e\+06, outside the plausible"),
        ({"pixel_size_um_estimated": True}, r"'pixel_size_um_estimated' must be a number, got True"),
    ],
)
def test_implausible_metadata_is_refused_naming_the_file(sample, changes, pattern):
    sample.write_meta(**changes)
    with pytest.raises(ValueError, match=rf"metadata/{SID}\.json: {pattern}"):
        bt.io.hest(sample.root, sample.sample_id)


def test_metadata_and_table_that_are_not_what_they_say(sample):
    sample.paths["metadata"].write_text("[1, 2]")
    with pytest.raises(ValueError, match=rf"metadata/{SID}\.json: expected a JSON object .*got a list"):
        bt.io.hest(sample.root, sample.sample_id)
    sample.write_meta()
    sample.paths["st"].write_text("barcode,gene\n")  # a CSV saved as .h5ad
    with pytest.raises(ValueError, match=rf"st/{SID}\.h5ad: not a readable h5ad file"):
        bt.io.hest(sample.root, sample.sample_id)


def test_spots_outside_the_image(sample):
    """Spot centres that are not full-resolution pixels (here: doubled) are refused, naming both files."""
    adata = ad.read_h5ad(sample.paths["st"])
    adata.obsm["spatial"] = adata.obsm["spatial"] * 2
    adata.write_h5ad(sample.paths["st"])
    with pytest.raises(ValueError, match=rf"wsis/{SID}\.tif.*smaller than the spot coordinates in .*st/{SID}\.h5ad"):
        bt.io.hest(sample.root, sample.sample_id)
