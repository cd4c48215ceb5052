"""Bags of cells taken out of a SpatialData once, as plain numpy (picklable by DataLoader workers).

A section becomes :class:`Bags`: the cells' features, µm positions and graph, the *sequences*
the network attends within (a spot's cells plus optional context cells of a ring around it, or one
tile of a slide) and the *bag* each sequence pools into (the spot, or the whole slide), with the
bag's targets when the data has expression.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse

from bitro import _constants as K
from bitro import _sdata
from bitro._expression import gene_columns, log_cp10k
from bitro._logging import logger


@dataclass
class Bags:
    """Cells and bags of one section (``kind="spot"``) or one slide (``kind="bulk"``)."""

    sample_id: str
    group: str
    kind: str
    x: np.ndarray
    xy: np.ndarray
    graph: sparse.csr_matrix
    seq_cells: list[np.ndarray]
    seq_context: list[np.ndarray]
    seq_centre: np.ndarray
    seq_bag: np.ndarray
    bag_names: np.ndarray
    bag_xy: np.ndarray
    y: np.ndarray | None = None
    cell_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Row of each cell in the cells table (``x`` rows are those rows, in that order)."""
    n_spots: int | None = None
    """The first ``n_spots`` bags are real spots; the others cover the cells outside every spot."""

    @property
    def n_bags(self) -> int:
        return len(self.bag_names)

    def bag_sequences(self) -> list[np.ndarray]:
        """Sequence indices of each bag."""
        order = np.argsort(self.seq_bag, kind="stable")
        bounds = np.searchsorted(self.seq_bag[order], np.arange(self.n_bags + 1))
        return [order[bounds[b] : bounds[b + 1]] for b in range(self.n_bags)]


def _cells(sdata, settings: dict) -> tuple[str, np.ndarray, np.ndarray, sparse.csr_matrix]:
    """Cells table key, features, µm centroids and the graph's connectivities."""
    table_key, xy = _sdata.cell_centroids_um(sdata)
    cells = sdata.tables[table_key]
    fkey = settings.get("features_key") or _sdata.recorded(sdata, K.ATTR_FEATURES)
    if fkey not in cells.obsm:
        raise KeyError(f"cells table {table_key!r} has no features obsm[{fkey!r}]: run bt.pp.cell_features first.")
    x = np.asarray(cells.obsm[fkey], dtype=np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        n = int(bad.any(axis=1).sum())
        logger.warning(
            "%d cells have non-finite features; those values are set to the feature mean (0 after scaling)", n
        )
        x = np.where(bad, np.nan, x)
    gkey = f"{settings.get('graph_key') or _sdata.recorded(sdata, K.ATTR_GRAPH)}_connectivities"
    if gkey not in cells.obsp:
        raise KeyError(f"cells table {table_key!r} has no graph obsp[{gkey!r}]: run bt.pp.cell_graph first.")
    graph = sparse.csr_matrix(cells.obsp[gkey], dtype=bool)
    return table_key, x, xy.astype(np.float32), graph


def _groups(codes: np.ndarray, n: int) -> list[np.ndarray]:
    """Indices of the items of each group ``0..n-1`` (ascending); a code outside that range belongs to none."""
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(n + 1))
    return [order[bounds[g] : bounds[g + 1]] for g in range(n)]


def _bags(sample: str, group: str | None, kind: str, x, xy, graph, y, **sequences) -> Bags:
    """:class:`Bags` of all the cells ``x`` / ``xy`` / ``graph`` of a sample, with its sequences and bags."""
    return Bags(
        sample_id=sample, group=group or sample, kind=kind, x=x, xy=xy, graph=graph, y=y,
        cell_index=np.arange(len(x)), **sequences,
    )  # fmt: skip


def _context(xy: np.ndarray, centres: np.ndarray, members: list[np.ndarray], radius_um: float, max_cells: int):
    """For each centre, the cells within ``radius_um`` that are not its members, nearest first, at most ``max_cells``."""
    from scipy.spatial import cKDTree

    if radius_um <= 0 or max_cells <= 0 or not len(xy):
        return [np.zeros(0, np.int64) for _ in range(len(centres))]
    tree = cKDTree(xy)
    out = []
    for centre, own in zip(centres, members, strict=True):
        near = np.asarray(tree.query_ball_point(centre, radius_um), dtype=np.int64)
        near = near[~np.isin(near, own)]
        d = np.hypot(*(xy[near] - centre).T) if len(near) else np.zeros(0)
        out.append(near[np.argsort(d, kind="stable")[:max_cells]])
    return out


