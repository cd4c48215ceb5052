"""HER2ST sections (legacy ST) from a local folder or, where the network allows, downloaded."""

from __future__ import annotations

import os
from pathlib import Path

from bitro._logging import logger
from bitro._validate import check_name

from ._registry import DOWNLOAD_TIMEOUT_S, HER2ST_FILES, HER2ST_URL


def her2st(section: str, *, data_dir: str | os.PathLike | None = None):
    """One section of the HER2+ breast cancer legacy ST dataset (Andersson et al. 2021) as SpatialData.

    Reads from ``data_dir`` when given: a folder laid out like the upstream repository's ``data/``
    (``ST-cnts/{section}.tsv.gz``, ``ST-spotfiles/{section}_selection.tsv`` and the H&E JPEG under
    ``ST-imgs/``, either ``ST-imgs/{letter}/{section}/*.jpg`` or ``ST-imgs/{section}_*.jpg``).
    Otherwise downloads the section into ``bt.settings.cachedir / "her2st"`` with pooch, checked
    against sha256 checksums (sections C2-C5; cached files are reused offline).

    The data are licensed CC BY 4.0: cite Andersson A. et al., "Spatial deconvolution of
    HER2-positive breast cancer delineates tumor-associated cell type interactions", Nature
    Communications 12, 6012 (2021).

    Parameters
    ----------
    section
        Section id, e.g. ``"C3"``.
    data_dir
        Local copy of the dataset (see above); nothing is downloaded when given.

    Returns
    -------
    :class:`spatialdata.SpatialData`
        As :func:`bitro.io.legacy_st` returns, with ``sample_id=section``.

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.datasets.her2st("C3", data_dir="her2st/data")  # doctest: +SKIP
    """
    from bitro.io import legacy_st

    section = check_name(section, "section")
    if data_dir is not None:
        counts, spots, image = _local_files(Path(data_dir).expanduser(), section)
    else:
        counts, spots, image = _download(section)
    return legacy_st(counts, spots, image, sample_id=section)


def _local_files(root: Path, section: str) -> tuple[Path, Path, Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"`data_dir`: {root} is not a directory.")
    counts = root / "ST-cnts" / f"{section}.tsv.gz"
    spots = root / "ST-spotfiles" / f"{section}_selection.tsv"
    images = sorted((root / "ST-imgs").glob(f"{section[0]}/{section}/*.jpg")) + sorted(
        (root / "ST-imgs").glob(f"{section}_*.jpg")
    )
    missing = [str(p) for p in (counts, spots) if not p.is_file()]
    if not images:
        missing.append(str(root / "ST-imgs" / f"{section[0]}/{section}/*.jpg (or {section}_*.jpg)"))
    if missing:
        raise FileNotFoundError(f"`data_dir`: HER2ST section {section!r} is incomplete in {root}; missing {missing}.")
    if len(images) > 1:
        raise ValueError(f"`data_dir`: more than one H&E image for section {section!r}: {[str(p) for p in images]}.")
    return counts, spots, images[0]


def _download(section: str) -> tuple[Path, Path, Path]:
    import pooch

    from bitro import settings

    if section not in HER2ST_FILES:
        raise ValueError(
            f"`section`: {section!r} has no registered checksums (downloadable: {sorted(HER2ST_FILES)}); "
            "download it yourself and pass `data_dir=`."
        )
    image_name, *hashes = HER2ST_FILES[section]
    paths = (
        f"ST-cnts/{section}.tsv.gz",
        f"ST-spotfiles/{section}_selection.tsv",
        f"ST-imgs/{section[0]}/{section}/{image_name}",
    )
    cache = Path(settings.cachedir) / "her2st"
    downloader = pooch.HTTPDownloader(timeout=DOWNLOAD_TIMEOUT_S, progressbar=False)
    out = []
    for rel, sha in zip(paths, hashes, strict=True):
        try:
            out.append(
                Path(
                    pooch.retrieve(
                        HER2ST_URL + rel,
                        known_hash=f"sha256:{sha}",
                        path=cache,
                        fname=rel.replace("/", "__"),
                        downloader=downloader,
                    )
                )
            )
        except Exception as err:
            raise OSError(
                f"Could not download HER2ST {rel} into {cache} ({type(err).__name__}: {err}). "
                "Without network access, pass `data_dir=` pointing at a local copy of the dataset."
            ) from err
    logger.info("her2st %s: files in %s", section, cache)
    return out[0], out[1], out[2]
