"""``bt.io.bulk`` on real GDC files (tests/data/bulk, see SOURCE.txt) and on matrices the tests write."""

from __future__ import annotations

import gzip
import logging
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bitro.io._bulk import bulk
from bitro.io._bulk_genes import tpm

DATA = Path(__file__).parent / "data" / "bulk"
GDC = DATA / "gdc-rnaseq-tool_test_set_1.final.tsv.gz"
GENE_INFO = DATA / "gdc-rnaseq-tool_test_set_1.gene_info.tsv.gz"
STAR = DATA / "gdc-rnaseq-tool_test_set_1.counts.tsv.gz"
HTSEQ = DATA / "GenomicDataCommons_example.htseq.counts.gz"
# the GDC sample names CD99 twice: ENSG00000002586.20 and its PAR_Y copy
CD99_WARNING = r"\.tsv(\.gz)?: 1 duplicated gene names made unique"


def read(source, *, expect=(), **kwargs):
    """``bulk(source, **kwargs)``, asserting that exactly the warnings matching ``expect`` are raised."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        adata = bulk(source, **kwargs)
    messages = [str(w.message) for w in record]
    assert len(messages) == len(expect), messages
    for pattern in expect:
        assert any(re.search(pattern, m) for m in messages), (pattern, messages)
    return adata


def read_gdc(source=GDC, **kwargs):
    expect = (CD99_WARNING,) if kwargs.get("gene_id", "symbol") == "symbol" else ()
    return read(source, expect=kwargs.pop("expect", expect), **kwargs)


@pytest.fixture
def log(bitro_log):
    """Records of the ``bitro`` logger (conftest's ``bitro_log``)."""
    return bitro_log


@pytest.fixture(scope="module")
def gdc_table() -> pd.DataFrame:
    """The GDC sample as pandas reads it, without the ``N_*`` rows: the reference for every value."""
    table = pd.read_csv(GDC, sep="\t", skiprows=1)
    return table[~table["gene_id"].str.startswith("N_")].reset_index(drop=True)


def gdc_lines() -> list[str]:
    with gzip.open(GDC, "rt") as fh:
        return fh.read().splitlines(keepends=True)


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


# --- GDC augmented STAR gene counts ---------------------------------------------------------------


def test_gdc_sample_gives_one_sample_of_96_genes(gdc_table, log):
    adata = read_gdc()
    assert adata.shape == (1, 96)
    assert adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X[0], gdc_table["unstranded"].to_numpy())
    assert adata.obs["sample_id"].tolist() == ["gdc-rnaseq-tool_test_set_1.final"]
    assert adata.obs_names.tolist() == adata.obs["sample_id"].tolist()
    assert adata.obs["file"].iloc[0] == GDC.name
    assert adata.obs["gene_model"].iloc[0] == "GENCODE v36"
    assert "dropped 4 summary rows" in log.text
    assert "1 samples x 96 genes" in log.text


def test_gdc_drops_star_summary_rows_and_keeps_them_in_obs():
    adata = read_gdc()
    assert not any(g.startswith("N_") for g in adata.var["gene_id"])
    assert not any(g.startswith("N_") for g in adata.var_names)
    assert adata.obs.loc[:, ["N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous"]].iloc[0].tolist() == [
        38463,
        438275,
        2115417,
        318096,
    ]


def test_gdc_keeps_versioned_ids_names_and_types(gdc_table):
    adata = read_gdc()
    assert list(adata.var.columns) == ["gene_id", "gene_name", "gene_type"]
    assert adata.var["gene_id"].tolist() == gdc_table["gene_id"].tolist()
    assert adata.var["gene_id"].iloc[0] == "ENSG00000000003.15"
    assert all(re.fullmatch(r"ENSG\d{11}\.\d+(_PAR_Y)?", g) for g in adata.var["gene_id"])
    assert adata.var["gene_name"].tolist() == gdc_table["gene_name"].tolist()
    assert adata.var_names[:3].tolist() == ["TSPAN6", "TNMD", "DPM1"]
    assert adata.var.loc["MYH16", "gene_type"] == "transcribed_unitary_pseudogene"


