"""Reading and writing settings (JSON) and weights (safetensors), with errors that name the file.

Weights are safetensors (nothing is unpickled) and settings JSON. Each weights file carries, in
its metadata, a digest of the settings the weights depend on (genes per head, network size, cell
features), so a ``config.json`` edited or left from another save is refused instead of silently
renaming the outputs. The settings file also records the sha256 of the weights file saved with it
(:func:`file_digest`), so a weights file copied from another save with the same genes and network
size is refused too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

DIGEST_KEY = "config_sha256"
"""safetensors metadata key of the settings digest."""


def config_digest(config: dict[str, Any]) -> str:
    """sha256 of the settings the weights depend on: the network size, the genes of each head and the feature names."""
    features = config.get("features") or {}
    keys = {"architecture": config.get("architecture"), "genes": config.get("genes"), "features": features.get("names")}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (recorded beside weights, so a file from another save is refused)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_file_digest(path: Path, expected: str | None, *, record: Path) -> None:
    """Refuse ``path`` when its sha256 is not the one ``record`` lists (``None``: an older save, accepted)."""
    if expected is None:
        return
    if not isinstance(expected, str) or file_digest(path) != expected:
        raise ValueError(
            f"{path} does not belong to {record}: it is not the file saved with it (was it copied from another "
            f"save, or edited?). Put back the {Path(path).name} saved with {Path(record).name}, or save again."
        )


def read_json(path: Path, *, what: str) -> dict[str, Any]:
    """A JSON object from ``path``, or an error naming the file and what it should hold."""
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: missing; expected the {what}.") from err
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); the {what} is damaged. Save it again.") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object holding the {what}, got {type(value).__name__}.")
    return value


def read_weights(path: Path, *, what: str) -> tuple[dict, dict[str, str]]:
    """Tensors and metadata of a safetensors file, or an error naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: missing; expected the {what}.") from err
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"{path}: not a readable safetensors file ({err}); the {what} is damaged. Save it again."
        ) from err
    return tensors, metadata


def check_digest(metadata: dict[str, str], config: dict[str, Any], *, weights: Path, config_path: Path) -> None:
    """Refuse settings that do not belong to the weights (weights without a digest are older saves: accepted)."""
    expected = metadata.get(DIGEST_KEY)
    if expected is not None and expected != config_digest(config):
        raise ValueError(
            f"{config_path} does not belong to {weights}: the genes, network size or cell features it lists differ "
            "from those the weights were saved with (was it edited, or copied from another save?). Save the model again."
        )


def write_weights(state: dict, path: Path, *, config: dict[str, Any], fmt: int) -> None:
    """Write tensors as safetensors with the format version and the settings digest in the metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"format": str(fmt), DIGEST_KEY: config_digest(config)})


def write_json(value: dict[str, Any], path: Path) -> None:
    """Write a JSON object (indented)."""
    Path(path).write_text(json.dumps(value, indent=1))
