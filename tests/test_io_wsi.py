"""``bt.io.wsi`` on real slides (tests/data/wsi, see SOURCE.txt) and on TIFF/JPEG/PNG files the tests write."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import shapely
import tifffile
from PIL import Image

from bitro import _constants as K
from bitro._vectorise import mask_to_polygon
from bitro.io import _wsi_backends
from bitro.io._tissue import tissue_mask, tissue_polygons
from bitro.io._wsi import read_image, wsi

DATA = Path(__file__).parent / "data" / "wsi"
CMU = DATA / "CMU-1-Small-Region.svs"
TCGA = DATA / "TCGA-CR-7395-01A-01-TS1.svs"
TILE = DATA / "tiles" / "high-nuclei-score-level0.png"
CMU_ID, TCGA_ID = "CMU-1-Small-Region", "TCGA-CR-7395-01A-01-TS1"

# synthetic slides: pale background, one rectangle of pink-purple "tissue" (rows, columns)
BACKGROUND = (236, 232, 238)
TISSUE_RGB = (190, 90, 160)
RECT = (slice(520, 1480), slice(300, 1700))


def _has_jpeg2000() -> bool:
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(imagecodecs.JPEG2K.available)


@pytest.fixture
def log(bitro_log):
    """Records of the ``bitro`` logger (conftest's ``bitro_log``)."""
    return bitro_log


def warnings_logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "bitro" and r.levelno == logging.WARNING]


@pytest.fixture(scope="module")
def cmu():
    """CMU-1-Small-Region read once for the module (tests only read it)."""
    return wsi(CMU)


