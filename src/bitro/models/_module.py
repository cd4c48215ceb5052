"""The BiTro network: pure torch math, no data handling and no training loop.

cell features -> encoder -> GAT x ``n_gat`` -> transformer x ``n_layers`` -> per-cell expression
-> attention-MIL pooling to a bag. A batch is a set of *sequences* (the cells of a spot, or of one
tile of a slide) padded to a common length; each sequence belongs to a *bag* (a spot, or a whole
slide), and pooling is a softmax over all cells of a bag across its sequences. Attention (GAT and
transformer) never crosses a sequence, so memory grows with the tile size, not the slide size, and
the pooling over a slide's tiles is linear in its cells (it can be streamed, see
:meth:`BiTroModule.bag_logits`).

Every linear layer that LoRA may adapt is its own ``nn.Linear`` with a distinct name
(``encoder.proj``, ``q_proj``/``k_proj``/``v_proj``/``out_proj``, ``ff_in``/``ff_out``), so
``peft`` can target them by name without touching the architecture.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

N_FREQUENCIES = 8
"""Wavelengths of the µm position encoding, geometric from ``MIN_WAVELENGTH_UM`` to ``MAX_WAVELENGTH_UM``."""
MIN_WAVELENGTH_UM, MAX_WAVELENGTH_UM = 8.0, 1024.0
FEATURE_CLIP = 8.0
"""Standardised features are clipped to +-this, so one outlying cell cannot dominate a bag."""


def dropout_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[Tensor, float]:
    """A Bernoulli keep-mask (keep probability ``1 - p``, ``p`` rounded to 1/65536) and its rescale factor.

    Drawn as 16-bit slices of random integers: torch's CPU ``bernoulli_`` (behind ``F.dropout``)
    costs ~12 ns per element, and Monte Carlo dropout draws a mask for every attention matrix of
    every pass (it was most of ``predict``'s time with uncertainty). On CPU the bits come from
    numpy's PCG64 (64 bits = 4 masks, ~1 ns per element against ~4 ns for torch's mt19937
    ``randint``), seeded by one draw of torch's generator, so ``torch.manual_seed`` still fixes them.
    """
    n, threshold = math.prod(shape), round(p * 65536)
    if threshold >= 65536:  # p = 1: everything dropped (as F.dropout)
        return torch.zeros(shape, dtype=torch.bool, device=device), 0.0
    if torch.device(device).type == "cpu":
        seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64))
        raw = np.random.default_rng(seed).integers(0, 2**64 - 1, (n + 3) // 4, dtype=np.uint64, endpoint=True)
        halves = torch.from_numpy(raw.view(np.int16)[:n])
    else:
        halves = torch.randint(-(2**31), 2**31 - 1, ((n + 1) // 2,), dtype=torch.int32, device=device)
        halves = halves.view(torch.int16)[:n]
    keep = halves.view(shape) >= threshold - 32768
    return keep, 65536 / (65536 - threshold)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with the mask of :func:`dropout_mask` (the same distribution, ~4x faster on CPU)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        keep, scale = dropout_mask(x.shape, self.p, x.device)
        return x * keep * scale


def attention(q: Tensor, k: Tensor, v: Tensor, valid: Tensor, dropout: float) -> Tensor:
    """Scaled dot-product attention over ``valid`` keys, dropout on the weights when ``dropout`` > 0.

    Without dropout, torch's fused kernel; with it, the same product written out so that the
    weights' dropout uses :func:`dropout_mask` (the fused kernel's own dropout is ~15x its cost).
    """
    mask = valid[:, None, None, :]  # True = may be attended to
    if dropout == 0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    keep, scale = dropout_mask(weights.shape, dropout, weights.device)
    return (weights * keep * scale) @ v


class Encoder(nn.Module):
    """Cell features (already standardised) to the hidden width: Linear + LayerNorm + GELU."""

    def __init__(self, n_features: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Linear(n_features, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(F.gelu(self.norm(self.proj(x))))


class PositionEncoding(nn.Module):
    """Sine/cosine features of µm offsets from the sequence centre, projected to the hidden width."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        wavelengths = torch.logspace(
            math.log10(MIN_WAVELENGTH_UM), math.log10(MAX_WAVELENGTH_UM), N_FREQUENCIES, dtype=torch.float32
        )
        self.register_buffer("frequencies", 2 * math.pi / wavelengths, persistent=False)
        self.proj = nn.Linear(4 * N_FREQUENCIES, hidden)

    def forward(self, pos_um: Tensor) -> Tensor:
        angles = pos_um[..., None] * self.frequencies  # (..., 2, n_freq)
        enc = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)
        return self.proj(enc)


