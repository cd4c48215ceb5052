"""Preprocessing: cell segmentation, cell features, cell-to-spot assignment, cell graphs, gene selection.

Nothing is public yet. Every function added here takes the object first, keyword-only options
after ``*``, ``key_added=`` where it writes and keyword-only ``copy=False`` (enforced by
``tests/test_api_conventions.py``).
"""

__all__: list[str] = []
