"""Accuracy of BiTro against the toy ground truth, at spot and at cell level, beside the baselines.

Protocol: ``bt.tl.fit`` on three ``toy_st`` sections (seeds 0, 1, 2; ``val=["toy2"]`` for early
stopping, so toy2 is validation and toy0, toy1 are trained on), ``bt.tl.predict`` on a fourth
(seed 3) that training never sees. All sections share ``program_seed=0`` (same cell types and
expression programs); the default watershed + morphology preprocessing runs on each.

- Spot level, on the test section: per-gene Pearson across spots between ``bt.get.predictions(test).X``
  and log1p(CP10k) of the noise-free expected counts (``layers["true_rate"]``), and of the observed
  Poisson counts. The mean baseline scores 0 by construction; the ridge baseline (spot-aggregated
  cell features -> scaler, PCA, ridge) is fitted on the spots of the three fit sections.
- Cell level: each true cell is matched to the nearest segmented cell whose centroid lies within
  ``--match-um`` µm (one segment per true cell, the closest); per-gene Pearson across matched cells
  that lie in a spot, between the cell predictions (``bt.get.predictions(test, level="cells")``) and log1p(CP10k) of the true cell's
  expression. References: "spot-constant" gives each cell its spot's predicted value (what the
  per-cell output must beat to carry within-spot information), "oracle spot-constant" gives each
  cell its spot's true expected expression (the ceiling of any spot-constant predictor), and
  "within-spot" correlates deviations from each spot's mean (of the matched cells) directly.

    python benchmarks/toy_accuracy.py
    python benchmarks/toy_accuracy.py --n-spots 144 --epochs 50 --seed 1
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def _aggregate(bags) -> tuple[np.ndarray, np.ndarray]:
    """Spot-aggregated cell features (mean, std, log count) and targets of one section's Bags."""
    from bitro.tl._baselines import aggregate_features

    bag_of_cell = np.full(len(bags.x), -1, np.int64)
    for s, cells in enumerate(bags.seq_cells):
        bag_of_cell[cells] = bags.seq_bag[s]
    return aggregate_features(np.nan_to_num(bags.x), bag_of_cell, bags.n_bags), bags.y


def _true_centroids_um(sdata) -> tuple[np.ndarray, np.ndarray]:
    """Row order and µm centroids of the true cells (table ``true_cells``), via their shapes' transformation."""
    import shapely

    from bitro import _constants as K
    from bitro._sdata import affine_xy as _affine_xy
    from bitro._sdata import apply_affine as _apply

    info = sdata.attrs[K.ATTRS_KEY]
    shapes = sdata.shapes[info[K.ATTR_TRUE_CELLS]]
    table = sdata.tables[K.TRUE_CELLS_TABLE_KEY]
    ids = table.obs[K.CELL_ID_KEY].to_numpy()
    centroid_px = shapely.get_coordinates(shapely.centroid(shapes.geometry.loc[ids].to_numpy()))
    return table, _apply(_affine_xy(shapes, info[K.ATTR_COORDINATE_SYSTEM]), centroid_px)


def _summary(r: np.ndarray) -> tuple[float, float, int]:
    return float(np.nanmean(r)), float(np.nanmedian(r)), int(np.isfinite(r).sum())