def synthetic(h: int = 2048, w: int = 2048, *, rect=RECT, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.empty((h, w, 3), np.uint8)
    image[:] = BACKGROUND
    image[rect] = TISSUE_RGB
    noise = rng.integers(-6, 7, size=image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


def halve(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    return image[:h, :w].reshape(h // 2, 2, w // 2, 2, -1).mean(axis=(1, 3)).round().astype(np.uint8)


def write_pyramid(path, image, *, n_sub: int = 2, ome: bool = False, metadata=None, **level0) -> list[np.ndarray]:
    """A tiled, deflate-compressed pyramidal TIFF (sub-levels in SubIFDs); returns the levels written."""
    levels = [image]
    for _ in range(n_sub):
        levels.append(halve(levels[-1]))
    options = {"tile": (256, 256), "photometric": "rgb", "compression": "zlib"}
    with tifffile.TiffWriter(path, ome=ome) as tif:
        tif.write(image, subifds=n_sub, metadata=metadata, **options, **level0)
        for level in levels[1:]:
            tif.write(level, subfiletype=1, metadata=None, **options)
    return levels


def image_levels(sdata, key: str) -> list:
    tree = sdata.images[key]
    return [tree[f"scale{i}"]["image"] for i in range(len(tree))]


def affine_xy(element, cs: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    return get_transformation(element, to_coordinate_system=cs).to_affine_matrix(("x", "y"), ("x", "y"))


def layers(array) -> list[str]:
    """Names of the layers of a dask array's graph (what it is computed from)."""
    return [name.split("-")[0] if not name.startswith("bitro-wsi") else "bitro-wsi" for name in array.data.dask.layers]


def iou(a, b) -> float:
    return a.intersection(b).area / a.union(b).area


# --- CMU-1-Small-Region (Aperio, JPEG tiles, MPP in the description) --------------------------------------


def test_cmu_opens_lazily_and_reads_the_right_pixels(monkeypatch):
    reads = []
    original = _wsi_backends._TiffLevel.__getitem__

    def counting(self, key):
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(_wsi_backends._TiffLevel, "__getitem__", counting)
    sdata = wsi(CMU, tissue=False)
    assert reads == []  # nothing decoded to build the SpatialData
    level0 = image_levels(sdata, f"{CMU_ID}_he_image")[0]
    assert isinstance(level0.data, da.Array)
    assert layers(level0) == ["original", "bitro-wsi", "transpose"]  # the file's tiles, no in-memory copy
    assert max(level0.data.chunks[1]) == 1024
    assert max(level0.data.chunks[2]) == 1024
    window = level0.data[:, 1000:1100, 300:460].compute()  # non-square: a transposition would show
    assert reads
    direct = tifffile.imread(CMU)  # (y, x, 3), tifffile's own decode
    np.testing.assert_array_equal(window, direct[1000:1100, 300:460].transpose(2, 0, 1))


def test_cmu_shape_mpp_and_coordinate_system(cmu):
    image_key, tissue_key = f"{CMU_ID}_he_image", f"{CMU_ID}_tissue"
    level0 = image_levels(cmu, image_key)[0]
    assert level0.dims == ("c", "y", "x")
    assert level0.shape == (3, 2967, 2220)  # 2967 rows (height) x 2220 columns (width)
    assert level0.dtype == np.uint8
    assert list(level0.coords["c"].values) == ["r", "g", "b"]
    assert cmu.attrs[K.ATTRS_KEY] == {
        K.ATTR_SAMPLE_ID: CMU_ID,
        K.ATTR_IMAGE: image_key,
        K.ATTR_TISSUE: tissue_key,
        K.ATTR_MPP: pytest.approx(0.499),
        K.ATTR_IMAGE_MPP: pytest.approx(0.499),
        K.ATTR_COORDINATE_SYSTEM: CMU_ID,
        K.ATTR_VERSION: cmu.attrs[K.ATTRS_KEY][K.ATTR_VERSION],
    }
    assert cmu.coordinate_systems == [CMU_ID]
    expected = np.diag([0.499, 0.499, 1.0])
    np.testing.assert_allclose(affine_xy(cmu.images[image_key], CMU_ID), expected)
    np.testing.assert_allclose(affine_xy(cmu.shapes[tissue_key], CMU_ID), expected)


def test_cmu_single_level_gets_lazily_averaged_levels(cmu):
    levels = image_levels(cmu, f"{CMU_ID}_he_image")
    assert [lv.shape[1:] for lv in levels] == [(2967, 2220), (1483, 1110), (741, 555), (370, 277)]
    assert all(isinstance(lv.data, da.Array) and lv.dtype == np.uint8 for lv in levels)
    block = levels[0].data[:, 200:264, 400:464].compute().astype(float)
    expected = block.reshape(3, 32, 2, 32, 2).mean(axis=(2, 4)).round()
    np.testing.assert_array_equal(levels[1].data[:, 100:132, 200:232].compute(), expected)
    # level 1 maps to level 0 by the shape ratio, then by mpp into µm
    np.testing.assert_allclose(
        affine_xy(levels[1], CMU_ID), np.diag([2220 / 1110 * 0.499, 2967 / 1483 * 0.499, 1.0]), rtol=1e-9
    )


def test_cmu_tissue_polygon(cmu):
    shapes = cmu.shapes[f"{CMU_ID}_tissue"]
    assert list(shapes.index) == [0]
    polygon = shapes.geometry.iloc[0]
    assert polygon.is_valid
    assert polygon.geom_type in ("Polygon", "MultiPolygon")
    minx, miny, maxx, maxy = polygon.bounds
    assert 0 <= minx < maxx <= 2220
    assert 0 <= miny < maxy <= 2967
    fraction = polygon.area / (2220 * 2967)
    assert 0.25 < fraction < 0.6, fraction  # the skin section covers ~40 % of this crop
    assert polygon.contains(shapely.Point(1160, 2318))  # dermis, lower middle
    assert not polygon.contains(shapely.Point(193, 386))  # empty glass, top left
    # the polygon follows stained tissue: saturation inside is far above saturation outside
    level2 = image_levels(cmu, f"{CMU_ID}_he_image")[2]
    rgb = level2.values.transpose(1, 2, 0).astype(float)
    sat = (rgb.max(-1) - rgb.min(-1)) / np.maximum(rgb.max(-1), 1)
    yy, xx = np.mgrid[: rgb.shape[0], : rgb.shape[1]]
    inside = shapely.contains_xy(polygon, (xx + 0.5) * 4, (yy + 0.5) * 4)
    assert sat[inside].mean() > 3 * sat[~inside].mean()


def test_mpp_argument_wins_and_a_disagreement_is_logged(log):
    sdata = wsi(CMU, mpp=0.25, tissue=False)
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_MPP] == 0.25
    np.testing.assert_allclose(affine_xy(sdata.images[f"{CMU_ID}_he_image"], CMU_ID), np.diag([0.25, 0.25, 1.0]))
    assert any("0.25" in m and "0.499" in m for m in warnings_logged(log))
    log.clear()
    wsi(CMU, mpp=0.4991, tissue=False)  # agrees within 1 %: nothing to say
    assert warnings_logged(log) == []


def test_zarr_round_trip(cmu, tmp_path):
    from spatialdata import read_zarr

    cmu.write(tmp_path / "cmu.zarr")
    back = read_zarr(tmp_path / "cmu.zarr")
    assert back.attrs[K.ATTRS_KEY] == cmu.attrs[K.ATTRS_KEY]
    image_key, tissue_key = f"{CMU_ID}_he_image", f"{CMU_ID}_tissue"
    before, after = image_levels(cmu, image_key), image_levels(back, image_key)
    assert len(after) == len(before) == 4
    for a, b in zip(before, after, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(affine_xy(a, CMU_ID), affine_xy(b, CMU_ID))
    np.testing.assert_array_equal(after[0].values, before[0].values)
    np.testing.assert_array_equal(after[3].values, before[3].values)
    assert back.shapes[tissue_key].geometry.iloc[0].equals_exact(cmu.shapes[tissue_key].geometry.iloc[0], 1e-9)
    np.testing.assert_allclose(affine_xy(back.shapes[tissue_key], CMU_ID), np.diag([0.499, 0.499, 1.0]))
    assert back.coordinate_systems == [CMU_ID]


def test_dask_graph_pickles_and_reopens_the_file():
    """The graph holds the path, not an open file: it survives pickling (process pools, data-loader workers)."""
    sdata = wsi(CMU, tissue=False)
    window = image_levels(sdata, f"{CMU_ID}_he_image")[0].data[:, 5:70, 10:90]
    clone = pickle.loads(pickle.dumps(window))
    np.testing.assert_array_equal(clone.compute(scheduler="synchronous"), window.compute())


# --- read_image: the image element alone, for other readers ---------------------------------------------


def tree_levels(tree) -> list:
    return [tree[f"scale{i}"]["image"] for i in range(len(tree))]


def test_read_image_is_the_image_of_wsi(cmu):
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import get_transformation
    from xarray import DataTree

    image, mpp = read_image(CMU, coordinate_system="section")
    assert isinstance(image, DataTree)
    Image2DModel().validate(image)
    assert mpp == pytest.approx(0.499)  # from the file
    levels, expected = tree_levels(image), image_levels(cmu, f"{CMU_ID}_he_image")
    assert [lv.shape for lv in levels] == [lv.shape for lv in expected]  # 1 level in the file + 3 averaged
    for level in levels:
        assert level.dims == ("c", "y", "x")
        assert level.dtype == np.uint8
        assert list(level.coords["c"].values) == ["r", "g", "b"]
        assert isinstance(level.data, da.Array)
    assert layers(levels[0]) == ["original", "bitro-wsi", "transpose"]  # lazy: the file's tiles
    np.testing.assert_array_equal(levels[3].values, expected[3].values)
    assert set(get_transformation(levels[0], get_all=True)) == {"section"}
    np.testing.assert_allclose(affine_xy(levels[0], "section"), np.diag([0.499, 0.499, 1.0]))  # µm
    np.testing.assert_allclose(affine_xy(levels[1], "section"), affine_xy(expected[1], CMU_ID))


def test_read_image_with_mpp_and_chunks(log):
    image, mpp = read_image(TCGA, coordinate_system="frozen", mpp=0.25, chunks=512)
    assert mpp == 0.25
    levels = tree_levels(image)
    assert [lv.shape for lv in levels] == [(3, 3567, 4443), (3, 1783, 2221)]  # the file's own pyramid
    assert max(levels[0].data.chunks[1]) == max(levels[1].data.chunks[2]) == 512
    np.testing.assert_allclose(affine_xy(levels[0], "frozen"), np.diag([0.25, 0.25, 1.0]))
    assert warnings_logged(log) == []
    with pytest.raises(ValueError, match=r"TCGA-CR-7395-01A-01-TS1\.svs has no pixel size.*Pass it as `mpp=`"):
        read_image(TCGA, coordinate_system="frozen")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"coordinate_system": ""}, TypeError, "`coordinate_system` must be a non-empty string"),
        ({"coordinate_system": None}, TypeError, "`coordinate_system` must be a non-empty string"),
        ({"coordinate_system": "cs", "mpp": -1}, ValueError, "`mpp` must be > 0"),
        ({"coordinate_system": "cs", "chunks": 8}, ValueError, "`chunks` must be >= 16"),
    ],
)
def test_read_image_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        read_image(CMU, **kwargs)


# --- TCGA frozen slide (JPEG 2000, two levels, no pixel size) ---------------------------------------------


def test_tcga_without_mpp_raises_a_clear_error():
    with pytest.raises(ValueError, match=r"TCGA-CR-7395-01A-01-TS1\.svs has no pixel size.*Pass it as `mpp=`"):
        wsi(TCGA)


def test_tcga_with_mpp_reads_metadata_and_levels():
    sdata = wsi(TCGA, mpp=0.25, tissue=False)  # no pixel is decoded: works without a JPEG 2000 codec
    levels = image_levels(sdata, f"{TCGA_ID}_he_image")
    assert [lv.shape for lv in levels] == [(3, 3567, 4443), (3, 1783, 2221)]  # the file's own two levels
    assert all(layers(lv) == ["original", "bitro-wsi", "transpose"] for lv in levels)  # level 1 read, not computed
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_MPP] == 0.25
    assert K.ATTR_TISSUE not in sdata.attrs[K.ATTRS_KEY]
    assert len(sdata.shapes) == 0
    np.testing.assert_allclose(affine_xy(levels[0], TCGA_ID), np.diag([0.25, 0.25, 1.0]))
    np.testing.assert_allclose(affine_xy(levels[1], TCGA_ID), np.diag([4443 / 2221 / 4, 3567 / 1783 / 4, 1.0]))


