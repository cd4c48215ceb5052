"""Cellpose (3.x) as a tile segmenter for :func:`bitro.pp.segment_cells`.

:func:`cellpose_segmenter` loads a model once and returns a callable that maps an RGB tile
``(H, W, 3)`` uint8 to an ``int32`` label image ``(H, W)`` (0 = background). It never downloads:
built-in names (``"cyto3"``, ``"nuclei"``, ...) load only when their weights are already in
cellpose's model cache; anything else must be a local weights file saved by cellpose
(``CellposeModel.net.save_model`` / ``cellpose.train.train_seg``), of any ``CPnet`` width.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bitro._logging import logger
from bitro._validate import check_float

DEFAULT_NUCLEUS_DIAMETER_UM = 8.0
"""Nucleus diameter (µm) the input is rescaled for when ``diameter_um`` is not given (H&E nuclei: ~5-12 µm)."""


def _import_cellpose():
    """``cellpose.models``; torch's mkldnn shim warns that ``torch.jit.script_method`` is deprecated on import."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script_method.*", category=DeprecationWarning)
        try:
            from cellpose import models
        except ImportError as err:
            raise ImportError(
                '`method="cellpose"` needs cellpose 3: pip install "bitro[cellpose]" (bitro\'s own offline '
                'segmenter is method="unet").'
            ) from err

    return models


def _builtin_weights(name: str) -> Path | None:
    """The cached weights file of built-in model ``name`` (as cellpose names it), without downloading."""
    models = _import_cellpose()
    basename = f"{name}torch_0" if name in ("cyto", "cyto2", "nuclei") else name
    return Path(models.MODEL_DIR) / basename


def cellpose_segmenter(
    model: str | os.PathLike | None,
    *,
    mpp: float,
    diameter_um: float | None = None,
    channels=(0, 0),
    gpu: bool | None = None,
    **eval_kwargs,
) -> Callable[[np.ndarray], np.ndarray]:
    """A function that segments nuclei in an RGB tile with a cellpose model.

    Parameters
    ----------
    model
        Path to a weights file saved by cellpose 3 (any ``CPnet`` width; the network's
        ``diam_mean`` is read from the file), or the name of a cellpose built-in model
        (``"cyto3"``, ``"nuclei"``, ...) whose weights are already in cellpose's model cache
        (``~/.cellpose/models`` or ``$CELLPOSE_LOCAL_MODELS_PATH``). Nothing is downloaded.
        ``None`` means ``"nuclei"``.
    mpp
        µm per pixel of the tiles the returned function will receive.
    diameter_um
        Expected nucleus diameter in µm; the tile is rescaled so that ``diameter_um / mpp`` pixels
        match the model's ``diam_mean``. Default :data:`DEFAULT_NUCLEUS_DIAMETER_UM` (8 µm).
    channels
        cellpose's ``channels`` (``(0, 0)``: the grey-scale mean of R, G and B).
    gpu
        Use a CUDA / MPS device; ``None`` uses one when torch sees one.
    **eval_kwargs
        Passed to :meth:`cellpose.models.CellposeModel.eval` (e.g. ``flow_threshold``,
        ``cellprob_threshold``, ``invert=True`` for the fluorescence-trained built-in ``"nuclei"``
        model on H&E, ``batch_size``).

    Returns
    -------
    A picklable callable ``tile (H, W, 3) uint8 -> labels (H, W) int32``. It is safe to call from
    several threads (one lock serialises calls to the model; torch parallelises inside each call).
    Unpickled in another process, it reloads the model there on first use.
    """
    mpp = check_float(mpp, "mpp", min_value=0, strict_min=True)
    diameter_um = DEFAULT_NUCLEUS_DIAMETER_UM if diameter_um is None else diameter_um
    diameter_um = check_float(diameter_um, "diameter_um", min_value=0, strict_min=True)
    if len(tuple(channels)) != 2:
        raise ValueError(f"`channels` must be two integers (cellpose's channels), got {channels!r}.")
    for key in ("diameter", "rescale", "channels", "channel_axis"):
        if key in eval_kwargs:
            raise TypeError(f"`{key}` is set by cellpose_segmenter (from `mpp`, `diameter_um`, `channels`).")
    return CellposeSegmenter(
        _resolve_model(model),
        diameter_px=diameter_um / mpp,
        channels=tuple(int(c) for c in channels),
        gpu=gpu,
        eval_kwargs=dict(eval_kwargs),
    )