def spot_bags(
    sdata, settings: dict, *, genes: list[str] | None = None, group: str | None = None, cover: float | None = None
) -> Bags:
    """Bags of the spots of a section: each spot's assigned cells, plus ring context cells if configured.

    With ``cover`` (the assignment's reach as a multiple of the spot radius, e.g. 1.5), the cells
    outside every spot get bags of their own after the spots': pseudo-spots on a hexagonal grid whose
    cells (Voronoi regions) have the area of a spot's reach, so a pseudo-bag holds about as many cells
    as a spot; each such cell joins its nearest pseudo-spot. Their context follows the same rule.
    """
    info = _sdata.info(sdata)
    sample = _sdata.sample_id(sdata)
    spots_key = info.get(K.ATTR_SPOTS)
    table_key = _sdata.spots_table_key(sdata)
    if spots_key is None or spots_key not in sdata.shapes or table_key not in sdata.tables:
        raise KeyError(
            f"section {sample!r} has no spots (attrs['bitro'] spots_key={spots_key!r}, table {table_key!r}); "
            "read it with a bt.io spot reader, or predict pseudo-spots with bt.tl.predict."
        )
    table = sdata.tables[table_key]
    instance_key = table.uns.get("spatialdata_attrs", {}).get("instance_key", K.SPOT_ID_KEY)
    cells_key, x, xy, graph = _cells(sdata, settings)
    cells = sdata.tables[cells_key]
    assign_key = settings.get("spot_key") or _sdata.recorded(sdata, K.ATTR_SPOT_ASSIGNMENT)
    if assign_key not in cells.obs:
        raise KeyError(f"cells table {cells_key!r} has no obs[{assign_key!r}]: run bt.pp.assign_cells first.")

    centres, _ = _sdata.spots_um(sdata, spots_key)
    shape_pos = pd.Index(sdata.shapes[spots_key].index.astype(str))
    spot_ids = table.obs[instance_key].astype(str).to_numpy()
    if not pd.Index(spot_ids).is_unique:
        dup = list(pd.Index(spot_ids)[pd.Index(spot_ids).duplicated()].unique()[:5])
        raise ValueError(
            f"section {sample!r}: table {table_key!r} names a spot in more than one row "
            f"(obs[{instance_key!r}], e.g. {dup}); one row per spot is needed to pair it with its cells."
        )
    spot_row = shape_pos.get_indexer(spot_ids)
    if (spot_row < 0).any():
        raise ValueError(f"{int((spot_row < 0).sum())} spots of table {table_key!r} have no circle in {spots_key!r}.")
    bag_xy = centres[spot_row].astype(np.float32)

    cell_spot = cells.obs[assign_key].astype("string").fillna("").to_numpy(dtype=str)
    cell_bag = pd.Index(spot_ids).get_indexer(cell_spot)
    names = table.obs_names.to_numpy().astype(str)
    if cover is not None and (cell_bag < 0).any():
        _, radius = _sdata.spots_um(sdata, spots_key, ids=sdata.shapes[spots_key].index[spot_row])
        extra_xy, extra_bag = _pseudo_bags(xy[cell_bag < 0], float(np.median(radius)) * float(cover))
        cell_bag[cell_bag < 0] = extra_bag + len(spot_ids)
        bag_xy = np.vstack([bag_xy, extra_xy]).astype(np.float32)
        names = np.concatenate([names, [f"pseudo{i}" for i in range(len(extra_xy))]])
    members = _groups(cell_bag, len(names))
    context = _context(xy, bag_xy, members, float(settings["context_um"]), int(settings["max_context"]))

    y = None
    if genes is not None:
        y = bag_targets(table, genes, kind="spot", sample=sample, table_key=table_key, n_bags=len(names))
    return _bags(
        sample, group, "spot", x, xy, graph, y,
        seq_cells=members, seq_context=context, seq_centre=bag_xy, seq_bag=np.arange(len(names)),
        bag_names=names, bag_xy=bag_xy, n_spots=len(spot_ids),
    )  # fmt: skip


def expression_table(sdata, kind: str):
    """The sample's id, the key of its expression table and the table (checked to be there, one row for a slide)."""
    sample = _sdata.sample_id(sdata, "slide") if kind == "bulk" else _sdata.sample_id(sdata)
    table_key = _sdata.recorded(sdata, K.ATTR_TABLE)
    if table_key not in sdata.tables:
        what = "slide" if kind == "bulk" else "section"
        raise KeyError(f"{what} {sample!r} has no expression table {table_key!r} to train or evaluate on.")
    table = sdata.tables[table_key]
    if kind == "bulk" and table.n_obs != 1:
        raise ValueError(f"slide {sample!r}: bulk table {table_key!r} must have one row, has {table.n_obs}.")
    return sample, table_key, table