def test_gdc_duplicated_gene_name_is_made_unique_with_a_warning_naming_file_and_count():
    with pytest.warns(UserWarning, match=rf"^{re.escape(str(GDC))}: 1 duplicated gene names made unique"):
        adata = bulk(GDC)
    assert adata.var_names.is_unique
    assert adata.var.loc["CD99", "gene_id"] == "ENSG00000002586.20"
    assert adata.var.loc["CD99-1", "gene_id"] == "ENSG00000002586.20_PAR_Y"


def test_gdc_ensembl_var_names_are_unversioned(gdc_table):
    adata = read_gdc(gene_id="ensembl")  # the PAR_Y suffix keeps the ids unique: no warning
    assert adata.var_names[0] == "ENSG00000000003"
    assert "ENSG00000002586" in adata.var_names
    assert "ENSG00000002586_PAR_Y" in adata.var_names
    assert not any("." in g for g in adata.var_names)
    assert adata.var["gene_id"].tolist() == gdc_table["gene_id"].tolist()  # still versioned in var


def test_gdc_tpm_layer_and_value_tpm(gdc_table):
    counts = gdc_table["unstranded"].to_numpy(float)
    file_tpm = gdc_table["tpm_unstranded"].to_numpy()
    adata = read_gdc()
    assert set(adata.layers) == {"tpm"}
    np.testing.assert_allclose(adata.layers["tpm"][0], file_tpm, rtol=1e-6)  # float32
    as_tpm = read_gdc(value="tpm")
    assert set(as_tpm.layers) == {"counts"}
    np.testing.assert_allclose(as_tpm.X[0], file_tpm, rtol=1e-6)
    np.testing.assert_array_equal(as_tpm.layers["counts"][0], counts)
    assert as_tpm.X.dtype == np.float32


def test_tpm_from_counts_and_total_exon_length_reproduces_gdc_tpm(gdc_table):
    info = pd.read_csv(GENE_INFO, sep="\t").set_index("gene_id")
    lengths = info.loc[gdc_table["gene_id"], "total_exon_length"].to_numpy()
    counts = gdc_table["unstranded"].to_numpy()
    file_tpm = gdc_table["tpm_unstranded"].to_numpy()
    recomputed = tpm(counts, lengths)
    # the file prints TPM with ~16 significant digits; measured max relative error 3e-16
    np.testing.assert_allclose(recomputed, file_tpm, rtol=1e-12, atol=0)
    assert np.array_equal(recomputed == 0, file_tpm == 0)
    assert recomputed.sum() == pytest.approx(1e6)
    # the reader's float32 counts give the same to float32 precision, and several samples at once
    both = tpm(np.vstack([read_gdc().X[0], 2 * counts]), lengths)
    np.testing.assert_allclose(both, np.vstack([file_tpm, file_tpm]), rtol=1e-6)
    # the check can fail: other lengths (or none) do not reproduce the file
    assert not np.allclose(tpm(counts, np.full(len(counts), 1000.0)), file_tpm, rtol=1e-3)
    assert not np.allclose(tpm(counts, lengths + 100), file_tpm, rtol=1e-3)


@pytest.mark.parametrize(
    ("counts", "lengths", "match"),
    [
        ([1, 2], [100, 0], "`lengths` must be finite and positive"),
        ([1, -2], [100, 100], "`counts` must be finite and non-negative"),
        ([1, np.nan], [100, 100], "`counts` must be finite"),
        ([1, 2, 3], [100, 100], "one length per gene"),
        ([[0, 0], [1, 1]], [100, 100], "no counts"),
        (np.ones((2, 2, 2)), [100, 100], "`counts` must be 1-d"),
    ],
)
def test_tpm_rejects_bad_input(counts, lengths, match):
    with pytest.raises(ValueError, match=match):
        tpm(counts, lengths)


def test_star_reads_per_gene_gives_the_counts_of_the_gdc_file(gdc_table, log):
    adata = read(STAR, expect=(), gene_id="ensembl")
    assert adata.shape == (1, 96)
    np.testing.assert_array_equal(adata.X[0], gdc_table["unstranded"].to_numpy())
    assert adata.var["gene_id"].tolist() == gdc_table["gene_id"].tolist()
    assert adata.obs["N_noFeature"].iloc[0] == 2115417  # the unstranded column, as the GDC uses
    assert "STAR ReadsPerGene" in log.text
    assert adata.layers.keys() == set()


# --- HTSeq ---------------------------------------------------------------------------------------


