"""Cell types of the synthetic tissue: nucleus morphology and expression programs.

Both depend only on ``program_seed`` (never on the layout seed), so every toy dataset drawn with
the same ``program_seed`` shares genes, morphology and programs, and a model trained on one
transfers to another.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class CellType:
    """Morphology of one synthetic cell type (lengths in µm, stain in optical density units)."""

    name: str
    radius_um: float
    """Mean semi-major axis of the nucleus."""
    axis_ratio: float
    """Semi-minor / semi-major axis (1 = round, small = spindle)."""
    irregularity: float
    """Amplitude of the boundary's low harmonics (0 = smooth ellipse)."""
    hematoxylin: float
    """Mean hematoxylin concentration inside the nucleus."""
    texture: float
    """Amplitude of the chromatin grain (relative to ``hematoxylin``)."""
    rim: float
    """Vesicular chromatin: how much paler the centre is than the rim (0-1)."""
    density: float
    """Probability that a lattice site inside a region of this type holds a cell."""
    eosin: float
    """Eosin concentration of the cytoplasm / stroma around cells of this type."""

    def to_dict(self) -> dict:
        """JSON-serialisable dictionary of the fields."""
        return asdict(self)


# Loosely modelled on breast-cancer H&E: large vesicular tumour nuclei, spindle fibroblasts,
# small dark lymphocytes and irregular myeloid cells. Extents stay below half the lattice spacing
# so that true nuclei never overlap.
_CANONICAL = (
    CellType("tumor", 4.6, 0.82, 0.06, 0.85, 0.40, 0.55, 0.95, 0.30),
    CellType("stroma", 5.4, 0.34, 0.03, 1.25, 0.12, 0.0, 0.45, 0.60),
    CellType("lymphocyte", 2.7, 0.92, 0.03, 1.75, 0.08, 0.0, 0.90, 0.22),
    CellType("myeloid", 3.9, 0.68, 0.16, 1.05, 0.25, 0.15, 0.60, 0.40),
)

MAX_NUCLEUS_RADIUS_UM = 6.0
"""Largest extent of any nucleus from its centre (morphology and jitter are clipped to it)."""


@lru_cache(maxsize=16)
def cell_types(n_cell_types: int, program_seed: int) -> tuple[CellType, ...]:
    """The first four canonical types, then further types drawn from ``program_seed``."""
    out = list(_CANONICAL[:n_cell_types])
    for i in range(len(out), n_cell_types):
        rng = np.random.default_rng([program_seed, 7919, i])
        out.append(
            CellType(
                name=f"type{i}",
                radius_um=float(rng.uniform(2.8, 5.0)),
                axis_ratio=float(rng.uniform(0.35, 0.95)),
                irregularity=float(rng.uniform(0.02, 0.15)),
                hematoxylin=float(rng.uniform(0.8, 1.7)),
                texture=float(rng.uniform(0.05, 0.4)),
                rim=float(rng.uniform(0.0, 0.5)),
                density=float(rng.uniform(0.45, 0.95)),
                eosin=float(rng.uniform(0.2, 0.6)),
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class Programs:
    """Expression programs: mean counts per cell of each gene in each type, and the cell-state loading."""

    rates: np.ndarray
    """(n_cell_types, n_genes) mean counts of a cell of each type at state 0."""
    marker_of: np.ndarray
    """(n_genes,) index of the type a gene marks, -1 for none."""
    state_loading: np.ndarray
    """(n_genes,) log-fold change per unit of the cell's continuous state (linked to nucleus size)."""


@lru_cache(maxsize=16)
def expression_programs(n_genes: int, n_cell_types: int, program_seed: int) -> Programs:
    """Draw gene ``j``'s program from its own stream, so it does not depend on ``n_genes``."""
    rates = np.empty((n_cell_types, n_genes))
    marker_of = np.full(n_genes, -1)
    loading = np.zeros(n_genes)
    for j in range(n_genes):
        rng = np.random.default_rng([program_seed, n_cell_types, j])
        base = rng.normal(np.log(0.4), 1.0)
        effect = rng.normal(0.0, 0.25, n_cell_types)
        if rng.random() < 0.6:  # a marker: 4-20 fold higher in one type
            marker_of[j] = rng.integers(n_cell_types)
            effect[marker_of[j]] += np.log(rng.uniform(4.0, 20.0))
        if rng.random() < 0.2:  # follows the continuous cell state (and so nucleus size)
            loading[j] = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.7)
        rates[:, j] = np.exp(base + effect)
    for arr in (rates, marker_of, loading):
        arr.flags.writeable = False  # shared through the cache
    return Programs(rates=rates, marker_of=marker_of, state_loading=loading)
