"""Scoring many texts at once through the tree of their distinct prefixes (a trie), each
shared prefix computed once: ``rnnlm score``'s and ``rnnlm evaluate --per-line``'s forward.

Texts that open alike (an n-best list's hypotheses, sentences starting "the", a line
repeated outright) pay for their common part once, and padding is never computed. The
numbers are those of ``model.inference.score`` on each text alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model import inference
from model.inference import InferenceModel

__all__ = ["score_prefixes"]


def score_prefixes(model: InferenceModel, seqs: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """log P(seq[t] | seq[:t]) for t >= 1 of each id sequence, from the zero state, each
    distinct prefix computed once.

    The sequences' inputs form a trie (the tree of their distinct prefixes), fed level by
    level: level t holds one row per distinct prefix of t + 1 tokens, its state gathered
    from its parent's row, so texts that open alike (an n-best list's hypotheses, sentences
    starting "the", a repeated line) pay for their common part once. The top layer's
    outputs are projected CHUNK_ROWS rows at a time.
    """
    lengths = np.array([max(len(s) - 1, 0) for s in seqs], dtype=np.int64)  # predictions
    out = [np.empty(0, np.float32)] * len(seqs)
    if not lengths.any():
        return out
    # Rows sorted longest first, so level t's rows are the first live[t]; the ids of all
    # rows in one flat array (no padding: one long text beside short ones costs its length).
    order = np.argsort(-lengths, kind="stable")
    lens = lengths[order]
    ids = np.concatenate([np.asarray(seqs[i], dtype=np.int64) for i in order])
    starts = np.concatenate([[0], np.cumsum(lens + 1)[:-1]])  # (N,) where row i's ids begin
    dest = np.concatenate([[0], np.cumsum(lens)[:-1]])  # (N,) where its log-probs go in lp
    T = int(lens[0])
    live = np.searchsorted(-lens, -np.arange(T), side="left")  # (T,) rows with len > t
    V, H = model.config.vocab_size, model.config.hidden_size
    lp = np.empty(int(lens.sum()), dtype=np.float32)  # every row's log-probs, in row order
    node = np.zeros(len(seqs), dtype=np.int64)  # each row's node at the previous level
    # Per layer (nodes of the previous level, H): before level 0 the zero state, one row,
    # every level-0 node's parent (key // V is 0 there).
    h = [np.zeros((1, H), np.float32)] * model.num_layers
    c = list(h)
    buf = _Projection(model, lp)
    for t in range(T):
        m = int(live[t])
        here = ids[starts[:m] + t]  # (m,) each live row's input at level t
        key = here if t == 0 else node[:m] * V + here
        uniq, inv = np.unique(key, return_inverse=True)
        node[:m] = inv
        parent, tok = uniq // V, uniq % V
        n = len(uniq)
        x = model.embed[tok] if model.x_table is None else tok  # (n, D); the ids with the table
        for k in range(model.num_layers):
            hp, cp = h[k][parent], c[k][parent]  # (n, H) each
            if k == 0 and model.x_table is not None:
                a = model.x_table[tok]  # (n, 4H), bias included
                a += inference.matmul(hp, model.layer_weights(0)[1])  # h_prev @ Wh
            else:  # [x, h_prev] @ [Wx; Wh]: one product of both inputs
                a = inference.matmul(np.concatenate([x, hp], axis=1), model.Wxh[k])  # (n, 4H)
                a += model.b[k]
            hn, cn = np.empty((n, H), np.float32), np.empty((n, H), np.float32)
            inference.cell_fiog(a, cp, cn, np.empty_like(hn), hn, np.empty_like(hn))
            h[k], c[k] = hn, cn
            x = hn
        buf.add(x, inv, ids[starts[:m] + t + 1], dest[:m] + t)
    buf.flush()
    for slot, i in enumerate(order):
        out[i] = lp[dest[slot] : dest[slot] + lens[slot]]
    return out


class _Projection:
    """Top-layer outputs waiting for the output projection, and the log-probabilities they
    owe: (row, target) picks written into lp[dest] once CHUNK_ROWS rows have gathered."""

    def __init__(self, model: InferenceModel, lp: np.ndarray) -> None:
        self.model, self.lp = model, lp
        self.hs: list[np.ndarray] = []
        self.rows = 0
        self.picks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (row, target, dest)

    def add(self, h: np.ndarray, rows: np.ndarray, targets: np.ndarray, dest: np.ndarray
            ) -> None:
        """h (n, H): one level's outputs; log P(targets[j]) of row rows[j] goes to lp[dest[j]]."""
        self.picks.append((self.rows + rows, targets, dest))
        self.hs.append(h)
        self.rows += len(h)
        if self.rows >= inference.CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        """Project the rows gathered so far and write the log-probabilities they owe."""
        if not self.hs:
            return
        h = self.hs[0] if len(self.hs) == 1 else np.concatenate(self.hs)  # (rows, H)
        rows = np.concatenate([r for r, _, _ in self.picks])
        targets = np.concatenate([g for _, g, _ in self.picks])
        dest = np.concatenate([d for _, _, d in self.picks])
        self.lp[dest] = inference.project_logprobs(self.model, h, targets, rows)
        self.hs, self.picks, self.rows = [], [], 0