def test_htseq_counts(log):
    raw = pd.read_csv(HTSEQ, sep="\t", header=None, names=["gene_id", "count"])
    adata = read(HTSEQ)
    assert adata.shape == (1, 50)
    assert adata.obs["sample_id"].iloc[0] == "GenomicDataCommons_example"
    assert adata.var["gene_id"].tolist() == raw["gene_id"].tolist()  # versioned (GENCODE v22)
    assert adata.var_names[0] == "ENSG00000000003"  # unversioned, as the file has no gene names
    np.testing.assert_array_equal(adata.X[0], raw["count"].to_numpy())
    assert "has no gene names" in log.text
    assert adata.var_names.equals(read(HTSEQ, gene_id="ensembl").var_names)


def test_htseq_summary_rows_are_dropped_and_logged(tmp_path, log):
    with gzip.open(HTSEQ, "rt") as fh:
        text = fh.read()
    summary = "__no_feature\t11\n__ambiguous\t12\n__too_low_aQual\t13\n__not_aligned\t14\n__alignment_not_unique\t15\n"
    path = write(tmp_path / "s1.htseq.counts.gz", text + summary)
    adata = read(path, gene_id="ensembl")
    assert adata.shape == (1, 50)
    assert not any(g.startswith("__") for g in adata.var["gene_id"])
    assert adata.obs["no_feature"].iloc[0] == 11
    assert adata.obs["alignment_not_unique"].iloc[0] == 15
    assert adata.obs["sample_id"].iloc[0] == "s1"
    assert "dropped 5 summary rows" in log.text


def test_htseq_has_no_tpm():
    with pytest.raises(ValueError, match=r"`value='tpm'`: .*GenomicDataCommons_example\.htseq\.counts\.gz has no TPM"):
        bulk(HTSEQ, value="tpm")


# --- several files -------------------------------------------------------------------------------


def test_directory_of_two_copies_gives_two_samples(tmp_path, gdc_table, log):
    folder = tmp_path / "cohort"
    folder.mkdir()
    shutil.copy(GDC, folder / "sampleA.rna_seq.augmented_star_gene_counts.tsv.gz")
    with gzip.open(GDC, "rb") as src:  # the second copy uncompressed: content, not name, decides
        (folder / "sampleB.rna_seq.augmented_star_gene_counts.tsv").write_bytes(src.read())
    (folder / "annotations.txt").write_text("id\tnotes\n")  # gdc-client leaves these; skipped
    (folder / "logs").mkdir()
    (folder / "logs" / "x.txt").write_text("log\n")
    (folder / "gdc_sample_sheet.2025-01-01.tsv").write_text("File ID\tFile Name\n")
    adata = read_gdc(
        folder, expect=(r"sampleA\.rna_seq\.augmented_star_gene_counts\.tsv\.gz: 1 duplicated gene names",)
    )
    assert adata.shape == (2, 96)
    assert adata.obs["sample_id"].tolist() == ["sampleA", "sampleB"]
    assert adata.obs_names.tolist() == ["sampleA", "sampleB"]
    np.testing.assert_array_equal(adata.X, np.vstack([gdc_table["unstranded"]] * 2))
    assert "2 samples x 96 genes from 2 file(s)" in log.text
    assert "dropped 8 summary rows" in log.text


def test_duplicate_sample_ids_are_made_unique_with_a_warning():
    adata = read([GDC, GDC], expect=(CD99_WARNING, r"2 files: 1 duplicated sample ids made unique"))
    assert adata.obs_names.tolist() == ["gdc-rnaseq-tool_test_set_1.final", "gdc-rnaseq-tool_test_set_1.final-1"]
    assert adata.obs["sample_id"].tolist() == adata.obs_names.tolist()


def test_sample_id_argument():
    assert read_gdc(sample_id="TCGA-XX-0001-01A").obs_names.tolist() == ["TCGA-XX-0001-01A"]
    two = read([GDC, STAR], expect=(CD99_WARNING,), sample_id=["a", "b"])
    assert two.obs["sample_id"].tolist() == ["a", "b"]
    assert two.obs["file"].tolist() == [GDC.name, STAR.name]
    assert two.layers.keys() == set()  # the STAR file has no TPM
    as_array = read([GDC, STAR], expect=(CD99_WARNING,), sample_id=np.array(["c", "d"]))
    assert as_array.obs_names.tolist() == ["c", "d"]
    # ids are made valid element names
    assert read_gdc(sample_id="tumour 1/A").obs_names.tolist() == ["tumour_1_A"]
    with pytest.raises(ValueError, match=r"`sample_id` has 1 names but 2 samples"):
        read([GDC, STAR], expect=(), sample_id="a")
    with pytest.raises(TypeError, match="`sample_id`"):
        read(GDC, expect=(), sample_id=[1])