def bag_targets(
    table, genes: list[str], *, kind: str, sample: str, table_key: str, n_bags: int | None = None
) -> np.ndarray:
    """log1p(CP10k) of ``genes`` in an expression table: one row per spot, or the slide's one row.

    Rows beyond the table's (the pseudo-spots of ``n_bags``) are NaN: they have no counts.
    """
    where = f"{'slide' if kind == 'bulk' else 'section'} {sample!r} table {table_key!r}"
    y = log_cp10k(table.X, where=where, columns=gene_columns(table, genes, where=where))
    if n_bags is not None and n_bags > len(y):
        y = np.vstack([y, np.full((n_bags - len(y), y.shape[1]), np.nan, np.float32)])
    return y


def hex_grid(lo: np.ndarray, hi: np.ndarray, pitch: float) -> np.ndarray:
    """Centres ``(n, 2)`` of a hexagonal grid of ``pitch`` covering the box ``lo``-``hi`` (odd rows shifted by half)."""
    dy = pitch * np.sqrt(3) / 2
    rows = []
    for i, y in enumerate(np.arange(lo[1], hi[1] + dy, dy)):
        xs = np.arange(lo[0] + (i % 2) * pitch / 2, hi[0] + pitch, pitch)
        rows.append(np.column_stack([xs, np.full(len(xs), y)]))
    return np.concatenate(rows)


