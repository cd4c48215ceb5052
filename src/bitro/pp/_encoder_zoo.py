"""Named image encoders for :func:`bitro.pp.cell_features`: where their weights live and how to feed them.

Each entry records what a user would otherwise look up in a model card: the Hugging Face repository,
the format (``transformers`` loads with the installed ``transformers``; ``timm`` needs the optional
extra ``pip install bitro[timm]``), the input size, normalisation and scale (µm per pixel) it was
trained at, how the embedding is read from its tokens, and the licence and gating. Nothing here
downloads anything; :mod:`bitro.pp._encoder_load` does, when asked, or reads a local copy.

This module imports nothing heavy (``import bitro`` stays light).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

BUNDLED = Path(__file__).parent / "cell_encoder"
"""bitro's own offline cell encoder (``scripts/train_cell_encoder.py``), ``encoder="bitro"``."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    """How to load and feed one named encoder.

    Attributes
    ----------
    name
        The name users pass (``encoder="uni"``).
    repo
        Hugging Face repository id.
    format
        ``"transformers"`` (``AutoModel``), ``"timm"`` (``timm.create_model``), or ``"conch"`` (listed
        for reference; its attention pooler is not implemented).
    dim
        Length of the embedding this entry gives per crop.
    input_size
        Side of the square input, in pixels.
    mpp
        µm per pixel of the input the encoder was trained on (0.5 is 20x).
    output
        ``"cls"`` (class token) or ``"cls+mean"`` (class token, then the mean of the patch tokens).
    mean, std
        Per-channel normalisation of RGB values in [0, 1].
    licence
        Licence of the weights, as the model card states it.
    gated
        Whether the repository asks users to accept terms before downloading.
    timm_name, timm_kwargs
        ``format="timm"`` only: the architecture and the ``timm.create_model`` options the weights need.
        Values ``"SwiGLUPacked"`` / ``"SiLU"`` name timm / torch classes resolved at load time.
    weights
        The weights file of the repository.
    """

    name: str
    repo: str
    format: str
    dim: int
    input_size: int = 224
    mpp: float = 0.5
    output: str = "cls"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    licence: str = ""
    gated: bool = False
    timm_name: str | None = None
    timm_kwargs: dict = field(default_factory=dict)
    weights: str = "model.safetensors"
    note: str = ""


_H_OPTIMUS_0 = EncoderSpec(
    "h-optimus-0", "bioptimus/H-optimus-0", "timm", 1536, licence="Apache-2.0", gated=True,
    mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517),
    timm_name="vit_giant_patch14_reg4_dinov2",
    timm_kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": False},
    weights="pytorch_model.bin", note="H-optimus-0, ViT-g/14 with 4 register tokens",
)  # fmt: skip
_SPECS = (
    EncoderSpec(
        "uni", "MahmoodLab/UNI", "timm", 1024, licence="CC-BY-NC-ND-4.0", gated=True,
        timm_name="vit_large_patch16_224",
        timm_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True},
        weights="pytorch_model.bin", note="UNI (Chen et al. 2024), ViT-L/16 trained on 100k slides",
    ),
    EncoderSpec(
        "uni2-h", "MahmoodLab/UNI2-h", "timm", 1536, licence="CC-BY-NC-ND-4.0", gated=True,
        timm_name="vit_giant_patch14_224",
        timm_kwargs={
            "img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5, "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2, "num_classes": 0, "no_embed_class": True, "mlp_layer": "SwiGLUPacked",
            "act_layer": "SiLU", "reg_tokens": 8, "dynamic_img_size": True,
        },
        weights="pytorch_model.bin", note="UNI2-h, ViT-H/14 with 8 register tokens",
    ),
    EncoderSpec(
        "conch_v15", "MahmoodLab/conchv1_5", "conch", 768, input_size=448, licence="CC-BY-NC-ND-4.0", gated=True,
        weights="pytorch_model_vision.bin",
        note="CONCH v1.5 (ViT-L/16 at 448 px + attention pooler); listed, not loadable: needs CONCH's pooler code",
    ),
    EncoderSpec(
        "virchow2", "paige-ai/Virchow2", "timm", 2560, output="cls+mean", licence="CC-BY-NC-ND-4.0", gated=True,
        timm_name="vit_huge_patch14_224",
        timm_kwargs={
            "img_size": 224, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375, "global_pool": "",
            "dynamic_img_size": True, "reg_tokens": 4, "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU",
        },
        weights="pytorch_model.bin", note="Virchow2, ViT-H/14 with 4 register tokens; class token + mean patch token",
    ),
    _H_OPTIMUS_0,
    replace(_H_OPTIMUS_0, name="h-optimus-1", repo="bioptimus/H-optimus-1", licence="CC-BY-NC-ND-4.0",
            note="H-optimus-1, ViT-g/14 with 4 register tokens"),
    EncoderSpec(
        "gigapath", "prov-gigapath/prov-gigapath", "timm", 1536, licence="Apache-2.0 with conditions", gated=True,
        timm_name="vit_giant_patch14_dinov2",
        timm_kwargs={
            "img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
            "init_values": 1e-5, "mlp_ratio": 5.33334, "num_classes": 0, "dynamic_img_size": True,
        },
        weights="pytorch_model.bin", note="Prov-GigaPath tile encoder, ViT-g/16",
    ),
    EncoderSpec(
        "phikon", "owkin/phikon", "transformers", 768, licence="Owkin non-commercial", weights="pytorch_model.bin",
        note="Phikon, ViT-B/16 (iBOT)",
    ),
    EncoderSpec(
        "phikon-v2", "owkin/phikon-v2", "transformers", 1024, licence="Owkin non-commercial",
        note="Phikon-v2, ViT-L/16 (DINOv2)",
    ),
    EncoderSpec("dinov2-small", "facebook/dinov2-small", "transformers", 384, licence="Apache-2.0",
                note="DINOv2 ViT-S/14, natural images"),
    EncoderSpec("dinov2-base", "facebook/dinov2-base", "transformers", 768, licence="Apache-2.0",
                note="DINOv2 ViT-B/14, natural images"),
    EncoderSpec("dinov2-large", "facebook/dinov2-large", "transformers", 1024, licence="Apache-2.0",
                note="DINOv2 ViT-L/14, natural images"),
    EncoderSpec("dinov3-small", "facebook/dinov3-vits16-pretrain-lvd1689m", "transformers", 384,
                licence="DINOv3 License", gated=True, note="DINOv3 ViT-S/16 with 4 register tokens, natural images"),
    EncoderSpec("dinov3-base", "facebook/dinov3-vitb16-pretrain-lvd1689m", "transformers", 768,
                licence="DINOv3 License", gated=True, note="DINOv3 ViT-B/16 with 4 register tokens, natural images"),
    EncoderSpec("dinov3-large", "facebook/dinov3-vitl16-pretrain-lvd1689m", "transformers", 1024,
                licence="DINOv3 License", gated=True, note="DINOv3 ViT-L/16 with 4 register tokens, natural images"),
)  # fmt: skip

ENCODERS: dict[str, EncoderSpec] = {spec.name: spec for spec in _SPECS}
"""Named encoders by name."""


def find_spec(name: str) -> EncoderSpec | None:
    """The entry called ``name`` (case and ``_`` / ``-`` insensitive), or ``None``."""
    key = name.strip().lower().replace("_", "-")
    for spec in _SPECS:
        if spec.name.replace("_", "-") == key:
            return spec
    return None


def encoders():
    """The named image encoders :func:`bitro.pp.cell_features` can load, as a table.

    Returns
    -------
    A :class:`pandas.DataFrame` indexed by name with the Hugging Face ``repo``, ``format``
    (``transformers``, or ``timm`` which needs ``pip install bitro[timm]``; ``bitro`` for the bundled
    offline encoder, ``encoder="bitro"``), embedding ``dim``,
    ``input_size`` (px), ``mpp`` (µm per pixel of the input), ``output`` (how the embedding is read),
    ``licence`` and ``gated`` (the repository asks users to accept its terms: request access on its
    page, then log in with ``hf auth login`` or set ``HF_TOKEN``).

    Examples
    --------
    >>> import bitro as bt
    >>> table = bt.models.encoders()
    >>> table.loc["uni", "repo"], table.loc["uni", "format"], int(table.loc["uni", "dim"])
    ('MahmoodLab/UNI', 'timm', 1024)
    >>> table.index[table["format"] == "transformers"].tolist()[:3]
    ['phikon', 'phikon-v2', 'dinov2-small']
    """
    import pandas as pd

    rows = []
    if (BUNDLED / "config.json").is_file():
        import json

        config = json.loads((BUNDLED / "config.json").read_text())
        rows.append({
            "name": "bitro", "repo": "bundled (no download)", "format": "bitro", "dim": config["args"]["out_dim"],
            "input_size": config["input_size"], "mpp": config.get("mpp"), "output": "pooled",
            "licence": "BSD-3-Clause (weights); trained on CC BY 4.0 / CC0 data", "gated": False,
            "note": "bitro's offline cell encoder: SimCLR on cell-centred crops (scripts/train_cell_encoder.py)",
        })  # fmt: skip
    rows += [
        {
            "name": s.name, "repo": s.repo, "format": s.format, "dim": s.dim, "input_size": s.input_size,
            "mpp": s.mpp, "output": s.output, "licence": s.licence, "gated": s.gated, "note": s.note,
        }
        for s in _SPECS
    ]  # fmt: skip
    return pd.DataFrame(rows).set_index("name")
