"""The BiTro cell-level multiple-instance-learning model (torch + Lightning).

Nothing is public yet. Importing this submodule must stay cheap: torch is imported inside the
modules that define the networks, not here.
"""

__all__: list[str] = []
