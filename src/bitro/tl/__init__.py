"""Tools: fit, transfer, predict, evaluate and cross-validate the BiTro model.

Every function takes the data object first and keyword-only options (enforced by
``tests/test_api_conventions.py``); torch and Lightning load inside the functions.
"""

from ._cv import cross_validate
from ._evaluate import evaluate
from ._fit import fit
from ._predict import predict
from ._slides import predict_slides
from ._transfer import transfer

__all__ = ["cross_validate", "evaluate", "fit", "predict", "predict_slides", "transfer"]
