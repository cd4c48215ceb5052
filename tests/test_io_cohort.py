"""Bulk cohort joined with its slides, on the real GDC sample and the real TCGA / CMU slides."""

from __future__ import annotations

import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd

import bitro as bt
from bitro import _constants as K
from bitro.io._cohort import tcga_patient, tcga_sample

DATA = Path(__file__).parent / "data"
GDC = DATA / "bulk" / "gdc-rnaseq-tool_test_set_1.final.tsv.gz"
TCGA_SLIDE = DATA / "wsi" / "TCGA-CR-7395-01A-01-TS1.svs"
CMU_SLIDE = DATA / "wsi" / "CMU-1-Small-Region.svs"

pytestmark = pytest.mark.filterwarnings("ignore:.*duplicated gene names made unique:UserWarning")  # CD99 _PAR_Y


@pytest.fixture(scope="module")
def expression():
    """The real GDC profile as TCGA-CR-7395-01A, plus a second sample that has no slide."""
    one = bt.io.bulk(GDC)
    one.obs_names = ["TCGA-CR-7395-01A"]
    two = one.copy()
    two.X = two.X * 2
    two.obs_names = ["TCGA-ZZ-0001-01A"]
    return ad.concat([one, two], merge="same")


def test_tcga_barcodes():
    assert tcga_sample("TCGA-CR-7395-01A-01-TS1.0e4a1c7b.svs") == "TCGA-CR-7395-01A"
    assert tcga_sample("tcga-cr-7395-01") == "TCGA-CR-7395-01"
    assert tcga_patient("TCGA-CR-7395-01A-01-TS1") == "TCGA-CR-7395"
    assert tcga_sample("CMU-1-Small-Region.svs") is None


def test_cohort_pairs_slides_and_reports_the_rest(expression, bitro_log):
    slides, cohort = bt.io.cohort(expression, [TCGA_SLIDE, CMU_SLIDE], mpp=0.25)
    assert len(slides) == 1
    assert cohort.n_obs == 1
    row = cohort.obs.iloc[0]
    assert row["sample_id"] == "TCGA-CR-7395-01A"
    assert row["patient_id"] == "TCGA-CR-7395"
    assert row["slide_path"] == str(TCGA_SLIDE)
    # unpaired samples and slides are reported, not dropped silently
    report = cohort.uns["bitro_cohort"]
    assert list(report["samples_without_slide"]) == ["TCGA-ZZ-0001-01A"]
    assert list(report["slides_without_expression"]) == ["CMU-1-Small-Region.svs"]
    assert "1 samples have no slide" in bitro_log.text
    assert "1 slides have no expression" in bitro_log.text
    # the slide's expression annotates its tissue polygon
    sdata = slides[0]
    info = sdata.attrs[K.ATTRS_KEY]
    table = sdata[K.TABLE_KEY]
    assert table.uns["spatialdata_attrs"]["region"] == info[K.ATTR_TISSUE] == "TCGA-CR-7395-01A_tissue"
    assert np.array_equal(np.asarray(table.X), np.asarray(expression[0].X))
    assert table.obs[K.TISSUE_ID_KEY].iloc[0] in sdata[info[K.ATTR_TISSUE]].index
    assert info[K.ATTR_IMAGE] == "TCGA-CR-7395-01A_he_image"
    assert info[K.ATTR_MPP] == 0.25
    assert info[K.PATIENT_ID_KEY] == "TCGA-CR-7395"


def test_cohort_from_mapping_and_sample_sheet(expression, tmp_path):
    slides, cohort = bt.io.cohort(expression, {"TCGA-CR-7395-01A": TCGA_SLIDE}, mpp={"TCGA-CR-7395-01A": 0.25})
    assert cohort.obs_names.tolist() == ["TCGA-CR-7395-01A"]
    # a GDC sample sheet with the slide stored under its file id, as gdc-client downloads it
    (tmp_path / "0e4a1c7b").mkdir()
    shutil.copy(TCGA_SLIDE, tmp_path / "0e4a1c7b" / "TCGA-CR-7395-01A-01-TS1.0e4a1c7b.svs")
    sheet = tmp_path / "gdc_sample_sheet.tsv"
    pd.DataFrame(  # the cart of a cohort: the expression file is listed next to the slide
        {
            "File ID": ["0e4a1c7b", "aa11"],
            "File Name": ["TCGA-CR-7395-01A-01-TS1.0e4a1c7b.svs", "x.rna_seq.augmented_star_gene_counts.tsv"],
            "Data Category": ["Biospecimen", "Transcriptome Profiling"],
            "Case ID": ["TCGA-CR-7395", "TCGA-CR-7395"],
            "Sample ID": ["TCGA-CR-7395-01A", "TCGA-CR-7395-01A"],
        }
    ).to_csv(sheet, sep="\t", index=False)
    slides, cohort = bt.io.cohort(expression, sheet, mpp=0.25)
    assert len(slides) == 1
    assert cohort.obs["slide_path"].iloc[0].endswith("0e4a1c7b.svs")
    # the gdc-client folder layout ({file id}/{file name}) is found from the folder too
    slides, cohort = bt.io.cohort(expression, tmp_path, mpp=0.25)
    assert cohort.obs["slide_path"].iloc[0].endswith("0e4a1c7b.svs")