def test_gdc_client_layout_with_sample_sheet(tmp_path):
    sheet = pd.DataFrame(
        {
            "File ID": ["0d3ddab0-4c6e-4f96-88dc-3c9813d9c292", "cc802aa8-e299-40c3-9539-a854ef950ff6"],
            "File Name": [
                "2a3814fb-e9b1-404c-95da-db348ecfa14a.rna_seq.augmented_star_gene_counts.tsv",
                "6f475a4d-53ea-4110-b80f-d519289d41f9.rna_seq.augmented_star_gene_counts.tsv",
            ],
            "Data Category": "Transcriptome Profiling",
            "Data Type": "Gene Expression Quantification",
            "Project ID": "TCGA-LUAD",
            "Case ID": ["TCGA-73-4658", "TCGA-73-4658"],
            "Sample ID": ["TCGA-73-4658-01A", "TCGA-73-4658-11A"],
            "Sample Type": ["Primary Tumor", "Solid Tissue Normal"],
        }
    )
    with gzip.open(GDC, "rb") as src:
        content = src.read()
    for file_id, name in zip(sheet["File ID"], sheet["File Name"], strict=True):
        (tmp_path / file_id).mkdir()
        (tmp_path / file_id / name).write_bytes(content)
    path = tmp_path / "gdc_sample_sheet.2025-05-22.tsv"
    sheet.to_csv(path, sep="\t", index=False)
    adata = read_gdc(path)
    assert adata.obs_names.tolist() == ["TCGA-73-4658-01A", "TCGA-73-4658-11A"]
    assert adata.obs["patient_id"].tolist() == ["TCGA-73-4658"] * 2
    assert adata.obs["sample_type"].tolist() == ["Primary Tumor", "Solid Tissue Normal"]
    assert adata.obs["file_id"].tolist() == sheet["File ID"].tolist()
    assert adata.obs["file"].tolist() == sheet["File Name"].tolist()
    # without the sheet, the folder gives the file names' UUIDs as sample ids
    by_folder = read_gdc(tmp_path)
    assert by_folder.obs_names.tolist() == [
        "2a3814fb-e9b1-404c-95da-db348ecfa14a",
        "6f475a4d-53ea-4110-b80f-d519289d41f9",
    ]
    # a GDC manifest (id, filename, md5, size, state) works too, with file-name sample ids
    manifest = tmp_path / "gdc_manifest.txt"
    pd.DataFrame(
        {"id": sheet["File ID"], "filename": sheet["File Name"], "md5": "x", "size": 1, "state": "released"}
    ).to_csv(manifest, sep="\t", index=False)
    assert read_gdc(manifest).obs_names.tolist() == by_folder.obs_names.tolist()
    # a listed file that is not there
    (tmp_path / sheet["File ID"][1] / sheet["File Name"][1]).unlink()
    with pytest.raises(FileNotFoundError, match=r"`source`: the sample sheet .*gdc_sample_sheet.* lists '6f475a4d"):
        bulk(path)


def test_files_with_different_genes_raise_naming_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"same genes in the same order, but .*htseq\.counts\.gz has 50 genes"):
        read([GDC, HTSEQ], expect=())
    lines = gdc_lines()
    lines[7], lines[8] = lines[8], lines[7]  # swap two genes
    swapped = write(tmp_path / "swapped.tsv", "".join(lines))
    with pytest.raises(
        ValueError, match=r"gene 2 of .*swapped\.tsv is 'ENSG00000000419\.13' where .* has 'ENSG00000000005\.6'"
    ):
        read([GDC, swapped], expect=())


# --- plain matrices ------------------------------------------------------------------------------


