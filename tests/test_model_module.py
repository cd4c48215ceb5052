"""The network's math: padding masks, pooling as a weighted mean of cells, streaming, LoRA-targetable names."""

from __future__ import annotations

import numpy as np
import torch


def _module(n_features=5, n_genes=3, **kw):
    from bitro.models import BiTroModule

    torch.manual_seed(0)
    return BiTroModule(n_features, n_genes, hidden=16, n_heads=2, **kw).eval()


def _batch(seqs, bags, n_bags, pad_to=None):
    from bitro.models._data import collate

    batch = collate(seqs, np.asarray(bags), n_bags)
    if pad_to is not None and batch["x"].shape[1] < pad_to:
        extra = pad_to - batch["x"].shape[1]
        s = batch["x"].shape[0]
        batch["x"] = torch.cat([batch["x"], torch.randn(s, extra, batch["x"].shape[2]) * 50], dim=1)
        batch["pos"] = torch.cat([batch["pos"], torch.randn(s, extra, 2) * 50], dim=1)
        adj = torch.zeros(s, pad_to, pad_to, dtype=torch.bool)
        n = batch["adj"].shape[1]
        adj[:, :n, :n] = batch["adj"]
        adj[:, n:, :] = True  # garbage edges from padding rows must not leak into real cells
        batch["adj"] = adj
        batch["valid"] = torch.cat([batch["valid"], torch.zeros(s, extra, dtype=torch.bool)], dim=1)
        batch["context"] = torch.cat([batch["context"], torch.zeros(s, extra, dtype=torch.bool)], dim=1)
    return batch


def _seq(rng, n, n_features=5, n_context=0):
    m = n + n_context
    adj = rng.random((m, m)) < 0.3
    return {
        "x": rng.normal(size=(m, n_features)).astype(np.float32),
        "pos": rng.normal(scale=20, size=(m, 2)).astype(np.float32),
        "adj": adj | adj.T,
        "context": np.r_[np.zeros(n, bool), np.ones(n_context, bool)],
    }


def test_padding_never_changes_a_bag():
    """A bag's prediction is the same alone and padded beside a longer bag (key-padding mask, GAT mask)."""
    rng = np.random.default_rng(0)
    module = _module()
    short, long = _seq(rng, 4), _seq(rng, 11)
    alone = module(_batch([short], [0], 1), "spot")
    together = module(_batch([short, long], [0, 1], 2, pad_to=15), "spot")
    np.testing.assert_allclose(alone.detach().numpy()[0], together.detach().numpy()[0], atol=1e-5)


def test_bag_is_weighted_mean_of_cells_and_context_is_not_pooled():
    from bitro.models._module import pool

    rng = np.random.default_rng(1)
    module = _module()
    batch = _batch([_seq(rng, 6, n_context=3), _seq(rng, 2)], [0, 1], 2)
    expression, logits = module.cells(batch, "spot")
    assert torch.isinf(logits[0, 6:9]).all()  # context cells carry no pooling weight
    w = torch.softmax(logits[0, :6], dim=0)
    manual = (w[:, None] * expression[0, :6]).sum(0)
    np.testing.assert_allclose(pool(expression, logits, batch["bag"], 2)[0].detach(), manual.detach(), atol=1e-5)


def test_context_cells_change_the_prediction():
    rng = np.random.default_rng(2)
    module = _module()
    seq = _seq(rng, 5, n_context=4)
    without = {k: v[:5] if k != "adj" else v[:5, :5] for k, v in seq.items()}
    a = module(_batch([seq], [0], 1), "spot")
    b = module(_batch([without], [0], 1), "spot")
    assert not torch.allclose(a, b)


def test_streamed_pooling_equals_one_pass_over_a_slide():
    """A slide's tiles pooled chunk by chunk (online softmax) give the one-pass result."""
    from bitro.models._module import merge_pool_state, pool, pool_state

    rng = np.random.default_rng(3)
    module = _module()
    tiles = [_seq(rng, int(n)) for n in rng.integers(2, 9, size=7)]
    batch = _batch(tiles, [0] * 7, 1)
    expression, logits = module.cells(batch, "spot")
    one_pass = pool(expression, logits, batch["bag"], 1)
    state = None
    for chunk in ([0, 1], [2, 3, 4], [5, 6]):
        b = _batch([tiles[i] for i in chunk], [0] * len(chunk), 1)
        e, lg = module.cells(b, "spot")
        part = pool_state(e.double(), lg.double(), b["bag"], 1)
        state = part if state is None else merge_pool_state(state, part)
    streamed = state[1] / state[0][:, None]
    np.testing.assert_allclose(streamed.detach().numpy(), one_pass.detach().numpy(), atol=1e-5)


