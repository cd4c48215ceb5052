"""Crash-safe writes: elements of a zarr-backed SpatialData, and whole folders (models, adapters, outputs).

A step that is killed (SIGKILL, Ctrl-C, a full disk) must leave the previous result complete on
disk. spatialdata replaces an element by deleting it first (spatialdata #1237), so a crash in
between loses it. Here a commit

1. writes the new elements, complete, into a staging folder inside the store (invisible to
   :func:`spatialdata.read_zarr`, which only reads the element groups);
2. writes a journal that names them and the attrs they replace (one atomic file write);
3. drops the consolidated metadata (so no reader trusts a stale listing), swaps each element into
   place (one atomic ``renameat2(RENAME_EXCHANGE)`` on Linux, three renames elsewhere) so that the
   old one waits in the staging folder, writes the attrs, consolidates the metadata again and
   removes the journal (the commit point) and then the staging folder.

A step either happened or it did not: a crash before the journal is removed is undone by
:func:`recover` (run by every commit and by :func:`bitro.io.read_zarr`), which swaps the old
elements and attrs back; it recognises what was already swapped by the directories' inodes and
may itself be interrupted and run again. Folders are replaced the same way: written beside the
target, then swapped in.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bitro._logging import logger

JOURNAL = ".bitro-journal.json"
"""File in the store's root that names the elements of a decided but unfinished commit."""
STAGING = ".bitro-staging"
"""Folder in the store's root where new elements are written before they are swapped in."""
ELEMENT_TYPES = ("images", "labels", "points", "shapes", "tables")


def is_store(path: Path) -> bool:
    """``path`` is a zarr store (v3 ``zarr.json`` or v2 ``.zgroup`` at its root)."""
    return (path / "zarr.json").is_file() or (path / ".zgroup").is_file()


def _checkpoint(stage: str) -> None:
    """A named point of a commit; does nothing (the kill tests replace it to stop the process there)."""


# --- file-system primitives ------------------------------------------------------------------------


def _renameat2():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):  # not Linux / glibc < 2.28
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return func


_RENAMEAT2 = _renameat2()
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def exchange(a: Path, b: Path) -> None:
    """Swap the paths ``a`` and ``b`` (both exist): atomically where the OS can, else by three renames."""
    if (
        _RENAMEAT2 is not None
        and _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0
    ):
        return
    side = b.with_name(f".{b.name}.bitro-old-{uuid.uuid4().hex[:8]}")
    os.rename(b, side)
    os.rename(a, b)
    os.rename(side, a)


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON to ``path`` through a temporary file and an atomic rename (never half a file)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _drop_consolidated_metadata(store: Path) -> None:
    """Forget the store's consolidated metadata (rewritten atomically), so no reader trusts a stale listing."""
    root = store / "zarr.json"
    if root.is_file():
        meta = json.loads(root.read_text())
        if meta.pop("consolidated_metadata", None) is not None:
            write_json_atomic(root, meta)
    legacy = store / ".zmetadata"  # zarr v2 stores
    if legacy.is_file():
        os.remove(legacy)


def _has_consolidated_metadata(store: Path) -> bool:
    if (store / ".zmetadata").is_file():
        return True
    root = store / "zarr.json"
    return root.is_file() and json.loads(root.read_text()).get("consolidated_metadata") is not None


def _consolidate(store: Path) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # parquet files of shapes are not zarr nodes: zarr says so, harmlessly
        zarr.consolidate_metadata(str(store))


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


# --- commits of SpatialData elements ---------------------------------------------------------------


def element_type(element) -> str:
    """``"images"``, ``"labels"``, ``"points"``, ``"shapes"`` or ``"tables"``, as spatialdata files the element."""
    from spatialdata import SpatialData

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a table alone warns that its region is not in this object
        probe = SpatialData.init_from_elements({"probe": element})
    for kind, name, _ in probe.gen_elements():
        if name == "probe":
            return kind
    raise TypeError(f"cannot file {type(element).__name__} as a SpatialData element.")