def test_csv_genes_x_samples_detected_from_ensembl_rows(tmp_path, log):
    ids = [f"ENSG0000000000{i}.1" for i in range(6)]
    frame = pd.DataFrame(np.arange(18).reshape(6, 3), index=pd.Index(ids, name="gene_id"), columns=["S1", "S2", "S3"])
    frame.insert(0, "gene_name", ["A", "B", "C", "D", "E", "F"])
    path = tmp_path / "genes_by_samples.csv"
    frame.to_csv(path)
    adata = read(path)
    assert adata.shape == (3, 6)
    assert adata.obs_names.tolist() == ["S1", "S2", "S3"]
    assert adata.var_names.tolist() == ["A", "B", "C", "D", "E", "F"]
    assert adata.var["gene_id"].tolist() == ids
    np.testing.assert_array_equal(adata.X, np.arange(18).reshape(6, 3).T)
    assert re.search(r"genes_by_samples\.csv: read as genes x samples \(row names look like Ensembl", log.text)
    assert read(path, gene_id="ensembl").var_names[0] == "ENSG00000000000"


def test_csv_samples_x_genes_detected_and_logged(tmp_path, log):
    genes = ["TP53", "EGFR", "MYC", "KRAS", "PTEN"]
    frame = pd.DataFrame(np.arange(15).reshape(3, 5), index=["s1", "s2", "s3"], columns=genes)
    path = tmp_path / "samples_by_genes.tsv"
    frame.to_csv(path, sep="\t", index_label="sample")
    adata = read(path)
    assert adata.obs_names.tolist() == ["s1", "s2", "s3"]
    assert adata.var_names.tolist() == genes
    assert "gene_id" not in adata.var  # symbols only
    np.testing.assert_array_equal(adata.X, frame.to_numpy())
    warning = [r for r in log.records if r.levelno == logging.WARNING and "samples x genes" in r.getMessage()]
    assert len(warning) == 1  # a guess from the shape is logged as a warning
    assert "longer axis (columns) taken as genes" in warning[0].getMessage()
    with pytest.raises(ValueError, match=r"`gene_id='ensembl'`: .*samples_by_genes\.tsv has no Ensembl gene ids"):
        read(path, expect=(), gene_id="ensembl")


def test_barcode_sample_names_beat_the_shape(tmp_path, log):
    # more samples than genes: the shape alone would say rows are genes, the TCGA barcodes say samples
    barcodes = [f"TCGA-73-465{i}-01A" for i in range(4)]
    frame = pd.DataFrame(np.arange(12).reshape(4, 3), index=barcodes, columns=["TP53", "EGFR", "MYC"])
    path = tmp_path / "m.csv"
    frame.to_csv(path, index_label="")  # header starts with an empty name
    adata = read(path)
    assert adata.obs_names.tolist() == barcodes
    assert adata.var_names.tolist() == ["TP53", "EGFR", "MYC"]
    assert "row names look like GDC UUIDs or TCGA-style barcodes" in log.text
    # orientation= overrides the detection
    flipped = read(path, orientation="genes_x_samples")
    assert flipped.obs_names.tolist() == ["TP53", "EGFR", "MYC"]
    np.testing.assert_array_equal(flipped.X, frame.to_numpy().T)


def test_square_matrix_without_cues_needs_orientation(tmp_path):
    path = tmp_path / "square.csv"
    pd.DataFrame(np.eye(3), index=["a", "b", "c"], columns=["x", "y", "z"]).to_csv(path, index_label="id")
    with pytest.raises(ValueError, match=r"square\.csv: cannot tell whether rows or columns are genes.*orientation="):
        bulk(path)
    adata = read(path, orientation="samples_x_genes")
    assert adata.obs_names.tolist() == ["a", "b", "c"]
    assert adata.var_names.tolist() == ["x", "y", "z"]


def test_r_style_header_and_numeric_sample_names(tmp_path):
    r_style = write(tmp_path / "r.tsv", '"s1"\t"s2"\n"ENSG00000000003.1"\t1\t2\n"ENSG00000000005.1"\t3\t4\n')
    adata = read(r_style, gene_id="ensembl")
    assert adata.obs_names.tolist() == ["s1", "s2"]
    np.testing.assert_array_equal(adata.X, [[1, 3], [2, 4]])
    numeric = write(tmp_path / "n.csv", "gene_id,1,2\nENSG00000000003.1,5,6\nENSG00000000005.1,7,8\n")
    assert read(numeric, gene_id="ensembl").obs_names.tolist() == ["1", "2"]
    headerless = write(tmp_path / "h.csv", "TP53,5,6\nEGFR,7,8\n")
    with pytest.raises(ValueError, match=r"h\.csv: the first row 'TP53,5,6' looks like data"):
        bulk(headerless)


