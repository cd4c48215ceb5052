"""LoRA adapters on the BiTro backbone with peft: which layers, the base model's identity, head mapping.

An adapter is peft's own files (``adapter_config.json`` + ``adapter_model.safetensors``, written by
``PeftModel.save_pretrained``) plus the head it trained (``head.safetensors``) and
``bitro_adapter.json``: its name, label kind, genes, LoRA settings and the identity (a sha256 of the
backbone weights) of the base model it adapts, checked when it is loaded, and the sha256 of the other
three files, so a file copied from another adapter is refused.
"""

from __future__ import annotations

import hashlib

import numpy as np

from bitro._logging import logger

DEFAULT_TARGET_MODULES = ("encoder.proj", "q_proj", "k_proj", "v_proj", "out_proj", "ff_in", "ff_out")
"""The linears LoRA adapts by default: the cell encoder, attention q/k/v/out and the feed-forward layers."""
ADAPTER_FILE, HEAD_FILE = "bitro_adapter.json", "head.safetensors"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
"""The files ``PeftModel.save_pretrained`` writes for one adapter."""
FILES_DIGEST_KEY = "files_sha256"
"""``bitro_adapter.json`` key of the sha256 of each other file of the adapter (a file from another save is refused)."""


def linear_names(module) -> list[str]:
    """Names of every linear layer of the backbone (heads and peft's internals excluded; LoRA-wrapped ones kept)."""
    from torch import nn

    names = []
    for n, m in module.named_modules():
        if n.startswith("heads.") or ".lora_" in n or n.endswith(".base_layer"):
            continue
        if isinstance(m, nn.Linear) or isinstance(getattr(m, "base_layer", None), nn.Linear):
            names.append(n)
    return names


def check_target_modules(module, target_modules) -> list[str]:
    """``target_modules`` as a list, each naming at least one backbone linear (clear error otherwise)."""
    names = linear_names(module)
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if not targets:
        raise ValueError("`target_modules` is empty.")
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in names):
            suffixes = sorted({n.split(".")[-1] for n in names} | {"encoder.proj", "position.proj"})
            raise ValueError(
                f"`target_modules`: {t!r} names no linear layer of the backbone; available: {suffixes} "
                f"(full names like {names[:3]})."
            )
    return targets


def backbone_identity(module) -> str:
    """sha256 of the backbone's weights and buffers (heads and LoRA weights excluded, peft prefixes removed)."""
    state = module.state_dict()
    digest = hashlib.sha256()
    for key in sorted(state):
        if key.startswith("heads.") or ".lora_" in key:
            continue
        name = key.replace(".base_layer.", ".")
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(state[key].detach().cpu().numpy()).tobytes())
    return digest.hexdigest()


def mapped_head(source_head, source_genes: list[str], genes: list[str], hidden: int):
    """A new head for ``genes``: rows of genes the source head has are copied, new genes start fresh.

    The attention (pooling) layers are copied whole. Returns the head and the number of shared genes.
    """
    import torch

    from ._module import BagHead

    head = BagHead(hidden, len(genes))
    index = {g: i for i, g in enumerate(source_genes)}
    shared = [(j, index[g]) for j, g in enumerate(genes) if g in index]
    with torch.no_grad():
        for name in ("score_hidden", "score_gate", "score"):
            getattr(head, name).load_state_dict(getattr(source_head, name).state_dict())
        if shared:
            dst, src = (torch.as_tensor(v) for v in zip(*shared, strict=True))
            head.expression.weight[dst] = source_head.expression.weight[src]
            head.expression.bias[dst] = source_head.expression.bias[src]
    logger.info(
        "head for %d genes: %d start from the source head, %d new", len(genes), len(shared), len(genes) - len(shared)
    )
    return head, len(shared)


def check_adapter_loaded(peft_model, name: str, path) -> None:
    """Every tensor of the saved adapter is in the model under ``name``, with equal values (no silent partial load)."""
    import torch

    from bitro._files import read_weights

    saved, _ = read_weights(path / PEFT_FILES[1], what="LoRA weights")
    params = dict(peft_model.named_parameters())
    missing = []
    for key, tensor in saved.items():
        stem, leaf = key.rsplit(".", 1)
        target = f"{stem}.{name}.{leaf}"
        if target not in params or not torch.equal(params[target].detach().cpu(), tensor):
            missing.append(key)
    if missing:
        raise ValueError(f"{path}: {len(missing)} adapter tensors did not load into the model (e.g. {missing[:3]}).")
