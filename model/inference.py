"""Pure, batched inference: scoring, next-word distributions, decoding steps and generation.

Nothing here keeps state between calls: an ``InferenceModel`` is read-only and may be
shared by threads; the recurrent state is an ``LSTMState`` passed in and returned;
randomness comes in as a ``np.random.Generator``. Dropout is off (the identity).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from model.functions import logsumexp, sigmoid
from model.rnnlm import LSTMState, ModelConfig
from model.sampling import GenerationStep, SamplingParams, choose_next, stop_reason

__all__ = [
    "GenerationStep",
    "InferenceModel",
    "LSTMState",
    "SamplingParams",
    "choose_next",
    "corpus_logprobs",
    "generate",
    "next_logprobs",
    "score",
    "score_details",
    "score_details_batch",
    "step",
]

# Rows of the output projection computed at once: bounds memory to CHUNK_ROWS x V floats
# (40 MB at V = 10,000) whatever the request size.
CHUNK_ROWS = 1024

# The largest layer-0 input table (InferenceModel.x_table) built: 104 MB at V = 10,000 and
# H = 650; a 100,000-word vocabulary goes without it.
INPUT_TABLE_MAX_BYTES = 128 << 20


def _fiog(H: int) -> np.ndarray:
    """Column order taking the book's gates [f, g, i, o] to [f, i, o, g]."""
    return np.concatenate([np.arange(0, H), np.arange(2 * H, 4 * H), np.arange(H, 2 * H)])


def cell_fiog(
    a: np.ndarray, c_prev: np.ndarray, c: np.ndarray, tc: np.ndarray, h: np.ndarray,
    gi: np.ndarray,
) -> None:
    """layers.lstm_cell for gates stored as [f, i, o, g]: one sigmoid call covers 3H."""
    H = c.shape[-1]
    fio, g = a[:, : 3 * H], a[:, 3 * H :]
    sigmoid(fio, out=fio)
    np.tanh(g, out=g)
    np.multiply(a[:, :H], c_prev, out=c)
    np.multiply(g, a[:, H : 2 * H], out=gi)
    c += gi
    np.tanh(c, out=tc)
    np.multiply(a[:, 2 * H : 3 * H], tc, out=h)


