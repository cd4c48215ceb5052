"""The ``bitro`` logger. Levels follow ``bt.settings.verbosity``."""

from __future__ import annotations

import logging

logger = logging.getLogger("bitro")

if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(levelname)s [bitro] %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.WARNING)
    # The handler above prints once; do not pass records on to the root logger as well.
    logger.propagate = False