@pytest.mark.skipif(not _has_jpeg2000(), reason="decoding Aperio JPEG 2000 tiles needs imagecodecs with JPEG2K")
def test_tcga_pixels_and_tissue():
    sdata = wsi(TCGA, mpp=0.25)
    levels = image_levels(sdata, f"{TCGA_ID}_he_image")
    with tifffile.TiffFile(TCGA) as tif:
        direct0 = tif.series[0].levels[0].asarray()
        direct1 = tif.series[0].levels[1].asarray()
    np.testing.assert_array_equal(
        levels[0].data[:, 1500:1600, 2000:2150].compute(), direct0[1500:1600, 2000:2150].transpose(2, 0, 1)
    )
    np.testing.assert_array_equal(levels[1].values, direct1.transpose(2, 0, 1))
    polygon = sdata.shapes[f"{TCGA_ID}_tissue"].geometry.iloc[0]
    fraction = polygon.area / (3567 * 4443)
    assert 0.45 < fraction < 0.85, fraction  # the section fills about two thirds of the slide
    assert polygon.contains(shapely.Point(2200, 1800))
    assert not polygon.contains(shapely.Point(150, 150))


def test_missing_codec(monkeypatch, log):
    """Without a decoder for the tiles: tissue=True fails at once with the fix, tissue=False opens with a warning."""
    monkeypatch.setattr(tifffile.TIFF, "DECOMPRESSORS", {1: lambda x, **_: x})  # no JPEG, no JPEG 2000
    with pytest.raises(ImportError, match="imagecodecs"):
        wsi(CMU)
    sdata = wsi(CMU, tissue=False)
    assert image_levels(sdata, f"{CMU_ID}_he_image")[0].shape == (3, 2967, 2220)
    assert any("imagecodecs" in m for m in warnings_logged(log))