def test_a_sample_with_two_slides_is_reported(expression, tmp_path, bitro_log):
    for name in ("TCGA-CR-7395-01A-01-TS1.svs", "TCGA-CR-7395-01A-02-TS2.svs"):
        shutil.copy(TCGA_SLIDE, tmp_path / name)
    slides, cohort = bt.io.cohort(expression, tmp_path, mpp=0.25)
    assert len(slides) == 1
    assert "matches 2 slides" in bitro_log.text


def test_cohort_round_trips_through_zarr(expression, tmp_path):
    slides, cohort = bt.io.cohort(expression, [TCGA_SLIDE], mpp=0.25)
    slides[0].write(tmp_path / "slide.zarr")
    back = sd.read_zarr(tmp_path / "slide.zarr")
    assert back.attrs[K.ATTRS_KEY] == slides[0].attrs[K.ATTRS_KEY]
    assert np.array_equal(np.asarray(back[K.TABLE_KEY].X), np.asarray(slides[0][K.TABLE_KEY].X))
    cohort.write_h5ad(tmp_path / "cohort.h5ad")
    back_cohort = ad.read_h5ad(tmp_path / "cohort.h5ad")
    back_cohort.copy()  # the report reads back and copies (string lists would crash numpy < 2.1)
    assert list(back_cohort.uns["bitro_cohort"]["samples_without_slide"]) == ["TCGA-ZZ-0001-01A"]


def test_cohort_errors(expression, tmp_path):
    with pytest.raises(ValueError, match="No sample of `expression`"):
        bt.io.cohort(expression, [CMU_SLIDE], mpp=0.5)
    with pytest.raises(KeyError, match="`sample_key`"):
        bt.io.cohort(expression, [TCGA_SLIDE], sample_key="nope", mpp=0.25)
    with pytest.raises(FileNotFoundError, match="slides"):
        bt.io.cohort(expression, [tmp_path / "missing.svs"])
    with pytest.raises(ValueError, match="(?i)pass it as `mpp=`"):  # the frozen slide records no pixel size
        bt.io.cohort(expression, [TCGA_SLIDE])


def test_duplicated_sample_ids_in_the_expression_are_refused(expression):
    with pytest.warns(UserWarning, match="not unique"):
        doubled = ad.concat([expression[:1], expression[:1]])  # two rows named TCGA-CR-7395-01A: which is the slide's?
    with pytest.raises(
        ValueError, match=r"`expression`: its obs_names have duplicated sample ids: \['TCGA-CR-7395-01A'\]"
    ):
        bt.io.cohort(doubled, [TCGA_SLIDE], mpp=0.25)


def test_a_slide_file_matches_the_sample_named_by_its_stem(expression, tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    shutil.copy(CMU_SLIDE, folder / "S1.svs")
    one = expression[:1].copy()
    one.obs_names = ["S1"]  # predict_slides gives S1.svs the sample id S1: cohort pairs them too
    slides, cohort = bt.io.cohort(one, folder, mpp=0.5)
    assert len(slides) == 1
    assert cohort.obs[K.SLIDE_PATH_KEY].iloc[0] == str(folder / "S1.svs")
    (folder / "._S1.svs").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble file copied beside it: not a slide
    (folder / ".trash").mkdir()
    shutil.copy(CMU_SLIDE, folder / ".trash" / "S1.svs")
    slides, cohort = bt.io.cohort(one, folder, mpp=0.5)
    assert cohort.obs[K.SLIDE_PATH_KEY].tolist() == [str(folder / "S1.svs")]
    assert not len(cohort.uns["bitro_cohort"]["slides_without_expression"])
