"""Shared fixtures: synthetic data built once per session, deep-copied for each test that may change it."""

from __future__ import annotations

import copy

import pytest


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
        # the toy nuclei are flat discs, which the watershed suits (and the U-Net never saw)
        ensure_preprocessed(s, preprocessing_settings({"segmentation": {"method": "watershed"}}), kind="spot")
    return sections


@pytest.fixture
def toy_sections(_toy_sections):
    """Copies of the four preprocessed toy sections."""
    return copy.deepcopy(_toy_sections)