def test_counts_beyond_float32_precision_are_logged(tmp_path, log):
    path = write(tmp_path / "big.csv", "gene_id,S1\nENSG00000000003.1,33554433\nENSG00000000005.1,3\n")
    adata = read(path, gene_id="ensembl")
    assert adata.X.dtype == np.float32
    assert adata.X[0, 0] == 2**25  # 2**25 + 1 is not a float32
    assert "float32 keeps integers exactly only up to 2**24" in log.text


def test_matrix_duplicated_gene_names_are_made_unique_with_a_warning(tmp_path):
    path = write(tmp_path / "dups.csv", "sample,TP53,TP53,MYC\nTCGA-73-4658-01A,1,2,3\nTCGA-73-4659-01A,4,5,6\n")
    adata = read(path, expect=(r"dups\.csv: 1 duplicated gene names made unique",))
    assert adata.var_names.tolist() == ["TP53", "TP53-1", "MYC"]  # not pandas' 'TP53.1'
    np.testing.assert_array_equal(adata.X, [[1, 2, 3], [4, 5, 6]])


def test_mixed_read_round_trips_through_h5ad(tmp_path):
    import anndata as ad

    adata = read([GDC, STAR, GDC], expect=(CD99_WARNING, "duplicated sample ids"))
    path = tmp_path / "cohort.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.X, adata.X)
    assert back.obs_names.tolist() == adata.obs_names.tolist()
    assert back.var["gene_id"].tolist() == adata.var["gene_id"].tolist()
    assert back.obs["gene_model"].tolist()[0] == "GENCODE v36"


# --- bad input -----------------------------------------------------------------------------------


def test_missing_files_name_the_argument_and_path(tmp_path):
    missing = tmp_path / "nope.tsv.gz"
    with pytest.raises(FileNotFoundError, match=rf"`source`: {re.escape(str(missing))} does not exist"):
        bulk(missing)
    with pytest.raises(FileNotFoundError, match=rf"`source\[1\]`: {re.escape(str(missing))} does not exist"):
        bulk([GDC, missing])
    with pytest.raises(ValueError, match="`source` is an empty list"):
        bulk([])
    with pytest.raises(TypeError, match="`source` must be a path"):
        bulk(3)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match=r"`source`: .*empty_dir holds no counts files"):
        bulk(tmp_path / "empty_dir")


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("empty.tsv", "", r"empty\.tsv: the file is empty"),
        ("comments.tsv.gz", "# gene-model: GENCODE v36\n", r"comments\.tsv\.gz: the file is empty"),
        ("header.csv", "gene,S1,S2\n", r"header\.csv: the matrix is empty"),
        ("no_genes.tsv", "gene\tS1\nN_unmapped\t3\n", r"no_genes\.tsv: the matrix has no genes"),
        ("one_column.txt", "TP53\nEGFR\n", r"one_column\.txt: not a counts table"),
        ("ragged.csv", "gene,S1,S2\nTP53,1,2\nEGFR,1,2,3,4\n", r"ragged\.csv: cannot parse the table"),
    ],
)
def test_empty_or_malformed_files_raise_naming_the_file(tmp_path, name, text, match):
    path = write(tmp_path / name, text)
    with pytest.raises(ValueError, match=match):
        bulk(path)


def test_gdc_header_only_raises(tmp_path):
    path = write(tmp_path / "head.tsv", "".join(gdc_lines()[:2]))
    with pytest.raises(ValueError, match=r"head\.tsv: the table is empty"):
        bulk(path)


