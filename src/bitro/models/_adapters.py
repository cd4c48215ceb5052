"""Adapter state of a :class:`~bitro.models.BiTro` model: heads, LoRA adapters and what trains.

Like scvi-tools' ``ArchesMixin``, the model owns its transfer state: attaching a LoRA adapter
(peft), choosing what trains, registering, switching, saving, loading and merging adapters.
:func:`bitro.tl.transfer` only orchestrates data and training around these methods.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitro._logging import logger
from bitro._validate import check_choice, check_float, check_int, check_name

if TYPE_CHECKING:
    from ._module import BagHead

MAX_LORA_RANK = 256
"""Largest accepted LoRA rank ``r`` (it must also not exceed the network width)."""


@dataclass
class Head:
    """A head (the per-cell expression layer and pooling of one label kind) with its genes."""

    kind: str
    genes: list[str]
    hvg: list[str]
    head: BagHead


@dataclass
class Adapter(Head):
    """A LoRA adapter: its head and genes, and what it was trained with (``meta``: LoRA settings, data, split)."""

    meta: dict[str, Any] = field(default_factory=dict)


def check_adapter_name(value, name: str) -> str:
    """An adapter name: spatialdata's name rules (``[A-Za-z0-9_.-]``) without ``.`` (torch module keys cannot hold one)."""
    value = check_name(value, name)
    if "." in value:
        raise ValueError(f"`{name}` must not contain '.' (it names torch modules), got {value!r}.")
    return value


def check_lora(r: int, alpha: float, dropout: float, hidden: int) -> tuple[int, float, float]:
    """LoRA settings, checked: ``1 <= r <= min(hidden, 256)``, ``alpha`` in (0, 1024], ``dropout`` in [0, 0.9]."""
    r = check_int(r, "r", min_value=1)
    if r > min(hidden, MAX_LORA_RANK):
        raise ValueError(f"`r` must be <= {min(hidden, MAX_LORA_RANK)} (the network width is {hidden}), got {r}.")
    alpha = check_float(alpha, "alpha", min_value=0, max_value=1024, strict_min=True)
    dropout = check_float(dropout, "dropout", min_value=0, max_value=0.9)
    return r, alpha, dropout


def check_adapter_meta(meta: dict, path: Path) -> None:
    """Refuse a ``bitro_adapter.json`` without the entries an adapter needs, naming the file."""
    missing = [k for k in ("name", "kind", "genes", "hvg", "base_identity") if k not in meta]
    if missing:
        raise ValueError(
            f"{path}: the entries {missing} are missing; the adapter's settings are damaged "
            "(expected those save_adapter writes). Save the adapter again."
        )
    for key in ("name", "kind", "base_identity"):
        if not isinstance(meta[key], str) or not meta[key]:
            raise ValueError(f"{path}: `{key}` must be a non-empty string, got {meta[key]!r}. Save the adapter again.")
    for key in ("genes", "hvg"):
        if not isinstance(meta[key], list) or not all(isinstance(g, str) for g in meta[key]):
            raise ValueError(f"{path}: `{key}` must be a list of gene names. Save the adapter again.")