# --- PNG / JPEG (PIL) -------------------------------------------------------------------------------------


def test_png_tile_alpha_dropped():
    rgba = np.asarray(Image.open(TILE))
    assert rgba.shape == (779, 956, 4)
    with pytest.raises(ValueError, match="high-nuclei-score-level0.png has no pixel size"):
        wsi(TILE)
    sdata = wsi(TILE, mpp=0.25)
    sid = "high-nuclei-score-level0"
    level0 = image_levels(sdata, f"{sid}_he_image")[0]
    assert level0.shape == (3, 779, 956)
    np.testing.assert_array_equal(level0.values, rgba[..., :3].transpose(2, 0, 1))
    polygon = sdata.shapes[f"{sid}_tissue"].geometry.iloc[0]
    assert polygon.area / (779 * 956) > 0.9  # the tile is all tumour


@pytest.mark.parametrize(("dpi", "expected"), [(50_800, 0.5), (25_400, 1.0)])  # JFIF stores dpi in 16 bits
def test_jpeg_pixel_size_from_dpi(tmp_path, dpi, expected):
    path = tmp_path / "slide.jpg"
    Image.fromarray(synthetic(600, 800)).save(path, quality=95, dpi=(dpi, dpi))
    sdata = wsi(path)
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_MPP] == pytest.approx(expected, rel=1e-3)
    assert image_levels(sdata, "slide_he_image")[0].shape == (3, 600, 800)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_screen_dpi_is_not_a_pixel_size(tmp_path, log, suffix):
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(synthetic(300, 400)).save(path, dpi=(72, 72))
    with pytest.raises(ValueError, match=rf"photo\{suffix} has no pixel size .*72(\.\d+)? dpi means 352.*`mpp=`"):
        wsi(path)
    # with `mpp=` (e.g. a HER2ST JPEG of known pixel size) the file's 72 dpi is not needed: nothing to warn about
    assert wsi(path, mpp=0.5, tissue=False).attrs[K.ATTRS_KEY][K.ATTR_MPP] == 0.5
    assert warnings_logged(log) == []