def test_non_numeric_values_raise_naming_file_value_and_gene(tmp_path):
    lines = gdc_lines()
    lines[10] = lines[10].replace("\t80\t", "\tabc\t", 1)  # C1orf112 unstranded
    path = write(tmp_path / "bad.tsv.gz", "".join(lines))
    with pytest.raises(
        ValueError, match=r"bad\.tsv\.gz: a non-numeric or missing count: 'abc' at gene 'ENSG00000000460\.17'"
    ):
        bulk(path)
    matrix = write(tmp_path / "bad.csv", "gene_id,S1,S2\nENSG00000000003.1,1,2\nENSG00000000005.1,3,NA\n")
    with pytest.raises(ValueError, match=r"bad\.csv: .*'NA' at gene 'ENSG00000000005\.1', sample 'S2'"):
        bulk(matrix)
    blank = write(tmp_path / "blank.csv", "gene_id,S1,S2\nENSG00000000003.1,1,\nENSG00000000005.1,3,4\n")
    with pytest.raises(ValueError, match=r"blank\.csv: .*an empty value at gene 'ENSG00000000003\.1', sample 'S2'"):
        bulk(blank)
    negative = write(tmp_path / "neg.csv", "gene_id,S1\nENSG00000000003.1,-1\nENSG00000000005.1,3\n")
    with pytest.raises(ValueError, match=r"neg\.csv: a negative value: -1"):
        bulk(negative)
    tpm_bad = gdc_lines()
    tpm_bad[6] = tpm_bad[6].replace("92548.07751878405", "inf")
    with pytest.raises(
        ValueError, match=r"tpm\.tsv: a non-numeric or missing TPM value: inf at gene 'ENSG00000000003\.15'"
    ):
        bulk(write(tmp_path / "tpm.tsv", "".join(tpm_bad)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gene_id": "entrez"}, r"`gene_id` must be one of \['symbol', 'ensembl'\], got 'entrez'"),
        ({"value": "fpkm"}, r"`value` must be one of \['counts', 'tpm'\], got 'fpkm'"),
        ({"orientation": "rows"}, r"`orientation` must be one of"),
        ({"orientation": "samples_x_genes"}, r"`orientation='samples_x_genes'`: .*final\.tsv\.gz is a GDC"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bulk(GDC, **kwargs)


# --- FPKM / TPM files are not counts -------------------------------------------------------------

# a legacy GDC HTSeq-FPKM file: headerless like HTSeq counts, but the values are not counts
FPKM_TEXT = "ENSG00000000003.13\t4.0\nENSG00000000005.5\t0\nENSG00000000419.11\t12.853\n"


@pytest.mark.parametrize("name", ["x.FPKM.txt.gz", "x.FPKM-UQ.txt", "x.htseq.counts"])
def test_fpkm_values_are_not_read_as_htseq_counts(tmp_path, name):
    path = write(tmp_path / name, FPKM_TEXT)
    with pytest.raises(
        ValueError,
        match=rf"{re.escape(name)}: a non-integer count: 12\.853 at gene 'ENSG00000000419\.11'.*FPKM",
    ):
        bulk(path)


def test_gdc_and_star_counts_must_be_integers(tmp_path):
    lines = gdc_lines()
    lines[10] = lines[10].replace("\t80\t", "\t80.5\t", 1)  # C1orf112 unstranded
    with pytest.raises(ValueError, match=r"gdc\.tsv: a non-integer count: 80\.5 at gene 'ENSG00000000460\.17'"):
        bulk(write(tmp_path / "gdc.tsv", "".join(lines)))
    with gzip.open(STAR, "rt") as fh:
        star = fh.read().replace("ENSG00000000005.6\t2\t", "ENSG00000000005.6\t2.25\t", 1)
    with pytest.raises(ValueError, match=r"star\.tab: a non-integer count: 2\.25 at gene 'ENSG00000000005\.6'"):
        bulk(write(tmp_path / "star.tab", star))
    # integral values written as floats are counts; a plain matrix keeps whatever values it holds
    lines = gdc_lines()
    lines[10] = lines[10].replace("\t80\t", "\t80.0\t", 1)
    assert read_gdc(write(tmp_path / "float.tsv", "".join(lines))).X[0, 4] == 80
    matrix = write(tmp_path / "tpm.csv", "gene_id,S1\nENSG00000000003.1,1.5\nENSG00000000005.1,3\n")
    np.testing.assert_array_equal(read(matrix, gene_id="ensembl").X, [[1.5, 3]])


def test_directory_of_a_legacy_gdc_download_skips_fpkm_files(tmp_path, log):
    for i, name in enumerate(["s1.htseq.counts.gz", "s1.FPKM.txt.gz", "s1.FPKM-UQ.txt.gz", "s1.fpkm.tsv"]):
        (tmp_path / f"file{i}").mkdir()
        if name.endswith(".htseq.counts.gz"):
            shutil.copy(HTSEQ, tmp_path / f"file{i}" / name)
        else:
            write(tmp_path / f"file{i}" / name, FPKM_TEXT)
    adata = read(tmp_path)
    assert adata.shape == (1, 50)
    assert adata.obs["sample_id"].tolist() == ["s1"]
    assert re.search(r"skipping 3 FPKM files in .*: not counts", log.text)


# --- sample sheets of carts with other files -----------------------------------------------------


def test_sample_sheet_of_a_cart_with_slides_reads_the_expression_rows(tmp_path, log):
    sheet = pd.DataFrame(
        {
            "File ID": ["id-counts", "id-slide", "id-clinical", "id-fpkm"],
            "File Name": [
                "a.rna_seq.augmented_star_gene_counts.tsv",
                "b.svs",
                "nationwidechildrens.org_clinical_patient_luad.txt",
                "c.FPKM.txt.gz",
            ],
            "Data Category": ["Transcriptome Profiling", "Biospecimen", "Clinical", "Transcriptome Profiling"],
            "Data Type": [
                "Gene Expression Quantification",
                "Slide Image",
                "Clinical Supplement",
                "Gene Expression Quantification",
            ],
            "Case ID": "TCGA-73-4658",
            "Sample ID": ["TCGA-73-4658-01A", "TCGA-73-4658-01A", "", "TCGA-73-4658-01A"],
        }
    )
    for file_id, name in zip(sheet["File ID"], sheet["File Name"], strict=True):
        (tmp_path / file_id).mkdir()
        if name.endswith(".svs"):
            (tmp_path / file_id / name).write_bytes(b"II*\x00" + bytes(64))  # a TIFF, as slides are
        else:
            write(tmp_path / file_id / name, "bcr_patient_barcode\tgender\nTCGA-73-4658\tMALE\n")
    shutil.copy(GDC, tmp_path / "id-counts" / "a.rna_seq.augmented_star_gene_counts.tsv")  # gzip inside: fine
    path = tmp_path / "gdc_sample_sheet.tsv"
    sheet.to_csv(path, sep="\t", index=False)
    adata = read_gdc(path)
    assert adata.obs_names.tolist() == ["TCGA-73-4658-01A"]
    assert adata.obs["file"].tolist() == ["a.rna_seq.augmented_star_gene_counts.tsv"]
    assert re.search(r"skipping 3 of the 4 rows of .*gdc_sample_sheet\.tsv", log.text)
    # a manifest has no Data Type: the file names decide
    manifest = tmp_path / "gdc_manifest.txt"
    pd.DataFrame({"id": sheet["File ID"][:2], "filename": sheet["File Name"][:2]}).to_csv(
        manifest, sep="\t", index=False
    )
    assert read_gdc(manifest).obs_names.tolist() == ["a"]
    # a sheet of slides only
    sheet.iloc[1:2].to_csv(path, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"the sample sheet .*gdc_sample_sheet\.tsv lists no counts files"):
        bulk(path)


def test_keys_are_the_constants():
    from bitro import _constants as K

    adata = read_gdc(value="tpm")
    assert list(adata.var.columns) == [K.GENE_ID_KEY, K.GENE_NAME_KEY, K.GENE_TYPE_KEY]
    assert set(adata.layers) == {K.COUNTS_LAYER}
    assert {K.FILE_KEY, K.GENE_MODEL_KEY} <= set(adata.obs.columns)
    assert set(read_gdc().layers) == {K.TPM_LAYER}


def test_header_with_numeric_sample_names_and_a_named_first_column(tmp_path):
    # any first-column name made of words like gene / sample / id / name / symbol marks a header
    path = write(tmp_path / "n.tsv", "Ensembl Gene ID\t101\t102\nENSG00000000003.1\t5\t6\nENSG00000000005.1\t7\t8\n")
    adata = read(path, gene_id="ensembl")
    assert adata.obs_names.tolist() == ["101", "102"]
    np.testing.assert_array_equal(adata.X, [[5, 7], [6, 8]])


def test_boolean_values_are_not_numbers(tmp_path):
    path = write(tmp_path / "b.csv", "gene_id,S1\nENSG00000000003.1,True\nENSG00000000005.1,False\n")
    with pytest.raises(ValueError, match=r"b\.csv: a non-numeric or missing value: True at gene 'ENSG00000000003\.1'"):
        bulk(path)