def test_empty_bag_is_nan_not_zero():
    rng = np.random.default_rng(4)
    module = _module()
    out = module(_batch([_seq(rng, 3)], [0], 2), "spot")
    assert torch.isfinite(out[0]).all()
    assert torch.isnan(out[1]).all()


def test_output_reaches_values_below_the_mean():
    """The head is linear: standardised outputs can be negative (no Softplus against z-scores)."""
    rng = np.random.default_rng(5)
    module = _module()
    with torch.no_grad():
        module.heads["spot"].expression.bias.fill_(-3.0)
    out = module(_batch([_seq(rng, 4)], [0], 1), "spot")
    assert (out < -1).all()


def test_lora_targets_are_separate_named_linears():
    module = _module()
    names = {name.rsplit(".", 1)[-1] for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {"proj", "q_proj", "k_proj", "v_proj", "out_proj", "ff_in", "ff_out", "expression"} <= names
    assert module.heads["spot"].expression.out_features == 3


def test_missing_features_count_as_the_training_mean():
    rng = np.random.default_rng(6)
    module = _module()
    with torch.no_grad():
        module.feature_mean.copy_(torch.arange(5, dtype=torch.float32))
        module.feature_std.fill_(2.0)
    seq = _seq(rng, 4)
    with_mean = {k: v.copy() for k, v in seq.items()}
    seq["x"][1] = np.nan
    with_mean["x"][1] = np.arange(5)
    a = module(_batch([seq], [0], 1), "spot")
    b = module(_batch([with_mean], [0], 1), "spot")
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), atol=1e-6)


def _dense_gat(layer, h, adj):
    """The graph attention written over the dense adjacency (the form the sparse one must equal)."""
    b, n, d = h.shape
    z = layer.lin(h).view(b, n, layer.n_heads, d // layer.n_heads)
    a_src, a_dst = (z * layer.att_src).sum(-1), (z * layer.att_dst).sum(-1)
    e = torch.nn.functional.leaky_relu(a_dst[:, :, None, :] + a_src[:, None, :, :], 0.2)
    alpha = torch.softmax(e.masked_fill(~adj[..., None], float("-inf")), dim=2)
    out = torch.einsum("bijh,bjhd->bihd", alpha, z).reshape(b, n, d)
    return layer.norm(h + torch.nn.functional.gelu(out))


def test_neighbour_attention_equals_dense_attention_and_its_gradients():
    from bitro.models._module import GATLayer, neighbours

    torch.manual_seed(0)
    layer = GATLayer(16, 4, dropout=0.1).eval()
    h = torch.randn(3, 40, 16, requires_grad=True)
    adj = torch.rand(3, 40, 40) < 0.15
    adj[0, 30:] = False  # rows with only their self-loop (padding), and rows of very different degree
    adj |= torch.eye(40, dtype=torch.bool)
    index, real = neighbours(adj)
    assert index.shape[-1] == int(adj.sum(-1).max())
    assert int(real.sum()) == int(adj.sum())
    sparse, dense = layer(h, index, real), _dense_gat(layer, h, adj)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)
    (g_sparse,) = torch.autograd.grad(sparse.square().sum(), h)
    (g_dense,) = torch.autograd.grad(dense.square().sum(), h)
    torch.testing.assert_close(g_sparse, g_dense, atol=1e-4, rtol=1e-4)