def test_no_tissue_is_logged_and_no_element_written(tmp_path, log):
    path = tmp_path / "blank.png"
    Image.fromarray(np.full((400, 500, 3), 241, np.uint8)).save(path)
    sdata = wsi(path, mpp=0.5)
    assert len(sdata.shapes) == 0
    assert K.ATTR_TISSUE not in sdata.attrs[K.ATTRS_KEY]
    assert any("no tissue found" in m and "blank_tissue" in m for m in warnings_logged(log))


# --- TIFF files written here: OME-TIFF and plain TIFF pyramids ---------------------------------------------


@pytest.mark.parametrize(("size", "unit", "expected"), [(250, "nm", 0.25), (0.5, "µm", 0.5), (0.4, "\u03bcm", 0.4)])
def test_ome_tiff_pyramid(tmp_path, size, unit, expected):
    path = tmp_path / "section.ome.tif"
    metadata = {"axes": "YXS", "PhysicalSizeX": size, "PhysicalSizeXUnit": unit}
    metadata |= {"PhysicalSizeY": size, "PhysicalSizeYUnit": unit}
    written = write_pyramid(path, synthetic(), ome=True, metadata=metadata)
    sdata = wsi(path)
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_SAMPLE_ID] == "section"  # ".ome.tif" removed as a whole
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_MPP] == pytest.approx(expected)
    levels = image_levels(sdata, "section_he_image")
    assert [lv.shape[1:] for lv in levels] == [(2048, 2048), (1024, 1024), (512, 512)]
    for level, array in zip(levels, written, strict=True):
        np.testing.assert_array_equal(level.values, array.transpose(2, 0, 1))
    truth = shapely.box(RECT[1].start, RECT[0].start, RECT[1].stop, RECT[0].stop)
    assert iou(sdata.shapes["section_tissue"].geometry.iloc[0], truth) > 0.95


def test_ome_tiff_with_physical_size_x_only(tmp_path):
    path = tmp_path / "x_only.ome.tif"
    metadata = {"axes": "YXS", "PhysicalSizeX": 0.3}  # unit defaults to µm, Y to X
    tifffile.imwrite(path, synthetic(256, 256), photometric="rgb", metadata=metadata)
    assert wsi(path, tissue=False).attrs[K.ATTRS_KEY][K.ATTR_MPP] == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("resolution", "unit", "expected"),
    [(20_000, "CENTIMETER", 0.5), (101_600, "INCH", 0.25), (4_000, "MILLIMETER", 0.25), (2, "MICROMETER", 0.5)],
)
def test_plain_tiff_resolution_tags(tmp_path, resolution, unit, expected):
    path = tmp_path / "plain.tif"
    write_pyramid(path, synthetic(), resolution=(resolution, resolution), resolutionunit=unit)
    sdata = wsi(path, chunks=512)
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_MPP] == pytest.approx(expected)
    levels = image_levels(sdata, "plain_he_image")
    assert [lv.shape[1:] for lv in levels] == [(2048, 2048), (1024, 1024), (512, 512)]
    assert max(levels[0].data.chunks[1]) == 512
    np.testing.assert_allclose(affine_xy(levels[2], "plain"), np.diag([4 * expected, 4 * expected, 1.0]))


