"""Load an image encoder of any supported format behind one interface (:class:`CellEncoder`).

Formats, told apart by the folder's ``config.json``:

- bitro (``"architecture"`` registered in :data:`bitro.pp._encoder.ARCHITECTURES`, e.g. the bundled
  offline encoder);
- Hugging Face ``transformers`` (``"model_type"``: ViT, DINOv2, DINOv3, ...), loaded with ``AutoModel``;
- ``timm`` (``"architecture"`` with ``"model_args"`` / ``"pretrained_cfg"``, the layout timm pushes to
  the hub), which needs the optional extra ``pip install bitro[timm]``.

A named encoder (:mod:`bitro.pp._encoder_zoo`) adds what its model card says: repository, architecture
options, preprocessing and how the embedding is read. Weights are read without running code
(safetensors, or ``torch.load(weights_only=True)`` for ``.bin`` files). This module imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ._encoder_zoo import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, find_spec

_TIMM_MISSING = "`encoder`: {what} is a timm model; install the optional extra: pip install 'bitro[timm]'."


class CellEncoder(nn.Module):
    """An encoder with its preprocessing: ``forward`` embeds crops, ``token_map`` gives a grid of patch features.

    Parameters
    ----------
    backbone
        The network.
    kind
        ``"bitro"``, ``"transformers"`` or ``"timm"``.
    input_size
        Side of the square input, in pixels.
    mean, std
        Normalisation of RGB values in [0, 1] (applied by the caller).
    mpp
        µm per pixel of the input the encoder was trained on, if known.
    output
        ``"cls"``, ``"cls+mean"`` or ``"mean"``: how ``forward`` reads the embedding from the tokens.
    patch_size
        Pixels per cell of the ``token_map`` grid.
    crop_um
        The crop side the encoder was trained with, if recorded.
    name
        What the user asked for (recorded with the features).
    architecture
        The network's name in its format (recorded with the features).

    Attributes
    ----------
    tile_input, tile_margin
        Side of the tiles of the tile path and the context kept on each side, in pixels.
    """

    def __init__(self, backbone: nn.Module, *, kind: str, input_size: int, mean, std, mpp: float | None,
                 output: str, patch_size: int, crop_um: float | None, name: str, architecture: str) -> None:  # fmt: skip
        super().__init__()
        self.backbone = backbone
        self.kind = kind
        self.architecture = architecture
        self.fingerprint = ""  # set by the loader: what identifies the weights
        self.input_size = int(input_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.mpp = None if mpp is None else float(mpp)
        self.output = output
        self.patch_size = int(patch_size)
        self.crop_um = None if crop_um is None else float(crop_um)
        self.name = name
        if kind == "bitro":  # convolutional: any tile size; a margin of half a crop gives each cell its context
            self.tile_margin = -(-self.input_size // 2 // self.patch_size) * self.patch_size
            self.tile_input = 8 * self.input_size
        else:  # a ViT at the size it was trained at, 1/8 of it kept as context on every side
            self.tile_margin = (self.input_size // 8) // self.patch_size * self.patch_size
            self.tile_input = self.input_size
        with torch.inference_mode():  # sizes from one forward: the same for every format
            probe = torch.zeros(1, 3, self.input_size, self.input_size)
            self.out_dim = int(self.forward(probe).shape[1])
            self.token_dim = int(self.token_map(probe).shape[1])

    def _sequence(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Tokens (batch, prefix + patches, dim) and the number of prefix (class, register) tokens."""
        if self.kind == "timm":
            seq = self.backbone.forward_features(x)
            return seq, int(getattr(self.backbone, "num_prefix_tokens", 1))
        seq = self.backbone(pixel_values=x).last_hidden_state
        n_patches = (x.shape[2] // self.patch_size) * (x.shape[3] // self.patch_size)
        return seq, seq.shape[1] - n_patches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised crops (batch, 3, size, size) -> embeddings (batch, out_dim)."""
        if self.kind == "bitro":
            return self.backbone(x)
        seq, n_prefix = self._sequence(x)
        cls, patches = seq[:, 0], seq[:, n_prefix:]
        if self.output == "cls":
            return cls
        if self.output == "mean":
            return patches.mean(dim=1)
        return torch.cat([cls, patches.mean(dim=1)], dim=1)

    def token_map(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised tiles (batch, 3, h, w) -> patch features (batch, token_dim, h // patch, w // patch)."""
        if self.kind == "bitro":
            grid = self.backbone.features(x)  # the head is linear: applying it per location commutes with pooling
            return self.backbone.head(grid.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        seq, n_prefix = self._sequence(x)
        gh, gw = x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
        patches = seq[:, n_prefix:]
        return patches.reshape(x.shape[0], gh, gw, patches.shape[2]).permute(0, 3, 1, 2)


def load_cell_encoder(encoder: str | os.PathLike, *, path: str | os.PathLike | None = None) -> CellEncoder:
    """The encoder ``encoder`` (``"bitro"``, a name of :func:`bitro.models.encoders`, a folder or a hub id), on CPU.

    ``path``: a local copy of a named encoder's repository (works offline; nothing is downloaded).
    """
    text = os.fspath(encoder)
    if text == "bitro":  # the bundled offline encoder
        from ._encoder_zoo import BUNDLED

        if path is not None:
            raise ValueError("`encoder_path` is for named foundation encoders; 'bitro' is bundled with the package.")
        model = _load_folder(BUNDLED, "bitro")
        model.fingerprint = _fingerprint(BUNDLED)
        return model.eval()
    spec = find_spec(text) if isinstance(encoder, str) else None
    if spec is None and path is not None:
        raise ValueError(
            f"`encoder_path` is for named encoders (bt.models.encoders()); {text!r} is not one. Pass the folder as `encoder`."
        )
    if spec is not None:
        folder = Path(path).expanduser() if path is not None else _download(spec.repo, spec, gated=spec.gated)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"`encoder_path`: {os.fspath(path)!r} is not a folder (expected a copy of {spec.repo})."
            )
        model = _load_named(spec, folder)
    else:
        folder = _local_or_hub(text)
        model = _load_folder(folder, text)
    model.fingerprint = _fingerprint(folder)
    model.eval()
    return model


def _fingerprint(folder: Path) -> str:
    """A digest of the folder's settings files and the sizes of its weights (cheap for multi-GB weights)."""
    import hashlib

    digest = hashlib.sha256()
    for file in sorted(folder.iterdir()):
        if file.suffix == ".json":
            digest.update(file.name.encode() + file.read_bytes())
        elif file.suffix in (".safetensors", ".bin"):
            digest.update(f"{file.name}:{file.stat().st_size}".encode())
    return digest.hexdigest()[:16]


# --- files ---------------------------------------------------------------------------------------
def _local_or_hub(text: str) -> Path:
    from ._encoder import _HUB_ID

    folder = Path(text).expanduser()
    if folder.exists() or not _HUB_ID.match(text):
        if not folder.is_dir():
            raise FileNotFoundError(
                f"`encoder`: {text!r} is neither a named encoder (see bt.models.encoders()), a folder (with config.json "
                "and weights) nor a Hugging Face hub id 'owner/name'."
            )
        return folder
    try:
        return _download(text, None, gated=False)
    except FileNotFoundError as err:  # 'models/my_encoder' reads as a hub id too: a mistyped folder?
        raise FileNotFoundError(f"{err} Nor is there a folder {folder.resolve()} (a typo?).") from err


def _download(repo: str, spec: EncoderSpec | None, *, gated: bool) -> Path:
    """The local snapshot of ``repo``: the cache first (offline), else the hub; errors say what to do."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError as err:  # pragma: no cover - a dependency of transformers
        raise ImportError(
            f"`encoder`: downloading {repo!r} needs huggingface_hub (pip install huggingface_hub)."
        ) from err
    patterns = ["*.json", spec.weights] if spec is not None else ["*.json", "*.safetensors"]
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: try the hub
        pass
    name = f"{spec.name!r} ({repo})" if spec is not None else repo
    access = (
        f"request access on https://huggingface.co/{repo} while logged in, then give your token: `hf auth login` "
        "(or the HF_TOKEN environment variable)"
    )
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except GatedRepoError as err:
        raise PermissionError(
            f"`encoder`: {name} is gated: {access}; or pass a local copy with encoder_path=."
        ) from err
    except RepositoryNotFoundError as err:
        hint = f" It is gated: {access}." if gated else ""
        raise FileNotFoundError(
            f"`encoder`: {name} was not found on the Hugging Face hub (or needs a token).{hint}"
        ) from err
    except Exception as err:
        raise FileNotFoundError(
            f"`encoder`: {name} is not in the local Hugging Face cache and the hub is unreachable "
            f"({type(err).__name__}). Offline: download it once where there is internet "
            f"(`hf download {repo}`) and copy the cache, or pass a local copy"
            + (" with encoder_path=." if spec is not None else " as the folder.")
        ) from err


def _state_dict(folder: Path, names: tuple[str, ...]) -> dict:
    """Weights from the first of ``names`` in ``folder`` (safetensors, or a .bin read with weights_only)."""
    from bitro._files import read_weights

    for name in names:
        file = folder / name
        if not file.is_file():
            continue
        if file.suffix == ".safetensors":
            return read_weights(file, what="encoder's weights")[0]
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(
                f"{file}: not readable as weights ({type(err).__name__}: {err}); download it again."
            ) from err
    raise FileNotFoundError(f"`encoder`: {folder} has none of {list(names)} (the weights).")


# --- formats -------------------------------------------------------------------------------------
def _load_folder(folder: Path, text: str) -> CellEncoder:
    from bitro._files import read_json

    from ._encoder import ARCHITECTURES

    config = read_json(folder / "config.json", what="encoder's settings")
    if config.get("architecture") in ARCHITECTURES:
        from ._encoder import load_encoder

        net, config = load_encoder(folder)
        return CellEncoder(
            net, kind="bitro", input_size=config["input_size"], mean=config["mean"], std=config["std"],
            mpp=config.get("mpp"), output="cls", patch_size=2 ** len(config.get("args", {}).get("channels", [16, 32])),
            crop_um=config.get("crop_um"), name=text, architecture=config["architecture"],
        )  # fmt: skip
    if "model_type" in config:
        return _transformers(folder, text, spec=None)
    if "architecture" in config and ("model_args" in config or "pretrained_cfg" in config):
        cfg = config.get("pretrained_cfg", {})
        size = int((cfg.get("input_size") or [3, 224, 224])[-1])
        spec = EncoderSpec(
            text, text, "timm", 0, input_size=size, mpp=None, mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(cfg.get("std", IMAGENET_STD)), timm_name=config["architecture"],
            timm_kwargs={"num_classes": 0, **config.get("model_args", {})},
        )  # fmt: skip
        return _timm(folder, spec)
    raise ValueError(
        f"`encoder`: {folder / 'config.json'} is none of the known formats (a bitro encoder's 'architecture' "
        "among " + str(sorted(ARCHITECTURES)) + ", a transformers 'model_type', or a timm 'architecture' with "
        "'model_args')."
    )


def _load_named(spec: EncoderSpec, folder: Path) -> CellEncoder:
    if spec.format == "conch":
        raise NotImplementedError(
            f"`encoder`: {spec.name!r} reads its embedding through CONCH's own attention pooler, which bitro does "
            "not implement; compute its features with CONCH's code (or TRIDENT) and import them, or pick another encoder."
        )
    if spec.format == "timm":
        return _timm(folder, spec)
    return _transformers(folder, spec.name, spec=spec)


def _transformers(folder: Path, text: str, *, spec: EncoderSpec | None) -> CellEncoder:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from bitro._files import read_json
    from bitro._logging import logger

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()  # a bar and a load report per load are noise in a pipeline
    hf_logging.set_verbosity_error()
    config = read_json(folder / "config.json", what="encoder's settings")
    # ViT's pooler (a dense layer on the class token) is not the embedding: leave it out
    extra = {"add_pooling_layer": False} if config.get("model_type") == "vit" else {}
    try:
        net = AutoModel.from_pretrained(str(folder), local_files_only=True, **extra)
    except Exception as err:
        raise ValueError(f"`encoder`: {folder} did not load with transformers ({type(err).__name__}: {err}).") from err
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if spec is not None:
        size, mean, std, mpp, output = spec.input_size, spec.mean, spec.std, spec.mpp, spec.output
    else:  # an unnamed model: its image processor's settings, else ImageNet's
        pre = folder / "preprocessor_config.json"
        proc = read_json(pre, what="image processor settings") if pre.is_file() else {}
        crop = proc.get("crop_size") or proc.get("size") or {}
        default = int(getattr(net.config, "image_size", 224))
        size = int(crop.get("height", crop.get("shortest_edge", default)) if isinstance(crop, dict) else crop)
        mean, std = proc.get("image_mean", IMAGENET_MEAN), proc.get("image_std", IMAGENET_STD)
        mpp, output = None, "cls"
        if not proc:
            logger.info("encoder %s has no preprocessor_config.json: ImageNet normalisation, %d px", text, size)
    patch = net.config.patch_size
    patch = int(patch[0] if isinstance(patch, list | tuple) else patch)
    return CellEncoder(net, kind="transformers", input_size=size, mean=mean, std=std, mpp=mpp, output=output,
                       patch_size=patch, crop_um=None, name=text, architecture=net.config.model_type)  # fmt: skip


def _timm(folder: Path, spec: EncoderSpec) -> CellEncoder:
    try:
        import timm
    except ImportError as err:
        raise ImportError(_TIMM_MISSING.format(what=repr(spec.name))) from err
    kwargs = dict(spec.timm_kwargs)
    for key, value in kwargs.items():  # classes named in the registry
        if value == "SwiGLUPacked":
            kwargs[key] = timm.layers.SwiGLUPacked
        elif value == "SiLU":
            kwargs[key] = nn.SiLU
    net = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    state = _state_dict(folder, (spec.weights, "model.safetensors", "pytorch_model.bin"))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"`encoder`: the weights in {folder} do not fit {spec.timm_name} ({err}).") from err
    patch = net.patch_embed.patch_size
    patch = int(patch[0] if isinstance(patch, list | tuple) else patch)
    return CellEncoder(net, kind="timm", input_size=spec.input_size, mean=spec.mean, std=spec.std, mpp=spec.mpp,
                       output=spec.output, patch_size=patch, crop_um=None, name=spec.name,
                       architecture=spec.timm_name)  # fmt: skip
