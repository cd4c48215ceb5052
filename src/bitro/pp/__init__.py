"""Preprocessing: cell segmentation, cell features, cell-to-spot assignment and cell graphs.

Every function takes the data object first, keyword-only options after ``*``, ``key_added=``
where it writes and keyword-only ``copy=False`` (enforced by ``tests/test_api_conventions.py``).
"""

from ._assign import assign_cells
from ._features import cell_features
from ._graph import cell_graph
from ._segment import segment_cells

__all__ = ["assign_cells", "cell_features", "cell_graph", "segment_cells"]