def _deviation(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """``values`` minus the mean of their group (rows of one spot)."""
    _, inv = np.unique(group, return_inverse=True)
    sums = np.zeros((inv.max() + 1, values.shape[1]))
    np.add.at(sums, inv, values)
    counts = np.bincount(inv)[:, None]
    return values - (sums / counts)[inv]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-spots", type=int, default=64, help="spots per toy section")
    parser.add_argument("--n-genes-data", type=int, default=60, help="genes of each toy section")
    parser.add_argument("--n-genes", type=int, default=40, help="highly variable genes the model predicts")
    parser.add_argument("--epochs", type=int, default=30, help="max_epochs of bt.tl.fit (early stopping on toy2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of bt.tl.fit (sections are seeds 0-3 regardless)")
    parser.add_argument("--match-um", type=float, default=5.0, help="largest centroid distance of a cell match")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()

    import pandas as pd
    import torch
    from scipy.spatial import cKDTree

    import bitro as bt
    from bitro import _constants as K
    from bitro._expression import gene_columns, log_cp10k
    from bitro._sdata import cell_centroids_um
    from bitro.models._config import data_settings
    from bitro.models._data import spot_bags
    from bitro.tl._baselines import ridge_baseline
    from bitro.tl._metrics import pearson_per_gene

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    sections = [
        bt.datasets.toy_st(n_spots=args.n_spots, n_genes=args.n_genes_data, seed=s, sample_id=f"toy{s}")
        for s in range(4)
    ]
    train, test = sections[:3], sections[3]
    t0 = time.perf_counter()
    model = bt.tl.fit(train, n_genes=args.n_genes, max_epochs=args.epochs, val=["toy2"], seed=args.seed, progress=False)
    fit_s = time.perf_counter() - t0
    bt.tl.predict(test, model)
    genes = model.genes

    # --- spot level ------------------------------------------------------------------------------
    table = test.tables[K.TABLE_KEY]
    cols = gene_columns(table, genes, where="test table")
    y_rate = log_cp10k(table.layers[K.TRUE_RATE_LAYER], where="true_rate")[:, cols]
    y_obs = log_cp10k(table.X, where="counts")[:, cols]
    spot_pred = np.asarray(bt.get.predictions(test).X)  # rows in the order of the spots table

    data = data_settings("spot", model.config["data"])
    train_xy = [_aggregate(spot_bags(s, data, genes=genes)) for s in train]
    x_tr, y_tr = np.vstack([a for a, _ in train_xy]), np.vstack([b for _, b in train_xy])
    x_te, _ = _aggregate(spot_bags(test, data, genes=genes))
    ridge = ridge_baseline(x_tr, y_tr, x_te, seed=args.seed)

    spot_rows = [
        ("bitro", pearson_per_gene(y_rate, spot_pred), pearson_per_gene(y_obs, spot_pred)),
        ("ridge (fit on toy0-2 spots)", pearson_per_gene(y_rate, ridge), pearson_per_gene(y_obs, ridge)),
        ("observed counts (noise ceiling)", pearson_per_gene(y_rate, y_obs), np.full(len(genes), np.nan)),
    ]

    # --- cell level ------------------------------------------------------------------------------
    info = test.attrs[K.ATTRS_KEY]
    cells_key, seg_xy = cell_centroids_um(test)
    cells = test.tables[cells_key]
    true_table, true_xy = _true_centroids_um(test)
    dist, nearest_seg = cKDTree(seg_xy).query(true_xy, distance_upper_bound=args.match_um)
    true_idx = np.flatnonzero(np.isfinite(dist))
    seg_idx = nearest_seg[true_idx]
    # one segment per true cell already; keep one true cell per segment too (the closest)
    order = np.argsort(dist[true_idx], kind="stable")
    _, first = np.unique(seg_idx[order], return_index=True)
    keep = order[first]
    true_idx, seg_idx = true_idx[keep], seg_idx[keep]
    n_matched = len(true_idx)

    cell_pred = np.asarray(bt.get.predictions(test, level="cells").X)[seg_idx]
    spot_of_cell = cells.obs[info.get(K.ATTR_SPOT_ASSIGNMENT, K.SPOT_ID_KEY)].astype("string").fillna("")
    instance_key = table.uns.get("spatialdata_attrs", {}).get("instance_key", K.SPOT_ID_KEY)
    spot_row = pd.Index(table.obs[instance_key].astype(str)).get_indexer(spot_of_cell.to_numpy(dtype=str)[seg_idx])
    in_spot = (spot_row >= 0) & np.isfinite(cell_pred).all(axis=1)
    true_cols = gene_columns(true_table, genes, where="true_cells")
    y_cell = log_cp10k(true_table.X, where="true_cells")[true_idx][:, true_cols]
    y_cell, cell_pred, spot_row = y_cell[in_spot], cell_pred[in_spot], spot_row[in_spot]
    const_pred = spot_pred[spot_row]
    oracle = y_rate[spot_row]

    cell_rows = [
        ("bitro per-cell", pearson_per_gene(y_cell, cell_pred)),
        ("spot-constant (bitro spot pred)", pearson_per_gene(y_cell, const_pred)),
        ("oracle spot-constant (true rate)", pearson_per_gene(y_cell, oracle)),
        (
            "bitro within-spot deviations",
            pearson_per_gene(_deviation(y_cell, spot_row), _deviation(cell_pred, spot_row)),
        ),
    ]
    total_s = time.perf_counter() - t_start

    t = model.config["training"]
    print(
        f"protocol: toy_st(n_spots={args.n_spots}, n_genes={args.n_genes_data}), sections seeds 0-3 "
        f"(program_seed 0); fit on {t['samples']} with validation {t['validation']} (early stopping, "
        f"max_epochs={args.epochs}, best epoch {model.best_epoch} of {t['epochs']}); test toy3 (never seen); "
        f"{len(genes)} HVGs of the training sections; fit seed {args.seed}; fit {fit_s:.0f} s, total {total_s:.0f} s"
    )
    print(f"\nspot level, test section toy3 ({table.n_obs} spots), per-gene Pearson across spots")
    print(f"{'method':<34} {'vs true rate mean':>17} {'median':>7} {'vs observed mean':>17} {'median':>7}")
    for name, r_rate, r_obs in spot_rows:
        a, b, _ = _summary(r_rate)
        obs = "{:>17.3f} {:>7.3f}".format(*_summary(r_obs)[:2]) if np.isfinite(r_obs).any() else f"{'-':>17} {'-':>7}"
        print(f"{name:<34} {a:>17.3f} {b:>7.3f} {obs}")
    print(f"{'mean baseline':<34} {0:>17.3f} {0:>7.3f} {0:>17.3f} {0:>7.3f}  (0 by construction)")

    print(
        f"\ncell level, toy3: {true_table.n_obs} true cells, {cells.n_obs} segmented, {n_matched} matched within "
        f"{args.match_um:g} µm, {int(in_spot.sum())} of them in a spot; per-gene Pearson across those cells "
        "vs log1p(CP10k) of the true cell expression"
    )
    print(f"{'method':<34} {'mean':>7} {'median':>7} {'genes':>6}")
    for name, r in cell_rows:
        a, b, n = _summary(r)
        print(f"{name:<34} {a:>7.3f} {b:>7.3f} {n:>6}")


if __name__ == "__main__":
    main()
