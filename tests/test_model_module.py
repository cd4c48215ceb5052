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