def test_fast_dropout_has_the_dropout_distribution():
    from bitro.models._module import Dropout, attention, dropout_mask

    torch.manual_seed(0)
    keep, scale = dropout_mask(torch.Size((1000, 1001)), 0.1, torch.device("cpu"))
    assert abs(keep.float().mean().item() - 0.9) < 0.002
    assert abs(scale - 1 / 0.9) < 1e-4
    assert abs(keep[:, :500].float().mean().item() - keep[:, 501:].float().mean().item()) < 0.004  # no stripes
    x = torch.rand(200, 300) + 0.5
    layer = Dropout(0.25).train()
    out = layer(x)
    dropped = out == 0
    assert abs(dropped.float().mean().item() - 0.25) < 0.01
    torch.testing.assert_close(out[~dropped], x[~dropped] / 0.75)  # the kept values rescaled, none changed
    assert torch.equal(layer.eval()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))  # as F.dropout with p = 1
    torch.manual_seed(3)
    a = layer.train()(x)
    torch.manual_seed(3)
    assert torch.equal(a, layer(x))  # seeded like torch's own dropout
    # attention: without dropout the fused kernel; with it, unbiased (the mean of many draws -> no dropout)
    q, k, v = (torch.randn(2, 4, 30, 8) for _ in range(3))
    valid = torch.rand(2, 30) < 0.8
    exact = attention(q, k, v, valid, 0.0)
    weights = torch.softmax((q @ k.transpose(-1, -2) / 8**0.5).masked_fill(~valid[:, None, None], float("-inf")), -1)
    torch.testing.assert_close(exact, weights @ v, atol=1e-5, rtol=1e-5)
    mean = torch.stack([attention(q, k, v, valid, 0.2) for _ in range(400)]).mean(0)
    assert (mean - exact).abs().mean() < 0.02 < (attention(q, k, v, valid, 0.2) - exact).abs().mean()


def test_batch_size_never_changes_a_prediction():
    """Bags whose tiles fall in many batches (one tile per batch) pool as in one batch; empty bags stay NaN.

    (The Monte Carlo spread depends on the batches, as the dropout masks are drawn per batch.)
    """
    from dataclasses import replace

    from scipy import sparse

    from bitro.models import default_model
    from bitro.models._data import tiled_bag

    model = default_model()
    rng = np.random.default_rng(5)
    n = 400
    xy = rng.uniform(0, 600, size=(n, 2)).astype(np.float32)
    x = rng.normal(size=(n, model.config["architecture"]["n_features"])).astype(np.float32)
    near = np.linalg.norm(xy[:, None] - xy[None], axis=2) < 30
    bags = tiled_bag("slide", x, xy, sparse.csr_matrix(near & ~np.eye(n, dtype=bool)), 100.0)
    n_seqs = len(bags.seq_cells)
    assert n_seqs > 20
    # four bags (the last without a cell) whose tiles interleave, so every bag spans many batches
    bags = replace(bags, seq_bag=np.arange(n_seqs) % 3, bag_names=np.array(["a", "b", "c", "empty"]))
    whole = model.predict_bags(bags, batch_size=10_000, n_samples=3)
    one_by_one = model.predict_bags(bags, batch_size=1, n_samples=3)
    for name in ("bags", "cells", "weight"):
        np.testing.assert_allclose(getattr(one_by_one, name), getattr(whole, name), rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.isnan(whole.bags[3]).all()
    assert np.isfinite(whole.bags[:3]).all()
    assert np.isnan(one_by_one.bags_std[3]).all()
    assert (one_by_one.bags_std[:3] > 0).all()
    np.testing.assert_allclose(
        np.bincount(
            np.repeat(np.arange(n_seqs) % 3, [len(c) for c in bags.seq_cells]),
            weights=whole.weight[np.concatenate(bags.seq_cells)],
        ),
        1,
        rtol=1e-5,
    )


def test_a_sequence_sees_exactly_its_cells_edges():
    """The adjacency of a sequence is the graph restricted to its cells, in their order (context last, unsorted)."""
    from scipy import sparse

    from bitro.models._data import sub_adjacency

    rng = np.random.default_rng(3)
    n = 300
    graph = sparse.random(n, n, density=0.03, format="csr", random_state=4) > 0
    graph = sparse.csr_matrix(graph)
    graph.data[::7] = False  # a stored False is no edge
    for idx in (rng.choice(n, 40, replace=False), np.array([5, 1, 0, 299]), np.array([], int), np.array([7, 3, 7])):
        expected = graph[idx][:, idx].toarray()
        got = sub_adjacency(graph, idx)
        assert got.dtype == bool
        assert got.shape == (len(idx), len(idx))
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(sub_adjacency(graph.tocsc(), idx), graph[idx][:, idx].toarray())