def test_rgba_tiff_alpha_dropped(tmp_path):
    path = tmp_path / "rgba.tif"
    rgba = np.concatenate([synthetic(300, 200), np.full((300, 200, 1), 255, np.uint8)], axis=-1)
    rgba[..., 1] = np.arange(200, dtype=np.uint8)[None, :]  # channels differ, so a wrong slice shows
    tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=["unassalpha"], tile=(64, 64))
    level0 = image_levels(wsi(path, mpp=0.5, tissue=False), "rgba_he_image")[0]
    assert level0.shape == (3, 300, 200)
    np.testing.assert_array_equal(level0.values, rgba[..., :3].transpose(2, 0, 1))


def test_tiff_with_72_dpi_needs_mpp(tmp_path, log):
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, synthetic(256, 256), photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    with pytest.raises(ValueError, match=r"scan\.tif has no pixel size .*XResolution of 72 per inch means 352\.8 µm"):
        wsi(path)
    assert wsi(path, mpp=0.5, tissue=False).attrs[K.ATTRS_KEY][K.ATTR_MPP] == 0.5
    assert warnings_logged(log) == []


def test_resolution_unit_none_is_not_a_pixel_size(tmp_path):
    path = tmp_path / "nounit.tif"
    tifffile.imwrite(path, synthetic(64, 64), photometric="rgb", resolution=(4, 4), resolutionunit="NONE")
    with pytest.raises(ValueError, match=r"nounit\.tif has no pixel size \(µm per pixel\) in its metadata\. Pass"):
        wsi(path, tissue=False)


def test_non_square_pixels_need_mpp(tmp_path, log):
    path = tmp_path / "aniso.ome.tif"
    metadata = {"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.5}
    tifffile.imwrite(path, synthetic(64, 64), photometric="rgb", metadata=metadata)
    with pytest.raises(ValueError, match=r"aniso\.ome\.tif has no pixel size .*non-square pixels \(0\.25 x 0\.5 µm\)"):
        wsi(path, tissue=False)
    assert wsi(path, mpp=0.3, tissue=False).attrs[K.ATTRS_KEY][K.ATTR_MPP] == 0.3  # `mpp=` overrides, as promised
    assert warnings_logged(log) == []


def test_unusable_ome_size_falls_back_to_resolution_tags_with_a_warning(tmp_path, log):
    path = tmp_path / "odd.ome.tif"
    metadata = {"axes": "YXS", "PhysicalSizeX": 2, "PhysicalSizeXUnit": "ft"}  # a valid OME unit, but no pixel size
    tifffile.imwrite(
        path, synthetic(64, 64), photometric="rgb", metadata=metadata, resolution=(2, 2), resolutionunit="MICROMETER"
    )
    assert wsi(path, tissue=False).attrs[K.ATTRS_KEY][K.ATTR_MPP] == pytest.approx(0.5)
    assert any("PhysicalSizeX '2' 'ft' is not a number in m, cm, mm, µm or nm" in m for m in warnings_logged(log))
    log.clear()
    wsi(path, mpp=0.5, tissue=False)  # the file's pixel size is not needed: its odd OME unit is not reported
    assert warnings_logged(log) == []


def test_sample_id_is_sanitized(tmp_path, log):
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, synthetic(256, 256), photometric="rgb")
    sdata = wsi(path, sample_id="patient 1/A", mpp=0.5, tissue=False)
    assert set(sdata.images) == {"patient_1_A_he_image"}
    assert sdata.coordinate_systems == ["patient_1_A"]
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_COORDINATE_SYSTEM] == "patient_1_A"
    assert any("patient 1/A" in m for m in warnings_logged(log))


def test_a_hidden_file_name_gives_elements_a_store_reads_back(tmp_path):
    import bitro as bt

    path = tmp_path / ".hidden.tif"  # a leading '.' would hide the elements in the zarr store
    tifffile.imwrite(path, synthetic(256, 256), photometric="rgb")
    sdata = wsi(path, mpp=0.5, tissue=False)
    assert set(sdata.images) == {"hidden_he_image"}
    sdata.write(tmp_path / "s.zarr")
    assert set(bt.io.read_zarr(tmp_path / "s.zarr").images) == {"hidden_he_image"}
    assert set(wsi(path, sample_id="..", mpp=0.5, tissue=False).images) == {"sample_he_image"}
    with pytest.raises(ValueError, match="`sample_id` is 250 characters .*at most 128"):
        wsi(path, sample_id="a" * 250, mpp=0.5, tissue=False)  # its folders' names would be too long to write