def _pseudo_bags(xy: np.ndarray, reach_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the pseudo-spots that cover cells ``xy`` and each cell's pseudo-spot (its nearest centre).

    A hexagonal grid whose Voronoi cells have the area of a disc of radius ``reach_um``; centres
    without a cell are dropped (the others renumbered).
    """
    from scipy.spatial import cKDTree

    pitch = float(np.sqrt(np.pi * reach_um**2 / (np.sqrt(3) / 2)))
    grid = hex_grid(xy.min(axis=0) - pitch, xy.max(axis=0) + pitch, pitch)
    _, nearest = cKDTree(grid).query(xy)
    used, bag = np.unique(nearest, return_inverse=True)
    return grid[used], bag.reshape(-1)


def slide_bags(sdata, settings: dict, *, genes: list[str] | None = None, group: str | None = None) -> Bags:
    """One bag of all the cells of a slide, attended within square tiles of ``settings["tile_um"]``."""
    sample = _sdata.sample_id(sdata, "slide")
    _, x, xy, graph = _cells(sdata, settings)
    y = None
    if genes is not None:
        _, table_key, table = expression_table(sdata, "bulk")
        y = bag_targets(table, genes, kind="bulk", sample=sample, table_key=table_key)
    return tiled_bag(sample, x, xy, graph, float(settings["tile_um"]), y=y, group=group)


def tiled_bag(
    sample: str,
    x: np.ndarray,
    xy: np.ndarray,
    graph: sparse.csr_matrix,
    tile_um: float,
    *,
    y: np.ndarray | None = None,
    group: str | None = None,
) -> Bags:
    """One bag of all cells, cut into square tiles of ``tile_um`` (aligned to the origin) as sequences."""
    codes = np.floor(xy / tile_um).astype(np.int64)
    inverse = np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1) if len(xy) else np.zeros(0, np.int64)
    seqs = _groups(inverse, int(inverse.max(initial=-1)) + 1)
    centres = np.array([xy[s].mean(axis=0) for s in seqs], dtype=np.float32) if seqs else np.zeros((0, 2), np.float32)
    return _bags(
        sample, group, "bulk", x, xy, graph, y,
        seq_cells=seqs, seq_context=[np.zeros(0, np.int64) for _ in seqs], seq_centre=centres,
        seq_bag=np.zeros(len(seqs), dtype=np.int64), bag_names=np.array([sample]),
        bag_xy=xy.mean(axis=0, keepdims=True) if len(xy) else np.zeros((1, 2), np.float32),
    )  # fmt: skip


# --- batches -------------------------------------------------------------------------------------


def sub_adjacency(graph: sparse.csr_matrix, idx: np.ndarray) -> np.ndarray:
    """``graph[idx][:, idx]`` as a dense bool array, in time set by ``idx`` and its rows, not the graph's size.

    scipy's column indexing of a CSR matrix allocates and scans an array of all its columns per call
    (~1.8 ms at 10^6 cells), so one call per sequence made a slide's bags quadratic in its cells.
    """
    idx = np.asarray(idx, dtype=np.int64)
    k = len(idx)
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    if getattr(graph, "format", None) != "csr" or (k > 1 and (sorted_idx[1:] == sorted_idx[:-1]).any()):
        return graph[idx][:, idx].toarray().astype(bool)  # another layout, or a repeated cell: scipy's way
    rows = graph[idx]
    cols = rows.indices
    pos = np.minimum(np.searchsorted(sorted_idx, cols), max(k - 1, 0))
    hit = (sorted_idx[pos] == cols) & (rows.data != 0) if k else np.zeros(len(cols), bool)  # a stored 0: no edge
    row_of = np.repeat(np.arange(k), np.diff(rows.indptr))
    adj = np.zeros((k, k), bool)
    adj[row_of[hit], order[pos[hit]]] = True
    return adj


def sequence_arrays(bags: Bags, s: int, cells: np.ndarray | None = None, context: np.ndarray | None = None) -> dict:
    """Arrays of one sequence: features, µm offsets from its centre, adjacency, context flags."""
    cells = bags.seq_cells[s] if cells is None else cells
    context = bags.seq_context[s] if context is None else context
    idx = np.concatenate([cells, context])
    adj = sub_adjacency(bags.graph, idx)
    return {
        "x": bags.x[idx],
        "pos": bags.xy[idx] - bags.seq_centre[s],
        "adj": adj,
        "context": np.r_[np.zeros(len(cells), bool), np.ones(len(context), bool)],
    }


def collate(sequences: list[dict], seq_bag: np.ndarray, n_bags: int, y: np.ndarray | None = None) -> dict:
    """Pad sequences into one batch of torch tensors."""
    import torch

    n = max(len(s["x"]) for s in sequences)
    s_count, f = len(sequences), sequences[0]["x"].shape[1]
    x = np.zeros((s_count, n, f), np.float32)
    pos = np.zeros((s_count, n, 2), np.float32)
    adj = np.zeros((s_count, n, n), bool)
    valid = np.zeros((s_count, n), bool)
    context = np.zeros((s_count, n), bool)
    for i, seq in enumerate(sequences):
        m = len(seq["x"])
        x[i, :m] = seq["x"]  # NaN (missing) features stay NaN: the network fills them after scaling
        pos[i, :m] = seq["pos"]
        adj[i, :m, :m] = seq["adj"]
        valid[i, :m] = True
        context[i, :m] = seq["context"]
    batch = {
        "x": torch.from_numpy(x),
        "pos": torch.from_numpy(pos),
        "adj": torch.from_numpy(adj),
        "valid": torch.from_numpy(valid),
        "context": torch.from_numpy(context),
        "bag": torch.from_numpy(np.asarray(seq_bag, dtype=np.int64)),
        "n_bags": n_bags,
    }
    if y is not None:
        batch["y"] = torch.from_numpy(np.asarray(y, dtype=np.float32))
    return batch


class BagDataset:
    """Training bags ``(section, bag)`` with random sub-sampling of cells and tiles (torch map-style dataset).

    Each item is a list of sequence dicts and the bag's standardised target. Long spots keep at
    most ``max_cells`` cells (and ``max_context`` context cells); slides keep at most ``max_tiles``
    tiles, each of at most ``max_cells`` cells, re-drawn every epoch.
    """

    def __init__(
        self,
        sections: list[Bags],
        items: list[tuple[int, int]],
        targets: list[np.ndarray],
        *,
        max_cells: int,
        max_tiles: int,
        train: bool,
        seed: int = 0,
    ) -> None:
        self.sections, self.items, self.targets = sections, items, targets
        self.max_cells, self.max_tiles, self.train = max_cells, max_tiles, train
        self.seed = seed
        self.epoch = 0
        self._bag_seqs = [sec.bag_sequences() for sec in sections]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        si, b = self.items[i]
        sec = self.sections[si]
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.train else np.random.default_rng([self.seed, i])
        seqs = [s for s in self._bag_seqs[si][b] if len(sec.seq_cells[s])]
        if len(seqs) > self.max_tiles:
            seqs = list(rng.choice(seqs, self.max_tiles, replace=False))
        out = []
        for s in seqs:
            cells = sec.seq_cells[s]
            if len(cells) > self.max_cells:
                cells = np.sort(rng.choice(cells, self.max_cells, replace=False))
            out.append(sequence_arrays(sec, s, cells=cells))
        return out, self.targets[i]


def collate_bags(items) -> dict:
    """Collate ``BagDataset`` items (bags of sequences) into one batch."""
    sequences, seq_bag, ys = [], [], []
    for b, (seqs, y) in enumerate(items):
        sequences.extend(seqs)
        seq_bag.extend([b] * len(seqs))
        ys.append(y)
    return collate(sequences, np.asarray(seq_bag), len(items), np.stack(ys))
