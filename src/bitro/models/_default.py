"""The bundled default model: BiTro trained on HER2ST sections C2-C4, C5 for early stopping (``scripts/train_default_model.py``)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._model import BiTro

DEFAULT_DIR = Path(__file__).parent / "default"


def default_model_path() -> Path:
    """Folder of the bundled default model (``config.json`` + ``model.safetensors``).

    Returns
    -------
    pathlib.Path
        The folder inside the installed package.

    Examples
    --------
    >>> import bitro as bt
    >>> sorted(p.name for p in bt.models.default_model_path().iterdir())
    ['ATTRIBUTION.txt', 'config.json', 'model.safetensors']
    """
    return DEFAULT_DIR


@cache
def _load() -> BiTro:
    from ._model import BiTro

    if not (DEFAULT_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"the bundled default model is missing from {DEFAULT_DIR}; reinstall bitro or pass `model=`."
        )
    return BiTro.load(DEFAULT_DIR)


def default_model() -> BiTro:
    """The bundled default model, loaded once per session.

    Trained on the HER2+ breast cancer legacy ST sections C2-C4, with C5 as the validation section
    (early stopping and the choice of weights) (Andersson et al., Nature
    Communications 12, 6012 (2021), CC BY 4.0) with the offline pipeline: nuclei of the bundled
    U-Net and morphology features; 50 highly variable genes. Spot-level targets, about 0.69 µm per pixel.
    ``scripts/train_default_model.py`` reproduces it.

    Returns
    -------
    :class:`bitro.models.BiTro`

    Examples
    --------
    >>> import bitro as bt
    >>> model = bt.models.default_model()
    >>> "SCGB2A2" in model.genes, model.config["preprocessing"]["segmentation"]["method"]
    (True, 'unet')
    """
    return _load()