# --- bad input ----------------------------------------------------------------------------------------------


def _write_bad(tmp_path: Path, kind: str) -> Path:
    if kind == "grayscale_tiff":
        path = tmp_path / "gray.tif"
        tifffile.imwrite(path, np.zeros((64, 64), np.uint8))
    elif kind == "grayscale_png":
        path = tmp_path / "gray.png"
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    elif kind == "uint16_tiff":
        path = tmp_path / "deep.tif"
        tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint16), photometric="rgb")
    elif kind == "fluorescence_tiff":
        path = tmp_path / "if.ome.tif"
        tifffile.imwrite(path, np.zeros((3, 64, 64), np.uint8), photometric="minisblack", metadata={"axes": "CYX"})
    elif kind == "stack_tiff":
        path = tmp_path / "stack.tif"
        tifffile.imwrite(path, np.zeros((5, 64, 64), np.uint8), photometric="minisblack")
    elif kind == "not_a_tiff":
        path = tmp_path / "broken.svs"
        path.write_text("not a slide")
    elif kind == "not_a_png":
        path = tmp_path / "broken.png"
        path.write_bytes(b"\x00" * 100)
    elif kind == "unsupported_extension":
        path = tmp_path / "slide.mrxs"
        path.write_text("")
    elif kind == "directory":
        path = tmp_path / "folder.svs"
        path.mkdir()
    return path