class AdapterMixin:
    """Heads and LoRA adapters of a BiTro model (mixed into :class:`~bitro.models.BiTro`)."""

    module: Any
    config: dict[str, Any]
    peft: Any
    adapters: dict[str, Adapter]
    active_adapter: str | None
    base_heads: dict[str, Head]

    def _init_adapters(self) -> None:
        self.peft = None
        """The ``peft.PeftModel`` wrapping ``module`` once it holds LoRA adapters (the LoRA layers sit inside ``module``)."""
        self.adapters = {}
        """LoRA adapters by name (:class:`~bitro.models._adapters.Adapter`)."""
        self.active_adapter = None
        self.base_heads = {}
        """The base model's heads that adapters of the same kind replaced, by label kind."""

    # --- heads -----------------------------------------------------------------------------------
    def base_head(self, kind: str) -> Head:
        """The base model's head of label ``kind`` (not an adapter's), with its genes."""
        if kind in self.base_heads:
            return self.base_heads[kind]
        if kind not in self.module.heads:
            raise KeyError(f"the model has no {kind!r} head (heads: {list(self.module.heads)}).")
        genes = list(self.config["genes"][kind])
        return Head(kind, genes, list(self.config["hvg"].get(kind, genes)), self.module.heads[kind])

    def use_head(self, kind: str, head: BagHead) -> None:
        """Put ``head`` in place for label ``kind`` (to train it), keeping the base head it replaces aside."""
        self._keep_base_head(kind)
        self.module.heads[kind] = head

    def _keep_base_head(self, kind: str) -> None:
        adapter_heads = {id(a.head) for a in self.adapters.values()}
        if kind in self.module.heads and id(self.module.heads[kind]) not in adapter_heads:
            self.base_heads[kind] = self.base_head(kind)

    def set_head(self, kind: str, head: BagHead, *, genes: list[str], hvg: list[str]) -> None:
        """Make ``head`` the base model's head of label ``kind``, predicting ``genes``."""
        self.module.heads[kind] = head
        self.base_heads.pop(kind, None)
        self.config["genes"][kind] = list(genes)
        self.config["hvg"][kind] = list(hvg)

    def drop_heads(self, *, keep: str) -> list[str]:
        """Remove every head but ``keep`` (after the backbone changes, they would predict stale values)."""
        stale = [k for k in self.module.heads if k != keep]
        calibrations = self.config.get("calibration")
        for k in stale:
            del self.module.heads[k]
            self.config["genes"].pop(k, None)
            self.config["hvg"].pop(k, None)
            if isinstance(calibrations, dict):
                calibrations.pop(k, None)
            self.base_heads.pop(k, None)
        if stale:
            logger.info("the %s head(s) of the source model are dropped: the backbone changes", stale)
        return stale

    def set_trainable(self, mode: str, *, head: str, adapter_name: str | None = None) -> tuple[int, int]:
        """Choose what trains: ``"lora"`` (the adapter's LoRA matrices), ``"full"`` (everything) or ``"head"``.

        The ``head`` always trains. Returns the numbers of trainable and of all parameters.
        """
        check_choice(mode, "mode", ("lora", "full", "head", "none"))
        for name, p in self.module.named_parameters():
            if mode == "lora":  # exactly the new adapter's LoRA matrices
                p.requires_grad = ".lora_" in name and f".{adapter_name}." in name
            else:
                p.requires_grad = mode == "full"
        if mode != "none":
            for p in self.module.heads[head].parameters():
                p.requires_grad = True
        n_trainable = sum(p.numel() for p in self.module.parameters() if p.requires_grad)
        return n_trainable, sum(p.numel() for p in self.module.parameters())

    # --- LoRA adapters ---------------------------------------------------------------------------
    def add_lora(
        self, name: str, *, r: int = 8, alpha: float = 16, dropout: float = 0.05, target_modules=None
    ) -> dict[str, Any]:
        """Attach a new LoRA adapter ``name`` (peft ``LoraConfig``) to the backbone and make it active.

        Returns its settings (``r``, ``alpha``, ``dropout``, ``target_modules``) as recorded.
        """
        from peft import LoraConfig, get_peft_model

        from ._lora import DEFAULT_TARGET_MODULES, check_target_modules

        name = check_adapter_name(name, "adapter_name")
        if name in self.adapters:
            raise ValueError(f"`adapter_name`: the model already has an adapter {name!r}; pick another name.")
        r, alpha, dropout = check_lora(r, alpha, dropout, self.config["architecture"]["hidden"])
        targets = check_target_modules(self.module, target_modules or DEFAULT_TARGET_MODULES)
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
        if self.peft is None:
            self.peft = get_peft_model(self.module, config, adapter_name=name)
        else:
            self.peft.add_adapter(name, config)
            self.peft.set_adapter(name)
        return {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": targets}

    def register_adapter(self, name: str, *, kind: str, genes: list[str], hvg: list[str], head, meta: dict) -> None:
        """Record adapter ``name`` (its LoRA weights already in ``peft``) with its head, and activate it."""
        self.adapters[name] = Adapter(kind, list(genes), list(hvg), head, dict(meta))
        self.set_adapter(name)

    def set_adapter(self, name: str) -> None:
        """Make adapter ``name`` (and its head and genes) the one that predicts.

        Parameters
        ----------
        name
            One of ``adapters``.
        """
        if name not in self.adapters:
            raise KeyError(f"`name`: no adapter {name!r}; this model has {list(self.adapters) or 'none'}.")
        entry = self.adapters[name]
        self.peft.set_adapter(name)
        kind = entry.kind
        if kind not in self.base_heads:
            self._keep_base_head(kind)
        self.module.heads[kind] = entry.head
        self.config["genes"][kind] = list(entry.genes)
        self.config["hvg"][kind] = list(entry.hvg)
        self.config["training"] = dict(self.config["training"], target=kind)
        for key in ("data", "spots"):  # bag settings and spot geometry the adapter was trained with
            if entry.meta.get(key):
                self.config[key] = entry.meta[key]
        calibrations = dict(self.config.get("calibration") or {})
        if entry.meta.get("calibration"):
            calibrations[kind] = entry.meta["calibration"]
        else:
            calibrations.pop(kind, None)  # the base head's calibration does not describe the adapter
        self.config["calibration"] = calibrations
        self.active_adapter = name
        self.module.eval()

    def save_adapter(self, dir_path: str | os.PathLike, *, name: str | None = None, overwrite: bool = False) -> None:
        """Save one LoRA adapter on its own: peft's files, its head and ``bitro_adapter.json``.

        Written beside ``dir_path`` and swapped in whole, so an interrupted save leaves the previous adapter.

        Parameters
        ----------
        dir_path
            Folder to write (small: the LoRA matrices and one head).
        name
            Adapter to save (default: the active one).
        overwrite
            Replace an adapter already saved there (a folder holding other files is refused).
        """
        import shutil
        import tempfile

        from bitro import __version__
        from bitro._files import file_digest, write_json, write_weights
        from bitro._store import replace_folder

        from ._lora import ADAPTER_FILE, FILES_DIGEST_KEY, HEAD_FILE, PEFT_FILES
        from ._model import FORMAT

        name = name or self.active_adapter
        if self.peft is None or name not in self.adapters:
            raise ValueError(f"`name`: no LoRA adapter {name!r} to save (adapters: {list(self.adapters) or 'none'}).")
        path = Path(dir_path).expanduser()
        if path.exists() and not overwrite:
            raise FileExistsError(f"`dir_path`: {path} already exists; pass overwrite=True to replace it.")
        entry = self.adapters[name]
        meta = dict(
            entry.meta,
            format=FORMAT,
            name=name,
            kind=entry.kind,
            genes=entry.genes,
            hvg=entry.hvg,
            bitro_version=str(__version__),
        )
        owned = {ADAPTER_FILE, HEAD_FILE, *PEFT_FILES}
        with replace_folder(path, overwrite=overwrite, owned=owned) as out, tempfile.TemporaryDirectory() as peft_dir:
            self.peft.save_pretrained(peft_dir, selected_adapters=[name])
            src = Path(peft_dir) if name == "default" else Path(peft_dir) / name
            for f in PEFT_FILES:
                shutil.copyfile(src / f, out / f)
            write_weights(entry.head.state_dict(), out / HEAD_FILE, config=self._head_config(meta), fmt=FORMAT)
            # ties the other files to bitro_adapter.json: a file from another adapter is refused on load
            meta[FILES_DIGEST_KEY] = {f: file_digest(out / f) for f in (*PEFT_FILES, HEAD_FILE)}
            write_json(meta, out / ADAPTER_FILE)
        logger.info("saved adapter %r (%s head, %d genes) to %s", name, entry.kind, len(entry.genes), path)

    def _head_config(self, meta: dict) -> dict:
        """What an adapter's head weights depend on (checked by digest when it is loaded)."""
        return {"genes": {meta["kind"]: meta["genes"]}, "architecture": self.config["architecture"]}

    def load_adapter(self, dir_path: str | os.PathLike, *, name: str | None = None) -> str:
        """Load an adapter saved with :meth:`save_adapter` onto this (base) model and activate it.

        Every file is checked first (each must be the one saved with ``bitro_adapter.json``, and the
        adapter must have been trained on this base model), and peft loads the LoRA layers into a copy
        of the network that replaces it only once complete: an adapter that fails to load leaves the
        model exactly as it was.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save_adapter`.
        name
            Name to give it (default: the name it was saved under): letters, digits, ``_`` and ``-``.

        Returns
        -------
        str
            The adapter's name.
        """
        import copy

        from bitro._files import check_digest, check_file_digest, read_json, read_weights

        from ._lora import ADAPTER_FILE, FILES_DIGEST_KEY, HEAD_FILE, PEFT_FILES, check_adapter_loaded
        from ._model import FORMAT
        from ._module import BagHead

        if name is not None:
            name = check_adapter_name(name, "name")
        path = Path(dir_path).expanduser()
        record = path / ADAPTER_FILE
        if not record.is_file():
            raise FileNotFoundError(f"`dir_path`: {path} is not a saved bitro adapter (no {ADAPTER_FILE}).")
        meta = read_json(record, what="adapter's settings")
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: adapter format {meta.get('format')!r}; this bitro reads format {FORMAT}.")
        check_adapter_meta(meta, record)
        if meta["base_identity"] != self.identity:
            raise ValueError(
                f"{path}: the adapter was trained on another base model (backbone {meta['base_identity'][:12]}..., "
                f"this model's is {self.identity[:12]}...). Load it onto the model it was trained from."
            )
        if name is None:
            try:
                name = check_adapter_name(meta["name"], "name")
            except ValueError as err:
                raise ValueError(f"{record}: {err} Pass `name=` to load it under another name.") from err
        if name in self.adapters:
            raise ValueError(f"`name`: the model already has an adapter {name!r}; pass another name.")
        # read and check every file before the model changes, so a damaged adapter leaves it as it was
        digests = meta.get(FILES_DIGEST_KEY) or {}  # adapters saved before the digests: none, accepted
        for f in (*PEFT_FILES, HEAD_FILE):
            if not (path / f).is_file():
                raise FileNotFoundError(f"{path / f}: missing; the adapter in {path} is incomplete. Save it again.")
            check_file_digest(path / f, digests.get(f), record=record)
        head_state, head_meta = read_weights(path / HEAD_FILE, what="adapter's head")
        check_digest(head_meta, self._head_config(meta), weights=path / HEAD_FILE, config_path=record)
        head = BagHead(self.config["architecture"]["hidden"], len(meta["genes"]))
        try:
            head.load_state_dict(head_state)
        except RuntimeError as err:
            raise ValueError(f"{path / HEAD_FILE}: the head does not match {ADAPTER_FILE} ({err}).") from err
        read_json(path / PEFT_FILES[0], what="LoRA settings")
        read_weights(path / PEFT_FILES[1], what="LoRA weights")
        from peft import PeftModel

        # peft injects the LoRA layers into the network before it loads their weights: work on a copy
        # (network, adapters and set-aside heads together, so they keep pointing at each other) and
        # keep it only once the adapter is in, so a failed load leaves this model exactly as it was
        work_peft, work_module, work_adapters, work_base_heads = copy.deepcopy(
            (self.peft, self.module, self.adapters, self.base_heads)
        )
        try:
            if work_peft is None:
                work_peft = PeftModel.from_pretrained(work_module, str(path), adapter_name=name)
            else:
                work_peft.load_adapter(str(path), adapter_name=name)
        except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as err:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            detail = " ".join(lines[:2])[:300] or type(err).__name__
            raise ValueError(
                f"{path}: peft could not load the LoRA adapter ({detail}); {PEFT_FILES[0]} does not match "
                f"{PEFT_FILES[1]} or this network. The model is unchanged; save the adapter again."
            ) from err
        check_adapter_loaded(work_peft, name, path)
        self.peft, self.module, self.adapters, self.base_heads = work_peft, work_module, work_adapters, work_base_heads
        keep = {k: v for k, v in meta.items() if k not in ("genes", "hvg", "name", "kind", FILES_DIGEST_KEY)}
        self.register_adapter(name, kind=meta["kind"], genes=meta["genes"], hvg=meta["hvg"], head=head, meta=keep)
        return name

    def merge_adapter(self) -> None:
        """Merge the active LoRA adapter into the base weights, leaving one plain model (for deployment).

        The active adapter's predictions are unchanged (up to float rounding); other adapters are
        dropped, and so are the heads of other label kinds (e.g. the ``"bulk"`` head of a bulk model
        adapted to spots): they belong to the base backbone, which the merge changes, so they would
        predict stale values. :meth:`save` then writes an ordinary model with the adapter's head only.
        """
        if self.peft is None:
            raise ValueError("this model has no LoRA adapter to merge.")
        name = self.active_adapter
        entry = self.adapters[name]
        self.module = self.peft.merge_and_unload(adapter_names=[name])
        self.peft = None
        self.adapters = {}
        self.active_adapter = None
        self.base_heads = {}  # the base backbone's heads: stale on the merged one
        self.drop_heads(keep=entry.kind)
        self.config["merged_adapter"] = dict(entry.meta, name=name)
        self.module.eval()