def _resolve_model(model) -> tuple[str, str]:
    """``("builtin", name)`` or ``("file", path)``; raise when the weights are not on this machine."""
    if model is None:
        model = "nuclei"
    if not isinstance(model, str | os.PathLike):
        raise TypeError(f"`model` must be a path or a cellpose model name, got {type(model).__name__}.")
    path = Path(model).expanduser()
    if path.is_file():
        return "file", str(path.resolve())
    models = _import_cellpose()
    name = os.fspath(model)
    if isinstance(model, str) and name in models.MODEL_NAMES:
        cached = _builtin_weights(name)
        if cached.is_file():
            return "builtin", name
        raise FileNotFoundError(
            f"cellpose built-in model {name!r} is not in cellpose's model cache ({cached} does not exist) and "
            "bitro never downloads weights. Download it once where there is network access (e.g. "
            f"`cellpose.models.CellposeModel(model_type={name!r})`), copy it into {models.MODEL_DIR} "
            "(or set CELLPOSE_LOCAL_MODELS_PATH), or pass the path of a local weights file as `model`."
        )
    if path.exists():
        raise FileNotFoundError(f"`model`: {os.fspath(path)!r} is not a file (a cellpose weights file is needed).")
    raise FileNotFoundError(
        f"`model`: cellpose weights file {os.fspath(path)!r} does not exist (and it is not a built-in model name: "
        f"{', '.join(models.MODEL_NAMES[:4])}, ...). Nothing is downloaded."
    )


def _load(kind: str, ref: str, gpu: bool | None):
    """A ``CellposeModel`` for a cached built-in model or a local weights file (any ``CPnet`` width)."""
    import torch

    models = _import_cellpose()
    from cellpose.resnet_torch import CPnet

    use_gpu = (torch.cuda.is_available() or torch.backends.mps.is_available()) if gpu is None else bool(gpu)
    if kind == "builtin":  # weights checked to be cached: cellpose's own path finds them without downloading
        return models.CellposeModel(gpu=use_gpu, model_type=ref)
    try:
        state = torch.load(ref, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a file that is not a state dict
        raise ValueError(f"{ref}: not a cellpose weights file ({type(err).__name__}: {err}).") from err
    if not isinstance(state, dict) or "diam_mean" not in state or "output.2.weight" not in state:
        raise ValueError(f"{ref}: not a cellpose 3 weights file (no `diam_mean` / `output` entries).")
    if "W2" in state:
        raise ValueError(f"{ref}: a cellpose 4 (Cellpose-SAM) weights file; bitro uses cellpose 3.")
    nbase = [int(state["downsample.down.res_down_0.conv.conv_0.2.weight"].shape[1])]
    level = 0
    while f"downsample.down.res_down_{level}.conv.conv_0.2.weight" in state:
        nbase.append(int(state[f"downsample.down.res_down_{level}.conv.conv_0.2.weight"].shape[0]))
        level += 1
    diam_mean = float(state["diam_mean"].reshape(-1)[0])
    cp = models.CellposeModel(gpu=use_gpu, pretrained_model=False, diam_mean=diam_mean, nchan=nbase[0])
    net = CPnet(nbase, int(state["output.2.weight"].shape[0]), 3, mkldnn=cp.mkldnn, max_pool=True, diam_mean=diam_mean)
    net.load_state_dict(state)
    cp.net = net.to(cp.device)
    cp.net.eval()
    cp.nbase = nbase
    cp.pretrained_model = ref
    cp.diam_mean = diam_mean
    cp.diam_labels = float(state["diam_labels"].reshape(-1)[0]) if "diam_labels" in state else diam_mean
    return cp


_LOADED: dict[tuple, object] = {}
"""Models loaded in this process (worker processes), by (source, gpu, weights file's mtime)."""


class CellposeSegmenter:
    """Callable tile segmenter made by :func:`cellpose_segmenter` (see there)."""

    def __init__(self, source: tuple[str, str], *, diameter_px: float, channels, gpu, eval_kwargs):
        self.source = source
        self.diameter_px = diameter_px
        self.channels = channels
        self.gpu = gpu
        self.eval_kwargs = eval_kwargs
        self._lock = threading.Lock()
        self._model = _load(*source, gpu)
        logger.info(
            "cellpose model %s loaded (diam_mean %.1f px); nuclei of %.1f px are rescaled to it",
            source[1],
            float(self._model.diam_mean),
            diameter_px,
        )

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_model"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        tile = np.asarray(tile)
        if tile.ndim != 3 or tile.shape[-1] != 3:
            raise ValueError(f"`tile` must be an RGB array (H, W, 3), got shape {tile.shape}.")
        if tile.shape[0] == 0 or tile.shape[1] == 0 or not tile.any():
            return np.zeros(tile.shape[:2], dtype=np.int32)
        with self._lock:
            if self._model is None:  # unpickled in a worker process (one copy per tile): load once per process
                stamp = os.stat(self.source[1]).st_mtime_ns if self.source[0] == "file" else None
                key = (self.source, self.gpu, stamp)
                if key not in _LOADED:
                    _LOADED[key] = _load(*self.source, self.gpu)
                self._model = _LOADED[key]
            masks = self._model.eval(
                tile,
                channels=list(self.channels),
                channel_axis=-1,
                diameter=self.diameter_px,
                **self.eval_kwargs,
            )[0]
        return np.asarray(masks, dtype=np.int32)