@pytest.mark.parametrize(
    ("kind", "error", "match"),
    [
        ("grayscale_tiff", ValueError, r"gray\.tif is a grayscale image"),
        ("grayscale_png", ValueError, r"gray\.png is a grayscale image"),
        ("uint16_tiff", ValueError, r"deep\.tif has uint16 pixels"),
        ("fluorescence_tiff", ValueError, r"if\.ome\.tif has 3 channels with photometric MINISBLACK, not an RGB"),
        ("stack_tiff", ValueError, r"stack\.tif holds an image with axes 'QYX'"),
        ("not_a_tiff", ValueError, r"broken\.svs could not be read as a TIFF"),
        ("not_a_png", ValueError, r"broken\.png could not be read as an image"),
        ("unsupported_extension", ValueError, r"slide\.mrxs has an unsupported extension '\.mrxs'"),
        ("directory", ValueError, r"folder\.svs is not a file"),
    ],
)
def test_bad_files_raise(tmp_path, kind, error, match):
    path = _write_bad(tmp_path, kind)
    with pytest.raises(error, match=match):
        wsi(path, mpp=0.5)
    with pytest.raises(error, match=match):
        read_image(path, coordinate_system="cs", mpp=0.5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mpp": 0}, ValueError, "`mpp` must be > 0"),
        ({"mpp": -0.5}, ValueError, "`mpp` must be > 0"),
        ({"mpp": float("nan")}, ValueError, "`mpp` must be finite"),
        ({"mpp": "0.5"}, TypeError, "`mpp` must be a number"),
        ({"chunks": 8}, ValueError, "`chunks` must be >= 16"),
        ({"tissue": "yes"}, TypeError, "`tissue` must be True or False"),
        ({"sample_id": ""}, TypeError, "`sample_id` must be a non-empty string"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        wsi(CMU, **kwargs)


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`path`: .*nowhere\.svs does not exist"):
        wsi(tmp_path / "nowhere.svs")
    with pytest.raises(FileNotFoundError, match=r"`path`: .*nowhere\.svs does not exist"):
        read_image(tmp_path / "nowhere.svs", coordinate_system="cs")


# --- tissue detection on arrays -------------------------------------------------------------------------


def test_mask_to_polygon_follows_pixel_edges_and_scales():
    mask = np.zeros((40, 60), bool)
    mask[10:20, 30:50] = True
    polygon = mask_to_polygon(mask, simplify_px=0)
    assert polygon.bounds == pytest.approx((30, 10, 50, 20))  # pixel (i, j) covers [j, j+1) x [i, i+1)
    assert polygon.area == pytest.approx(200 - 4 * 0.125)  # the 0.5 iso-line cuts each corner by 1/8 px²
    scaled = mask_to_polygon(mask, downsample=(2.0, 4.0), simplify_px=0)
    assert scaled.bounds == pytest.approx((120, 20, 200, 40))
    assert mask_to_polygon(np.zeros((5, 5), bool)) is None


def test_tissue_mask_background_tissue_and_padding():
    rect = (slice(100, 300), slice(150, 350))
    image = synthetic(400, 400, rect=rect)
    image[:, :40] = 0  # black scanner padding is not tissue
    mask = tissue_mask(image, sigma_px=1, closing_px=2, min_object_px=16)
    truth = np.zeros(mask.shape, bool)
    truth[rect] = True
    assert (mask == truth).mean() > 0.99
    assert not mask[:, :40].any()
    assert not tissue_mask(np.full((50, 50, 3), 240, np.uint8)).any()
    assert tissue_mask(np.full((50, 50, 3), TISSUE_RGB, np.uint8)).all()
    # holes are filled and small specks removed
    ring = np.full((200, 200, 3), BACKGROUND, np.uint8)
    ring[40:160, 40:160] = TISSUE_RGB
    ring[80:120, 80:120] = BACKGROUND
    ring[5:7, 5:7] = TISSUE_RGB
    polygon = tissue_polygons(ring, sigma_px=0, closing_px=1, min_object_px=16, simplify_px=0)
    assert polygon.geom_type == "Polygon"
    assert not polygon.interiors
    assert polygon.area == pytest.approx(120 * 120, rel=0.01)


def test_tissue_mask_closes_gaps_as_a_disk_at_every_radius():
    """Radii from 8 px close by distance transforms: the mask of scipy's closing with a disk, pixel for pixel."""
    from scipy import ndimage as ndi
    from skimage.morphology import disk

    rng = np.random.default_rng(0)
    raw = ndi.gaussian_filter(rng.random((160, 200)), 3) > 0.5  # tissue with gaps of a few pixels
    image = np.where(raw[..., None], TISSUE_RGB, BACKGROUND).astype(np.uint8)
    for radius in (7, 8, 12):
        padded = np.pad(raw, radius, mode="edge")
        closed = ndi.binary_closing(padded, structure=disk(radius))[radius:-radius, radius:-radius]
        opened = ndi.binary_opening(np.pad(closed, 1, mode="edge"), structure=disk(1))[1:-1, 1:-1]
        expected = ndi.binary_fill_holes(opened)
        found = tissue_mask(image, sigma_px=0, closing_px=radius, min_object_px=0, threshold=0.3)
        np.testing.assert_array_equal(found, expected, err_msg=f"closing radius {radius}")
        assert found.sum() > raw.sum()  # gaps were closed


def test_small_objects_removed_below_min_object_px():
    from bitro.io._tissue import _remove_small_objects, saturation

    mask = np.zeros((20, 20), bool)
    mask[1:4, 1:6] = True  # 15 px: removed
    mask[10:14, 10:14] = True  # 16 px: kept
    mask[17, 17] = mask[18, 18] = True  # touch diagonally only: two 1-px objects (4-connectivity)
    expected = np.zeros_like(mask)
    expected[10:14, 10:14] = True
    np.testing.assert_array_equal(_remove_small_objects(mask, 16), expected)
    np.testing.assert_array_equal(_remove_small_objects(mask, 1), mask)
    rgb = np.array([[[0, 0, 0], [128, 128, 128]], [[255, 0, 0], [200, 100, 50]]], np.uint8)
    np.testing.assert_allclose(saturation(rgb), [[0, 0], [1, 0.75]], atol=1e-6)
    assert saturation(rgb).dtype == np.float32


def test_tissue_mask_rejects_non_rgb():
    with pytest.raises(ValueError, match=r"shape \(10, 10\)"):
        tissue_mask(np.zeros((10, 10), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        tissue_mask(np.zeros((10, 10, 3), np.float32))


def test_an_aperio_pixel_size_with_a_decimal_comma_is_read(tmp_path):
    path = tmp_path / "comma.svs"  # written by a scanner set to a German or French locale
    tifffile.imwrite(
        path, synthetic(256, 256), photometric="rgb", description="Aperio Image Library v12 |AppMag = 20|MPP = 0,499"
    )
    assert wsi(path, tissue=False).attrs[K.ATTRS_KEY][K.ATTR_MPP] == pytest.approx(0.499)