@dataclass(frozen=True, eq=False)
class InferenceModel:
    """Read-only float32 weights arranged for inference."""

    config: ModelConfig
    embed: np.ndarray  # (V, D)
    Wxh: tuple[np.ndarray, ...]  # per layer (D_in + H, 4H): Wx over Wh, gates [f, i, o, g]
    WxhT: tuple[np.ndarray, ...]  # per layer (4H, D_in + H): the same, transposed (a copy);
    # empty unless decode_transposed
    b: tuple[np.ndarray, ...]  # per layer (4H,), gates [f, i, o, g]
    out_WT: np.ndarray  # (V, H): ``embed`` itself when tied
    out_b: np.ndarray  # (V,)
    # A decoding step, and the output projection of a sentence, compute W.T @ x.T (else x @ W)
    decode_transposed: bool = True
    # (V, 4H): embed @ Wx of layer 0 plus its bias, every word's input projection computed
    # once, so that scoring a window gathers rows instead of running that product (a quarter
    # of the LSTM's arithmetic); None when it would take more than INPUT_TABLE_MAX_BYTES.
    x_table: np.ndarray | None = None

    @classmethod
    def from_params(
        cls,
        config: ModelConfig,
        params: Mapping[str, np.ndarray],
        *,
        decode_transposed: bool = True,
        input_table: bool = True,
    ) -> InferenceModel:
        """Build from named parameters (docs/design.md naming); copies into float32."""
        # decode_transposed: the decoding step's layout (model.blas.transposed_decode_is_faster)

        def frozen(a: np.ndarray) -> np.ndarray:
            a = np.array(a, dtype=np.float32, order="C", copy=True)
            a.flags.writeable = False
            return a

        embed = frozen(params["embed.W"])
        # Stacking Wx over Wh makes a decoding step one matrix product per layer, while
        # Wxh[:D_in] and Wxh[D_in:] stay contiguous for windows. The gates are reordered to
        # [f, i, o, g] so one sigmoid call covers the three sigmoid gates: per-step call
        # overhead is what a batch-1 request pays for. With OpenBLAS's AVX-512 kernels the
        # LSTM weights are kept in both layouts (27 MB more at 2 x 650): windows run
        # [x, h] @ W, a decoding step W.T @ [x, h].T, faster there (bench/README.md,
        # "Decisions and measurements"); with other kernels the copy is not made.
        perm = _fiog(config.hidden_size)
        Wxh = tuple(
            frozen(np.concatenate([params[f"lstm.{k}.Wx"], params[f"lstm.{k}.Wh"]],
                                  axis=0)[:, perm])
            for k in range(config.num_layers)
        )
        WxhT = tuple(frozen(W.T) for W in Wxh) if decode_transposed else ()
        b = tuple(frozen(params[f"lstm.{k}.b"][perm]) for k in range(config.num_layers))
        out_WT = embed if config.tied else frozen(params["affine.W"].T)
        x_table = None
        if input_table and config.vocab_size * 4 * config.hidden_size * 4 <= INPUT_TABLE_MAX_BYTES:
            table = embed @ Wxh[0][: config.wordvec_size]  # (V, 4H)
            table += b[0]
            table.flags.writeable = False
            x_table = table
        return cls(config, embed, Wxh, WxhT, b, out_WT, frozen(params["affine.b"]),
                   decode_transposed, x_table)

    @property
    def out_W(self) -> np.ndarray:
        """The output projection (H, V), a view."""
        return self.out_WT.T

    @property
    def step_nbytes(self) -> int:
        """Bytes of weights one decoding step reads (the LSTM weights, biases, output)."""
        arrays = (*(self.WxhT or self.Wxh), *self.b, self.out_WT, self.out_b)
        return sum(a.nbytes for a in arrays)

    @property
    def num_layers(self) -> int:
        """L."""
        return self.config.num_layers

    def zero_state(self, batch_size: int) -> LSTMState:
        """The all-zero state every text starts from."""
        return LSTMState.zeros(self.config, batch_size, np.float32)

    def layer_weights(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Wx (D_in, 4H) and Wh (H, 4H) of layer k, as contiguous views of Wxh."""
        d_in = self.config.wordvec_size if k == 0 else self.config.hidden_size
        return self.Wxh[k][:d_in], self.Wxh[k][d_in:]


# Products of 2 or 3 rows run as that many matrix-vector products: OpenBLAS packs the whole
# weight matrix for a small matrix product, which costs more than the rows (bench/README.md).
ROWWISE_MAX = 3


def matmul(a: np.ndarray, W: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a @ W; 2 or 3 rows of a as that many matrix-vector products (see ROWWISE_MAX)."""
    if out is None:
        out = np.empty((a.shape[0], W.shape[1]), dtype=np.float32)
    if 1 < a.shape[0] <= ROWWISE_MAX:
        for i in range(a.shape[0]):
            np.matmul(a[i], W, out=out[i])
    else:
        np.matmul(a, W, out=out)
    return out


# With the kernels where a decoding step is faster transposed (decode_transposed), so is the
# output projection of up to this many rows, e.g. a sentence's (bench/README.md).
TRANSPOSED_PROJECTION_ROWS = 48


def _logits(model: InferenceModel, h: np.ndarray, transposed: bool) -> np.ndarray:
    """(m, V) output logits of top-layer outputs h (m, H), as embed @ h.T or as h @ embed.T."""
    if transposed:
        logits_T = model.out_WT @ h.T  # (V, m)
        logits_T += model.out_b[:, None]
        return np.ascontiguousarray(logits_T.T)  # (m, V)
    logits = matmul(h, model.out_W)  # (m, V)
    logits += model.out_b
    return logits


def _pad(seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id sequences with 0 -> ids (N, T) and lengths (N,)."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    T = int(lengths.max()) if len(seqs) else 0
    ids = np.zeros((len(seqs), T), dtype=np.int64)
    for n, s in enumerate(seqs):
        ids[n, : len(s)] = s
    return ids, lengths


@dataclass(frozen=True, eq=False)
class _Packing:
    """Rows sorted longest first and fed time-major: step t holds the first n[t] sorted rows.

    Padding is never computed, as PyTorch's ``pack_padded_sequence`` does: a batch of texts
    of different lengths costs the sum of their lengths, not N times the longest.
    """

    order: np.ndarray  # (N,) the original row in each sorted slot
    n: np.ndarray  # (T,) rows still running at step t, non-increasing
    offsets: np.ndarray  # (T + 1,) where step t starts in the packed arrays
    rows: np.ndarray  # (M,) the original row of each packed position
    times: np.ndarray  # (M,) the time of each packed position


def _pack(lengths: np.ndarray, T: int) -> _Packing:
    """The packing of rows of these lengths (each at most T)."""
    order = np.argsort(-lengths, kind="stable")
    n = (lengths[order][None, :] > np.arange(T)[:, None]).sum(axis=1)  # (T,)
    offsets = np.concatenate([[0], np.cumsum(n)])
    times = np.repeat(np.arange(T), n)
    slots = np.arange(offsets[-1]) - offsets[times]
    return _Packing(order, n, offsets, order[slots], times)


def _run_packed(
    model: InferenceModel, ids: np.ndarray, lengths: np.ndarray, state: LSTMState | None
) -> tuple[np.ndarray, LSTMState, _Packing]:
    """Feed (N, T) ids, rows of the given lengths; -> top-layer outputs of the real positions
    (M, H) in packed order, each row's state after its length, and the packing."""
    N, T = ids.shape
    H = model.config.hidden_size
    p = _pack(lengths, T)
    if state is None:
        state = model.zero_state(N)
    # Sorted copies, updated in place: a row that ends keeps its last state.
    h, c = state.h[:, p.order], state.c[:, p.order]  # (L, N, H)
    packed_ids = ids[p.rows, p.times]  # (M,)
    table = model.x_table
    x = model.embed[packed_ids] if table is None else packed_ids  # (M, D); the ids with the table
    hWh = np.empty((N, 4 * H), dtype=np.float32)
    tc = np.empty((N, H), dtype=np.float32)
    gi = np.empty((N, H), dtype=np.float32)
    for k in range(model.num_layers):
        Wx, Wh = model.layer_weights(k)
        if k == 0 and table is not None:  # each position's row, bias included
            A = table[packed_ids]  # (M, 4H), a copy
        else:
            A = matmul(x, Wx)  # (M, 4H): every input projection of the layer in one product
            A += model.b[k]
        out = np.empty((len(A), H), dtype=np.float32)
        hk, ck = h[k], c[k]
        for t in range(T):
            m, s = int(p.n[t]), int(p.offsets[t])
            a = A[s : s + m]
            matmul(hk[:m], Wh, out=hWh[:m])
            a += hWh[:m]
            cell_fiog(a, ck[:m], ck[:m], tc[:m], hk[:m], gi[:m])
            out[s : s + m] = hk[:m]
        x = out
    h_out, c_out = np.empty_like(h), np.empty_like(c)
    h_out[:, p.order], c_out[:, p.order] = h, c
    return x, LSTMState(h_out, c_out), p


def run(
    model: InferenceModel,
    ids: np.ndarray,
    lengths: np.ndarray | None = None,
    state: LSTMState | None = None,
) -> tuple[np.ndarray, LSTMState]:
    """Feed (N, T) ids; -> top-layer outputs (T, N, H) and each row's state after its length.

    Positions at or past a row's length are padding: they are not computed (zeros in the
    outputs) and never affect the row's outputs or its returned state.
    """
    N, T = ids.shape
    if lengths is None:
        lengths = np.full(N, T, dtype=np.int64)
    x, new_state, p = _run_packed(model, ids, lengths, state)
    if len(x) == N * T:  # no padding: the packed order is (t, n) row-major
        return x.reshape(T, N, -1), new_state  # (T, N, H)
    hs = np.zeros((T, N, x.shape[1]), dtype=np.float32)
    hs[p.times, p.rows] = x
    return hs, new_state


def project_logprobs(
    model: InferenceModel, h: np.ndarray, targets: np.ndarray, rows: np.ndarray | None = None
) -> np.ndarray:
    """log P(target) for rows of top-layer outputs h (M, H), in chunks of CHUNK_ROWS; with
    ``rows``, log P(targets[j]) of row rows[j] of h (a row may be picked several times)."""
    out = np.empty(len(targets), dtype=np.float32)
    if rows is None:
        picks = np.arange(len(targets))
        rows = picks
    else:
        picks = np.argsort(rows, kind="stable")
    bounds = np.searchsorted(rows[picks], np.arange(0, len(h) + CHUNK_ROWS, CHUNK_ROWS))
    for j, s in enumerate(range(0, len(h), CHUNK_ROWS)):
        hs = h[s : s + CHUNK_ROWS]
        small = ROWWISE_MAX < len(hs) <= TRANSPOSED_PROJECTION_ROWS
        logits = _logits(model, hs, model.decode_transposed and small)  # (m, V)
        mine = picks[bounds[j] : bounds[j + 1]]
        r, t = rows[mine] - s, targets[mine]
        # log-sum-exp in place on the chunk we own: no temporaries of (m, V)
        m = logits.max(axis=1)
        picked = logits[r, t] - m[r]
        logits -= m[:, None]
        np.exp(logits, out=logits)
        out[mine] = picked - np.log(logits.sum(axis=1))[r]
    return out


def score(
    model: InferenceModel,
    inputs: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    state: LSTMState | None = None,
) -> tuple[list[np.ndarray], LSTMState]:
    """Natural-log P(targets[n][t] | inputs[n][: t + 1]) for each row, as one packed batch.

    Rows may differ in length; ``targets[n]`` must be as long as ``inputs[n]``. Returns
    each row's log-probabilities (float32) and its state after its last input.
    """
    if len(inputs) != len(targets) or any(
        len(a) != len(b) for a, b in zip(inputs, targets, strict=True)
    ):
        raise ValueError("every row of targets must be as long as its row of inputs")
    ids, lengths = _pad(inputs)
    N = len(inputs)
    if N == 0:
        return [], model.zero_state(0)
    x, new_state, p = _run_packed(model, ids, lengths, state)
    tgt, _ = _pad(targets)
    # Only real positions were computed, and only they reach the output projection.
    lp = np.empty(ids.shape, dtype=np.float32)  # (N, T)
    lp[p.rows, p.times] = project_logprobs(model, x, tgt[p.rows, p.times])
    return [lp[n, : lengths[n]] for n in range(N)], new_state


@dataclass(frozen=True, eq=False)
class TokenDetails:
    """Per predicted position of one text: log P(target), its rank and the top k ids."""

    logprobs: np.ndarray  # (T,) float32
    ranks: np.ndarray  # (T,) 1 = the most likely token
    top_ids: np.ndarray  # (T, k), best first
    top_logprobs: np.ndarray  # (T, k)


def score_details(model: InferenceModel, seq: Sequence[int], k: int) -> TokenDetails:
    """Score seq[1:] from a zero state fed seq[:-1], with each target's rank in the full
    distribution (1 + the tokens strictly more likely) and the k most likely tokens."""
    return score_details_batch(model, [seq], k)[0]


def score_details_batch(
    model: InferenceModel, seqs: Sequence[Sequence[int]], k: int
) -> list[TokenDetails]:
    """score_details of each sequence, the texts run as one packed batch."""
    k = max(0, min(k, model.out_b.shape[0]))
    out = [TokenDetails(np.empty(0, np.float32), np.empty(0, np.int64),
                        np.empty((0, k), np.int64), np.empty((0, k), np.float32))] * len(seqs)
    live = [i for i, q in enumerate(seqs) if len(q) >= 2]  # the others predict nothing
    if not live:
        return out
    ids, lengths = _pad([seqs[i][:-1] for i in live])
    h, _, p = _run_packed(model, ids, lengths, None)  # (M, H) in packed order
    tgt, _ = _pad([seqs[i][1:] for i in live])
    targets = tgt[p.rows, p.times]  # (M,)
    M = len(targets)
    lp = np.empty(M, np.float32)
    ranks = np.empty(M, np.int64)
    top_ids = np.empty((M, k), np.int64)
    top_lp = np.empty((M, k), np.float32)
    for s in range(0, M, CHUNK_ROWS):
        logits = _logits(model, h[s : s + CHUNK_ROWS], False)  # (m, V)
        logp = logits - logsumexp(logits, axis=1)  # (m, V)
        rows = np.arange(len(logp))
        t = targets[s : s + CHUNK_ROWS]
        picked = logp[rows, t]
        lp[s : s + len(t)] = picked
        ranks[s : s + len(t)] = 1 + (logp > picked[:, None]).sum(axis=1)
        if k:
            part = np.argpartition(-logp, k - 1, axis=1)[:, :k]  # (m, k), unordered
            order = np.argsort(-np.take_along_axis(logp, part, axis=1), axis=1, kind="stable")
            best = np.take_along_axis(part, order, axis=1)
            top_ids[s : s + len(t)] = best
            top_lp[s : s + len(t)] = np.take_along_axis(logp, best, axis=1)
    # Back from packed order to each text's positions.
    where = np.empty(ids.shape, np.int64)  # (N, T): packed index of (row, time)
    where[p.rows, p.times] = np.arange(M)
    for n, i in enumerate(live):
        j = where[n, : lengths[n]]
        out[i] = TokenDetails(lp[j], ranks[j], top_ids[j], top_lp[j])
    return out


def next_logprobs(
    model: InferenceModel,
    contexts: Sequence[Sequence[int]],
    state: LSTMState | None = None,
) -> tuple[np.ndarray, LSTMState]:
    """The next-word log-distribution (N, V) after each non-empty context, and the states."""
    if any(len(c) == 0 for c in contexts):
        raise ValueError("a context needs at least one token (start texts with <eos>)")
    ids, lengths = _pad(contexts)
    _, new_state, _ = _run_packed(model, ids, lengths, state)
    h_last = new_state.h[-1]  # (N, H): the top layer's h after each row's last token
    logits = _logits(model, h_last, False)  # (N, V)
    return logits - logsumexp(logits, axis=1), new_state


def step(model: InferenceModel, ids: np.ndarray, state: LSTMState) -> tuple[np.ndarray, LSTMState]:
    """Advance N streams by one token each: (N,) ids -> (N, V) logits and the new state."""
    N = ids.shape[0]
    if 1 < N <= ROWWISE_MAX:
        rows = [step(model, ids[i : i + 1], state.select([i])) for i in range(N)]
        return np.concatenate([lg for lg, _ in rows]), LSTMState.stack([st for _, st in rows])
    H = model.config.hidden_size
    x = model.embed[ids]  # (N, D)
    h_new = np.empty_like(state.h)
    c_new = np.empty_like(state.c)
    tc = np.empty((N, H), dtype=np.float32)
    gi = np.empty((N, H), dtype=np.float32)
    for k in range(model.num_layers):
        xh = np.concatenate([x, state.h[k]], axis=1)  # (N, D_in + H)
        # (N, 4H); transposed, a view of (4H, N)
        a = (model.WxhT[k] @ xh.T).T if model.decode_transposed else xh @ model.Wxh[k]
        a += model.b[k]
        cell_fiog(a, state.c[k], c_new[k], tc, h_new[k], gi)
        x = h_new[k]
    return _logits(model, x, model.decode_transposed), LSTMState(h_new, c_new)  # (N, V)


def generate(
    model: InferenceModel,
    prompt: Sequence[int],
    max_new_tokens: int,
    params: SamplingParams,
    rng: np.random.Generator | None,
    eos_id: int,
    unk_id: int | None = None,
    stop_at_eos: bool = True,
    stop_sequences: Sequence[Sequence[int]] = (),
    state: LSTMState | None = None,
) -> Iterator[GenerationStep]:
    """Yield generated tokens one at a time after a non-empty prompt (batch of one).

    ``state`` is the state before the prompt (zero when None). The last step carries its
    ``finish_reason``; stopping early is as simple as not asking for the next step.
    """
    if not prompt:
        raise ValueError("the prompt needs at least one token (start texts with <eos>)")
    logp, st = next_logprobs(model, [prompt], state)
    logp_row = logp[0]
    history = list(prompt)
    generated: list[int] = []
    stops = [list(x) for x in stop_sequences if len(x)]
    for _ in range(max_new_tokens):
        token = choose_next(logp_row, params, rng, history, unk_id)
        lp = float(logp_row[token])
        history.append(token)
        generated.append(token)
        reason = stop_reason(generated, max_new_tokens, eos_id if stop_at_eos else None, stops)
        yield GenerationStep(token, lp, reason)
        if reason is not None:
            return
        logits, st = step(model, np.array([token]), st)
        logp_row = logits[0] - logsumexp(logits[0])


def corpus_logprobs(
    model: InferenceModel,
    ids: np.ndarray,
    book_batching: bool = False,
    window: int = 256,
    on_progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Log-probabilities of a corpus split's predicted tokens, carrying state across windows.

    Default: one stream from a zero state predicting c[1:] from c[:-1] (L - 1 targets).
    ``book_batching``: the book's ``eval_perplexity`` with B = 10 rows of T = 35: row i
    reads c[i*jump + j] for j < iters*T, jump = (L-1)//B, iters = (L-1)//(B*T); only
    those targets are scored. The state carries across windows, so ``window`` (the
    tokens per forward) changes only speed and memory. ``on_progress`` gets targets done.
    """
    c = np.asarray(ids, dtype=np.int64)
    L = len(c)
    if book_batching:
        B, T = 10, 35
        jump, iters = (L - 1) // B, (L - 1) // (B * T)
        cols = np.arange(iters * T)
        starts = np.arange(B)[:, None] * jump
        xs, ts = c[starts + cols], c[starts + cols + 1]  # (B, iters*T)
    else:
        xs, ts = c[None, :-1], c[None, 1:]  # (1, L-1)
    N, total = xs.shape
    state = model.zero_state(N)
    out = np.empty((N, total), dtype=np.float32)
    for s in range(0, total, window):
        x, t = xs[:, s : s + window], ts[:, s : s + window]
        hs, state = run(model, x, None, state)  # (T, N, H)
        lp = project_logprobs(model, hs.transpose(1, 0, 2).reshape(-1, hs.shape[2]),
                               t.reshape(-1))  # rows in (n, t) order
        out[:, s : s + x.shape[1]] = lp.reshape(N, -1)  # (N, T)
        if on_progress is not None:
            on_progress(x.size)
    return out.reshape(-1)
