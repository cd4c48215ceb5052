"""Tools: fit, transfer, predict and evaluate the BiTro model.

Nothing is public yet; conventions as for :mod:`bitro.pp`.
"""

__all__: list[str] = []