class GATLayer(nn.Module):
    """Graph attention (Velickovic et al. 2018) over each cell's neighbours, with a residual and LayerNorm.

    The neighbours come as index lists (see :func:`neighbours`), not as the dense adjacency: a cell
    graph has ~10 neighbours per cell, so the attention costs O(N k) instead of O(N²) per sequence
    (the same softmax over the same entries; under Monte Carlo dropout the dense form spent most
    of its time dropping out entries that were zero anyway).
    """

    def __init__(self, hidden: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % n_heads:
            raise ValueError(f"`hidden` ({hidden}) must be a multiple of `n_heads` ({n_heads}).")
        self.n_heads = n_heads
        self.lin = nn.Linear(hidden, hidden, bias=False)
        self.att_src = nn.Parameter(torch.empty(n_heads, hidden // n_heads))
        self.att_dst = nn.Parameter(torch.empty(n_heads, hidden // n_heads))
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)
        self.norm = nn.LayerNorm(hidden)
        self.dropout = Dropout(dropout)

    def forward(self, h: Tensor, index: Tensor, real: Tensor) -> Tensor:
        """``h`` ``(S, N, hidden)``; ``index`` ``(S, N, k)`` each cell's neighbours, ``real`` which of them exist."""
        b, n, d = h.shape
        z = self.lin(h).view(b, n, self.n_heads, d // self.n_heads)
        a_src = (z * self.att_src).sum(-1)  # (b, n, heads)
        a_dst = (z * self.att_dst).sum(-1)
        rows = torch.arange(b, device=h.device)[:, None, None]
        e = F.leaky_relu(a_dst[:, :, None, :] + a_src[rows, index], 0.2)  # (b, i, k, heads)
        e = e.masked_fill(~real[..., None], float("-inf"))
        alpha = self.dropout(torch.softmax(e, dim=2))
        out = torch.einsum("bikh,bikhd->bihd", alpha, z[rows, index]).reshape(b, n, d)
        return self.norm(h + self.dropout(F.gelu(out)))


def neighbours(adj: Tensor) -> tuple[Tensor, Tensor]:
    """Each cell's neighbour indices ``(S, N, k)`` from a boolean adjacency ``(S, N, N)``, and which are real.

    ``k`` is the largest degree; rows with fewer neighbours are filled with other indices marked
    False in the second tensor. Every row must hold at least one True (a self-loop).
    """
    k = max(int(adj.sum(-1).max()), 1)
    index = adj.to(torch.float32).topk(k, dim=-1, sorted=False).indices  # the Trues first: they are the largest
    return index, adj.gather(-1, index)


class TransformerLayer(nn.Module):
    """Pre-LayerNorm transformer layer with a key-padding mask (padded cells are never attended to)."""

    def __init__(self, hidden: int, n_heads: int, dropout: float, ff_mult: int = 2) -> None:
        super().__init__()
        if hidden % n_heads:
            raise ValueError(f"`hidden` ({hidden}) must be a multiple of `n_heads` ({n_heads}).")
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(hidden)
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.ff_in = nn.Linear(hidden, ff_mult * hidden)
        self.ff_out = nn.Linear(ff_mult * hidden, hidden)
        self.dropout = Dropout(dropout)
        self.attn_dropout = dropout

    def _split(self, t: Tensor) -> Tensor:
        b, n, d = t.shape
        return t.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, h: Tensor, valid: Tensor) -> Tensor:
        b, n, d = h.shape
        x = self.norm1(h)
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(x)), self._split(self.v_proj(x))
        att = attention(q, k, v, valid, self.attn_dropout if self.training else 0.0)
        h = h + self.dropout(self.out_proj(att.transpose(1, 2).reshape(b, n, d)))
        return h + self.dropout(self.ff_out(F.gelu(self.ff_in(self.norm2(h)))))


class BagHead(nn.Module):
    """Per-cell expression (linear: reaches any standardised value) and per-cell attention scores for pooling."""

    def __init__(self, hidden: int, n_genes: int) -> None:
        super().__init__()
        # training-set mean and std of each gene's log1p(CP10k): outputs are in standardised units
        self.register_buffer("target_mean", torch.zeros(n_genes))
        self.register_buffer("target_std", torch.ones(n_genes))
        self.expression = nn.Linear(hidden, n_genes)
        self.score_hidden = nn.Linear(hidden, hidden // 2)
        self.score_gate = nn.Linear(hidden, hidden // 2)
        self.score = nn.Linear(hidden // 2, 1)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Per-cell expression ``(..., n_genes)`` and gated attention logits ``(...)`` (Ilse et al. 2018)."""
        gated = torch.tanh(self.score_hidden(h)) * torch.sigmoid(self.score_gate(h))
        return self.expression(h), self.score(gated).squeeze(-1)


class BiTroModule(nn.Module):
    """Cell-level multiple-instance network from cell features to cell and bag expression.

    Parameters
    ----------
    n_features
        Number of cell features.
    n_genes
        Number of genes of each head named in a tuple ``heads``.
    heads
        Label kinds with a head, e.g. ``("spot",)``, or ``{kind: n_genes}`` when panels differ.
    hidden, n_heads, n_gat, n_layers, dropout
        Width, attention heads, GAT layers, transformer layers and dropout.

    Examples
    --------
    >>> import bitro as bt
    >>> net = bt.models.BiTroModule(n_features=21, n_genes=50, heads=("spot",), hidden=32)
    >>> sum(p.numel() for p in net.parameters()) > 0
    True
    """

    def __init__(
        self,
        n_features: int,
        n_genes: int,
        *,
        heads: tuple[str, ...] | dict[str, int] = ("spot",),
        hidden: int = 64,
        n_heads: int = 4,
        n_gat: int = 2,
        n_layers: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.encoder = Encoder(n_features, hidden, dropout)
        self.position = PositionEncoding(hidden)
        self.context_token = nn.Parameter(torch.zeros(hidden))
        self.gat = nn.ModuleList([GATLayer(hidden, n_heads, dropout) for _ in range(n_gat)])
        self.transformer = nn.ModuleList([TransformerLayer(hidden, n_heads, dropout) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(hidden)
        sizes = dict(heads) if isinstance(heads, dict) else dict.fromkeys(heads, n_genes)
        self.hidden = hidden
        self.heads = nn.ModuleDict({kind: BagHead(hidden, g) for kind, g in sizes.items()})

    def embed(self, x: Tensor, pos: Tensor, adj: Tensor, valid: Tensor, context: Tensor) -> Tensor:
        """Cell embeddings ``(S, N, hidden)`` of padded sequences.

        ``x`` raw features ``(S, N, F)``, ``pos`` µm offsets ``(S, N, 2)``, ``adj`` ``(S, N, N)``
        boolean, ``valid`` ``(S, N)`` (False for padding), ``context`` ``(S, N)`` (True for context
        cells: attended to, never pooled).
        """
        # a missing (NaN) feature becomes the training mean: 0 after scaling
        x = torch.nan_to_num((x - self.feature_mean) / self.feature_std, nan=0.0).clamp(-FEATURE_CLIP, FEATURE_CLIP)
        h = self.encoder(x) + self.position(pos) + context[..., None] * self.context_token
        eye = torch.eye(h.shape[1], dtype=torch.bool, device=h.device)
        adj = adj | eye  # self-loops everywhere, padding included: no empty softmax row
        index, real = neighbours(adj)
        for layer in self.gat:
            h = layer(h, index, real)
        for layer in self.transformer:
            h = layer(h, valid)
        return self.norm(h)

    def cells(self, batch: dict[str, Tensor], head: str) -> tuple[Tensor, Tensor]:
        """Per-cell standardised expression ``(S, N, G)`` and attention logits ``(S, N)`` (-inf where not pooled)."""
        h = self.embed(batch["x"], batch["pos"], batch["adj"], batch["valid"], batch["context"])
        expression, logits = self.heads[head](h)
        pooled = batch["valid"] & ~batch["context"]
        return expression, logits.masked_fill(~pooled, float("-inf"))

    def forward(self, batch: dict[str, Tensor], head: str) -> Tensor:
        """Bag expression ``(n_bags, G)``: softmax-weighted mean of the cell expression over each bag's cells.

        ``batch["bag"]`` ``(S,)`` gives each sequence's bag (``0 .. n_bags - 1``). A bag without a
        pooled cell gives NaN, never a silent zero.
        """
        expression, logits = self.cells(batch, head)
        return pool(expression, logits, batch["bag"], int(batch["n_bags"]))


def pool(expression: Tensor, logits: Tensor, bag: Tensor, n_bags: int) -> Tensor:
    """Softmax over each bag's cells (across its sequences) of ``logits``, then the weighted mean of ``expression``."""
    state = pool_state(expression, logits, bag, n_bags)
    return state[1] / state[0][:, None]


def pool_state(expression: Tensor, logits: Tensor, bag: Tensor, n_bags: int) -> tuple[Tensor, Tensor, Tensor]:
    """Online-softmax state per bag: ``(sum of weights, weighted sum of expression, max logit)``.

    Weights are ``exp(logit - max)``; states of chunks of a bag combine with :func:`merge_pool_state`,
    so a slide's pooling can be streamed tile chunk by tile chunk.
    """
    seq_max = logits.max(dim=1).values  # (S,)
    bag_max = torch.full((n_bags,), float("-inf"), dtype=logits.dtype, device=logits.device)
    bag_max = bag_max.scatter_reduce(0, bag, seq_max, reduce="amax")
    safe_max = torch.where(torch.isfinite(bag_max), bag_max, torch.zeros_like(bag_max))
    w = torch.exp(logits - safe_max[bag][:, None])  # exp(-inf) = 0 for masked cells
    denom = torch.zeros(n_bags, dtype=w.dtype, device=w.device).index_add(0, bag, w.sum(1))
    num = torch.zeros(n_bags, expression.shape[-1], dtype=w.dtype, device=w.device)
    num = num.index_add(0, bag, (w[..., None] * expression).sum(1))
    return denom, num, bag_max


def merge_pool_state(a: tuple[Tensor, Tensor, Tensor], b: tuple[Tensor, Tensor, Tensor]):
    """Combine two online-softmax states of the same bags (see :func:`pool_state`)."""
    (da, na, ma), (db, nb, mb) = a, b
    m = torch.maximum(ma, mb)
    safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    sa = torch.where(torch.isfinite(ma), torch.exp(ma - safe), torch.zeros_like(ma))
    sb = torch.where(torch.isfinite(mb), torch.exp(mb - safe), torch.zeros_like(mb))
    return da * sa + db * sb, na * sa[:, None] + nb * sb[:, None], m


def empty_pool_state(n_bags: int, n_genes: int, device) -> tuple[Tensor, Tensor, Tensor]:
    """The pooling state of ``n_bags`` bags without any cell yet (float64; see :func:`pool_state`)."""
    return (
        torch.zeros(n_bags, dtype=torch.float64, device=device),
        torch.zeros(n_bags, n_genes, dtype=torch.float64, device=device),
        torch.full((n_bags,), float("-inf"), dtype=torch.float64, device=device),
    )


def merge_pool_rows(state: tuple[Tensor, Tensor, Tensor], rows: Tensor, part: tuple[Tensor, Tensor, Tensor]) -> None:
    """Merge ``part``, the state of the bags ``rows`` (in that order), into those rows of ``state``, in place.

    A batch of a slide holds a few of its bags: merging only their rows keeps each batch's work
    (and its temporaries) batch-sized rather than proportional to the slide's bags.
    """
    merged = merge_pool_state(tuple(t[rows] for t in state), part)
    for whole, new in zip(state, merged, strict=True):
        whole[rows] = new