def commit(store: str | os.PathLike, elements: Mapping[str, Any], attrs: Mapping[str, Any] | None = None) -> None:
    """Replace (or add) ``elements`` in the zarr store, then merge ``attrs`` into its root attributes; all or nothing.

    Parameters
    ----------
    store
        Path of the SpatialData zarr store.
    elements
        New elements by name (spatialdata elements or :class:`anndata.AnnData` tables).
    attrs
        Entries merged into the store's root attributes after the elements are in place.
    """
    from spatialdata import SpatialData

    store = Path(store)
    if not is_store(store):
        raise FileNotFoundError(f"{store} is not a zarr store (the SpatialData object's `path` points nowhere).")
    recover(store)
    staging = store / STAGING / uuid.uuid4().hex[:12]
    staging.parent.mkdir(exist_ok=True)
    moves = []
    try:
        if elements:
            with warnings.catch_warnings():
                # a table alone warns that its region is not in this (temporary) object; anndata announces zarr defaults
                warnings.simplefilter("ignore", UserWarning)
                SpatialData.init_from_elements(dict(elements)).write(
                    staging, consolidate_metadata=False, update_sdata_path=False
                )
            for name, element in elements.items():
                kind = element_type(element)
                moves.append({"type": kind, "name": name, "inode": _inode(staging / kind / name)})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _checkpoint("staged")
    root = _root_attributes(store)
    journal = {
        "staging": staging.name,
        "moves": moves,
        "attrs": dict(attrs) if attrs is not None else None,
        "old_attrs": {k: root.get(k) for k in attrs} if attrs is not None else None,
        "consolidated": _has_consolidated_metadata(store),
    }
    write_json_atomic(store / JOURNAL, journal)
    _checkpoint("journal")
    _drop_consolidated_metadata(store)
    for move in moves:
        _swap_in(store, staging, move)
        _checkpoint(f"swapped:{move['type']}/{move['name']}")
    if attrs is not None:
        _update_attributes(store, journal["attrs"])
        _checkpoint("attrs")
    _close(store, journal)
    _checkpoint("committed")
    shutil.rmtree(store / STAGING, ignore_errors=True)


def recover(store: str | os.PathLike) -> bool:
    """Undo a commit that a crash interrupted, and remove abandoned staging folders.

    Returns whether a commit was undone.
    """
    store = Path(store)
    journal_path = store / JOURNAL
    undone = False
    if journal_path.is_file():
        journal = json.loads(journal_path.read_text())  # written atomically: never half a file
        logger.warning("%s: undoing a write that was interrupted (%d elements)", store, len(journal["moves"]))
        staging = store / STAGING / journal["staging"]
        _drop_consolidated_metadata(store)
        for move in journal["moves"]:
            _swap_out(store, staging, move)
        if journal.get("old_attrs") is not None:
            _update_attributes(store, journal["old_attrs"])
        _close(store, journal)
        undone = True
    staging_root = store / STAGING
    if staging_root.is_dir():
        shutil.rmtree(staging_root, ignore_errors=True)
    return undone


def _side(path: Path) -> Path:
    """Where the fallback (three renames) parks the old element while the new one moves in."""
    return path.with_name(f".{path.name}.bitro-old")


def _swap_in(store: Path, staging: Path, move: dict) -> None:
    kind, name = move["type"], move["name"]
    src, dst = staging / kind / name, store / kind / name
    group = store / kind
    if not group.is_dir():
        group.mkdir()
    for meta in ("zarr.json", ".zgroup"):
        if (staging / kind / meta).is_file() and not (group / meta).is_file():
            shutil.copyfile(staging / kind / meta, group / meta)
    if not dst.exists():
        os.rename(src, dst)
        return
    if (
        _RENAMEAT2 is not None
        and _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_EXCHANGE) == 0
    ):
        return
    side = _side(dst)  # no atomic exchange here: old -> side, new -> place, side -> staging
    os.rename(dst, side)
    os.rename(src, dst)
    os.rename(side, src)


def _swap_out(store: Path, staging: Path, move: dict) -> None:
    """Put the old element back (idempotent: every state a crash of :func:`_swap_in` or of this leaves)."""
    kind, name = move["type"], move["name"]
    src, dst, side = staging / kind / name, store / kind / name, _side(store / kind / name)
    new_in_place = _inode(dst) == move["inode"]
    if side.exists():  # the fallback stopped half-way: the old element waits beside its place
        if new_in_place:
            os.rename(dst, src if not src.exists() else src.with_name(src.name + ".new"))
        elif dst.exists():
            shutil.rmtree(dst)
        os.rename(side, dst)
        return
    if not new_in_place:
        return  # never swapped
    if src.exists():  # staging holds the old element
        if (
            _RENAMEAT2 is None
            or _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_EXCHANGE) != 0
        ):
            os.rename(dst, side)
            os.rename(src, dst)
            shutil.rmtree(side)
    else:  # the element is new: take it out again
        os.rename(dst, src)


