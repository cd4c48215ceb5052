"""Readers: Visium, legacy ST, HEST-1k, whole-slide images and bulk cohorts into SpatialData.

Nothing is public yet; the readers land with the readers issue.
"""

__all__: list[str] = []