def _root_attributes(store: Path) -> dict:
    import zarr

    return dict(zarr.open_group(str(store), mode="r", use_consolidated=False).attrs.asdict())


def _update_attributes(store: Path, entries: Mapping[str, Any]) -> None:
    """Set (or, for ``None`` values, remove) root attributes; zarr writes ``zarr.json`` atomically."""
    import zarr

    group = zarr.open_group(str(store), mode="r+", use_consolidated=False)
    attributes = dict(group.attrs.asdict())
    for key, value in entries.items():
        if value is None:
            attributes.pop(key, None)
        else:
            attributes[key] = value
    group.attrs.put(attributes)


def _close(store: Path, journal: dict) -> None:
    """Consolidate the metadata again (if the store had it) and remove the journal: the commit point."""
    if journal.get("consolidated"):
        _consolidate(store)
    os.remove(store / JOURNAL)


# --- folders ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def replace_folder(path: str | os.PathLike, *, overwrite: bool, owned: set[str] | None = None) -> Iterator[Path]:
    """Write a folder beside ``path`` and swap it in only when the block finishes without error.

    Parameters
    ----------
    path
        The folder to create or replace.
    overwrite
        Whether an existing folder may be replaced (else :class:`FileExistsError`).
    owned
        File names the writer owns. An existing folder holding anything else is refused, so replacing
        it loses nothing of the user's (``None``: anything may be replaced).

    Yields
    ------
    The temporary folder to write into. On success it becomes ``path`` (the old folder is removed
    only after the new one is in place); on error it is removed and ``path`` is untouched.
    """
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a folder.")
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
        if owned is not None:
            foreign = sorted(p.name for p in path.iterdir() if p.name not in owned)
            if foreign:
                raise FileExistsError(
                    f"{path} holds files this writer did not make ({foreign[:5]}); replacing the folder would "
                    "delete them. Save to another folder, or move them first."
                )
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(path)
    # the writer's process and machine in the name: a later write knows a killed writer's folder
    tmp = path.with_name(f".{path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}~{os.getpid()}@{_host()}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _checkpoint("folder-written")
    if path.exists():
        exchange(tmp, path)
        _checkpoint("folder-swapped")
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.rename(tmp, path)


TMP_MARK = ".bitro-tmp-"


def _host() -> str:
    import socket

    return socket.gethostname().replace("/", "_")


def _remove_abandoned(path: Path) -> None:
    """Remove the temporary folders of ``path`` whose writer (a process on this machine) is gone.

    A writer killed before its swap (or between the swap and the clean-up) leaves its folder beside
    ``path``; a whole slide's store can be gigabytes. Folders of live processes, of other machines
    (a shared disk) or without a recorded writer are left alone.
    """
    import glob

    host = _host()
    for tmp in path.parent.glob(glob.escape(f".{path.name}{TMP_MARK}") + "*~*@*"):
        writer, _, machine = tmp.name.rpartition("~")[2].partition("@")
        if machine != host or not writer.isdigit() or _alive(int(writer)):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        logger.info("removed %s, left by a killed write of %s", tmp.name, path.name)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (where it cannot be told safely, as on Windows: assumed so)."""
    if os.name != "posix":  # os.kill(pid, 0) would end the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_store(sdata, path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Write ``sdata`` as a new zarr store at ``path``, swapped in only when complete.

    An existing store is replaced only with ``overwrite=True``, and only once the new one is whole
    (a crash leaves the previous store); a folder that is not a zarr store is never replaced.
    ``sdata`` becomes backed by ``path``.
    """
    path = Path(path).expanduser()
    if path.exists() and not is_store(path):
        raise FileExistsError(f"{path} exists and is not a zarr store; it is not replaced. Pass another path.")
    with replace_folder(path, overwrite=overwrite) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="zarr v3 autosharding", category=UserWarning)
        store = tmp / "store.zarr"  # spatialdata writes only into a path that does not exist yet
        sdata.write(store, update_sdata_path=False)
        for entry in store.iterdir():  # the store's content becomes the folder's
            os.rename(entry, tmp / entry.name)
        store.rmdir()
    sdata.path = path


@contextlib.contextmanager
def replace_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) to write; renamed onto ``path`` when the block succeeds."""
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: its folder {path.parent} does not exist.")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name.")
    tmp = path.with_name(f".{path.stem}.bitro-tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            os.remove(tmp)
