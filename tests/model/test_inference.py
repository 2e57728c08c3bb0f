"""Pure inference against the training forward and against a naive float64 loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.functions import log_softmax
from model.inference import (
    InferenceModel,
    SamplingParams,
    choose_next,
    corpus_logprobs,
    generate,
    next_logprobs,
    run,
    score,
    step,
)
from model.rnnlm import BetterRnnlm, LSTMState, ModelConfig
from model.sampling import matched_stop, stop_prefix_length
from tests.model.conftest import TINY_V
from tests.naive import naive_logprobs, naive_next

V = TINY_V  # the vocabulary of conftest.trained_like


def test_equals_training_forward_with_dropout_off(trained_like, model) -> None:  # type: ignore[no-untyped-def]
    cfg, params = trained_like
    xs = np.random.default_rng(2).integers(0, V, (4, 9))
    ref = log_softmax(BetterRnnlm(cfg, {k: v.copy() for k, v in params.items()}).logits(xs))
    lps, _ = score(model, list(xs[:, :-1]), list(xs[:, 1:]))
    want = np.take_along_axis(ref[:, :-1], xs[:, 1:, None], axis=2)[..., 0]
    assert np.allclose(np.stack(lps), want, atol=1e-5)
    nxt, _ = next_logprobs(model, list(xs))
    assert np.allclose(nxt, ref[:, -1], atol=1e-5)
    two, _ = next_logprobs(model, list(xs[:2]))  # 2 contexts: the row-by-row products
    assert np.allclose(two, ref[:2, -1], atol=1e-5)


@pytest.mark.parametrize("n", [2, 3, 4, 60])  # 1, 2, 3 positions take the row-by-row products
def test_matches_naive_float64_loop(trained_like, model, n) -> None:  # type: ignore[no-untyped-def]
    cfg, params = trained_like
    ids = list(np.random.default_rng(3).integers(0, V, n))
    lps, _ = score(model, [ids[:-1]], [ids[1:]])
    assert np.allclose(lps[0], naive_logprobs(params, cfg, ids), atol=1e-5)


def test_batch_equals_one_at_a_time(model: InferenceModel) -> None:
    r = np.random.default_rng(4)
    seqs = [list(r.integers(0, V, n)) for n in (2, 17, 5, 1 + 1, 30, 9)]
    lps, states = score(model, [s[:-1] for s in seqs], [s[1:] for s in seqs])
    for n, s in enumerate(seqs):
        alone, st1 = score(model, [s[:-1]], [s[1:]])
        assert np.allclose(lps[n], alone[0], atol=1e-5)
        assert np.allclose(states.h[:, n], st1.h[:, 0], atol=1e-5)
        assert np.allclose(states.c[:, n], st1.c[:, 0], atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=7), seed=st.integers(0, 2**16))
def test_packed_batch_equals_each_row_alone_from_its_own_state(
    model: InferenceModel, lengths: list[int], seed: int
) -> None:
    """Rows of any lengths (ties included), each from its own state: packing sorts rows by
    length and stops a row at its end; nothing of that may leak into the answers."""
    r = np.random.default_rng(seed)
    seqs = [list(r.integers(0, V, n + 1)) for n in lengths]
    L, H = model.num_layers, model.config.hidden_size
    start = LSTMState(
        r.standard_normal((L, len(seqs), H)).astype(np.float32),
        r.standard_normal((L, len(seqs), H)).astype(np.float32),
    )
    before = (start.h.copy(), start.c.copy())
    lps, states = score(model, [s[:-1] for s in seqs], [s[1:] for s in seqs], start)
    assert np.array_equal(start.h, before[0]) and np.array_equal(start.c, before[1])
    for n, s in enumerate(seqs):
        own = LSTMState(start.h[:, n : n + 1].copy(), start.c[:, n : n + 1].copy())
        alone, st1 = score(model, [s[:-1]], [s[1:]], own)
        assert lps[n].shape == (len(s) - 1,)
        assert np.allclose(lps[n], alone[0], atol=1e-5)
        assert np.allclose(states.h[:, n], st1.h[:, 0], atol=1e-5)
        assert np.allclose(states.c[:, n], st1.c[:, 0], atol=1e-5)


def test_run_leaves_padding_uncomputed(model: InferenceModel) -> None:
    ids = np.random.default_rng(8).integers(0, V, (3, 6))
    lengths = np.array([2, 6, 4])
    hs, _ = run(model, ids, lengths)
    full, _ = run(model, ids)
    for n, k in enumerate(lengths):
        assert np.allclose(hs[:k, n], full[:k, n], atol=1e-6)
        assert not hs[k:, n].any()


def test_state_carries_across_calls(model: InferenceModel) -> None:
    ids = list(np.random.default_rng(5).integers(0, V, 41))
    whole, _ = score(model, [ids[:-1]], [ids[1:]])
    a, st1 = score(model, [ids[:20]], [ids[1:21]])
    b, _ = score(model, [ids[20:-1]], [ids[21:]], st1)
    assert np.allclose(np.concatenate([a[0], b[0]]), whole[0], atol=1e-5)


def test_step_equals_window(model: InferenceModel) -> None:
    ids = np.random.default_rng(6).integers(0, V, (3, 7))
    state = model.zero_state(3)
    for t in range(7):
        logits, state = step(model, ids[:, t], state)
    ref, ref_state = next_logprobs(model, list(ids))
    assert np.allclose(log_softmax(logits), ref, atol=1e-5)
    assert np.allclose(state.h, ref_state.h, atol=1e-6)


@pytest.mark.parametrize("transposed", [True, False], ids=["WT@xT", "x@W"])
@pytest.mark.parametrize("N", [1, 2, 3, 4, 6])
def test_step_of_n_streams_equals_each_stream_alone(
    trained_like: tuple[ModelConfig, dict[str, np.ndarray]], N: int, transposed: bool
) -> None:
    """2 or 3 streams step row by row, more as one product, in either layout: every way
    agrees with a stream alone and with the training forward."""
    cfg, params = trained_like
    model = InferenceModel.from_params(cfg, params, decode_transposed=transposed)
    r = np.random.default_rng(10 + N)
    L, H = model.num_layers, model.config.hidden_size
    ids = r.integers(0, V, N)
    state = LSTMState(
        r.standard_normal((L, N, H)).astype(np.float32),
        r.standard_normal((L, N, H)).astype(np.float32),
    )
    logits, new = step(model, ids, state)
    assert logits.shape == (N, V) and new.h.shape == (L, N, H)
    assert logits.flags.c_contiguous
    ref = BetterRnnlm(cfg, {k: v.copy() for k, v in params.items()})
    xs = ids[:, None]  # (N, 1): one step of the training forward from the same state
    ref_logits = ref.logits(xs, LSTMState(state.h.copy(), state.c.copy()))
    assert np.allclose(logits, ref_logits[:, 0], atol=1e-5)
    for i in range(N):
        alone, own = step(model, ids[i : i + 1], state.select([i]))
        assert np.allclose(logits[i], alone[0], atol=1e-5)
        assert np.allclose(new.h[:, i], own.h[:, 0], atol=1e-6)
        assert np.allclose(new.c[:, i], own.c[:, 0], atol=1e-6)


def test_corpus_logprobs_book_batching_indexing(model: InferenceModel) -> None:
    c = np.random.default_rng(7).integers(0, V, 800)
    got = corpus_logprobs(model, c, book_batching=True)
    B, T = 10, 35
    jump, iters = (len(c) - 1) // B, (len(c) - 1) // (B * T)
    assert got.shape == (B * iters * T,)
    rows = [c[i * jump : i * jump + iters * T + 1] for i in range(B)]
    want, _ = score(model, [r[:-1] for r in rows], [r[1:] for r in rows])
    assert np.allclose(got, np.concatenate(want), atol=1e-5)
    one = corpus_logprobs(model, c)
    assert one.shape == (len(c) - 1,)


def test_chunked_projection_matches_unchunked(model: InferenceModel, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import model.inference as inf

    ids = list(np.random.default_rng(8).integers(0, V, 50))
    full, _ = score(model, [ids[:-1]], [ids[1:]])
    monkeypatch.setattr(inf, "CHUNK_ROWS", 7)
    chunked, _ = score(model, [ids[:-1]], [ids[1:]])
    assert np.allclose(full[0], chunked[0], atol=1e-6)  # BLAS may sum in another order


def test_input_table_equals_the_layer_zero_product(
    trained_like: tuple[ModelConfig, dict[str, np.ndarray]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gathered rows of embed @ Wx + b give the scores the product gives; too large a
    table is not built."""
    import model.inference as inf

    with_table = InferenceModel.from_params(*trained_like)
    without = InferenceModel.from_params(*trained_like, input_table=False)
    assert with_table.x_table is not None and without.x_table is None
    assert not with_table.x_table.flags.writeable
    rng = np.random.default_rng(9)
    seqs = [list(rng.integers(0, V, n)) for n in (3, 17, 9)]
    a, sa = score(with_table, [s[:-1] for s in seqs], [s[1:] for s in seqs])
    b, sb = score(without, [s[:-1] for s in seqs], [s[1:] for s in seqs])
    for x, y in zip(a, b, strict=True):
        assert np.allclose(x, y, atol=1e-5)
    assert np.allclose(sa.h, sb.h, atol=1e-5) and np.allclose(sa.c, sb.c, atol=1e-5)
    monkeypatch.setattr(inf, "INPUT_TABLE_MAX_BYTES", V * 4 * trained_like[0].hidden_size * 4 - 1)
    assert InferenceModel.from_params(*trained_like).x_table is None


def test_model_is_read_only(model: InferenceModel) -> None:
    with pytest.raises(ValueError, match="read-only"):
        model.embed[0, 0] = 1.0
    for w in (*model.Wxh, *model.WxhT, *model.b, model.out_WT, model.out_b):
        assert not w.flags.writeable


def test_tied_projection_is_the_embedding(model: InferenceModel) -> None:
    """House rule 3: one array, never a copy; untied weights keep their own."""
    assert (model.out_WT is model.embed) == model.config.tied
    assert model.out_W.base is model.out_WT
    D = model.config.wordvec_size
    Wx, Wh = model.layer_weights(0)
    assert Wx.shape == (D, 4 * model.config.hidden_size) and Wx.flags.c_contiguous
    assert np.shares_memory(Wx, model.Wxh[0]) and np.shares_memory(Wh, model.Wxh[0])
    for W, WT in zip(model.Wxh, model.WxhT, strict=True):  # two layouts of the same numbers
        assert WT.flags.c_contiguous and np.array_equal(WT, W.T)


def test_row_major_decoding_keeps_one_layout(
    trained_like: tuple[ModelConfig, dict[str, np.ndarray]],
) -> None:
    """Without the transposed decoding step there is no transposed copy to keep."""
    both = InferenceModel.from_params(*trained_like)
    one = InferenceModel.from_params(*trained_like, decode_transposed=False)
    assert one.WxhT == () and len(both.WxhT) == both.num_layers
    assert one.step_nbytes == both.step_nbytes  # a step reads either layout once


# ------------------------------------------------------------------ generation
EOS, UNK = 0, 1


def _gen(model: InferenceModel, seed: int | None, **kw: object) -> list[int]:
    params = SamplingParams(**{k: v for k, v in kw.items() if k not in ("n", "stops", "eos")})  # type: ignore[arg-type]
    rng = None if seed is None else np.random.default_rng(seed)
    return [s.id for s in generate(model, [EOS, 5, 6], int(kw.get("n", 30)), params, rng,  # type: ignore[call-overload]
                                   eos_id=EOS, unk_id=UNK, stop_at_eos=bool(kw.get("eos", False)),
                                   stop_sequences=kw.get("stops", ()))]  # type: ignore[arg-type]


def test_same_seed_same_tokens_and_seeds_differ(model: InferenceModel) -> None:
    a, b = _gen(model, 11), _gen(model, 11)
    assert a == b
    outs = {tuple(_gen(model, s)) for s in range(5)}
    assert len(outs) >= 2


def test_greedy_is_the_argmax_path(trained_like, model) -> None:  # type: ignore[no-untyped-def]
    cfg, params = trained_like
    got = _gen(model, None, do_sample=False, ban_unk=False, n=12)
    ctx = [EOS, 5, 6]
    for tok in got:
        # argmax of the naive scorer's next-token distribution, over every candidate
        assert tok == int(np.argmax(naive_next(params, cfg, ctx)))
        ctx.append(tok)


def test_ban_unk_never_emits_unk(model: InferenceModel) -> None:
    for seed in range(5):
        assert UNK not in _gen(model, seed, temperature=5.0, n=60)
    assert UNK not in _gen(model, None, do_sample=False, n=60)


def test_stops_at_eos_and_stop_sequence(model: InferenceModel) -> None:
    params = SamplingParams(temperature=3.0)
    steps = list(generate(model, [EOS, 3], 500, params, np.random.default_rng(0), EOS, UNK,
                          stop_at_eos=True))
    assert steps[-1].finish_reason in ("eos_token", "length")
    assert all(s.id != EOS for s in steps[:-1])
    first = _gen(model, 3, n=10)
    stop = first[3:5]
    steps = list(generate(model, [EOS, 5, 6], 10, SamplingParams(), np.random.default_rng(3),
                          EOS, UNK, stop_sequences=[stop]))
    assert steps[-1].finish_reason == "stop_sequence"
    ids = [s.id for s in steps]
    assert ids[-2:] == stop and len(ids) <= 5
    steps = list(generate(model, [EOS], 4, SamplingParams(), np.random.default_rng(0), EOS))
    assert len(steps) <= 4 and steps[-1].finish_reason is not None


@settings(max_examples=60, deadline=None)
@given(
    logits=st.lists(st.floats(-20, 20), min_size=V, max_size=V),
    top_k=st.one_of(st.none(), st.integers(1, V)),
    top_p=st.one_of(st.none(), st.floats(0.01, 1.0)),
    temperature=st.floats(0.1, 5.0),
    seed=st.integers(0, 2**32),
)
def test_top_k_top_p_never_sample_outside_their_set(
    logits: list[float], top_k: int | None, top_p: float | None, temperature: float, seed: int
) -> None:
    x = np.array(logits, dtype=np.float32)
    p = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, ban_unk=False)
    tok = choose_next(x, p, np.random.default_rng(seed))
    z = x.astype(np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    if top_k is not None:
        assert z[tok] >= z[order[top_k - 1]]
    if top_p is not None:
        kept = order[: top_k or V]
        probs = np.exp(z[kept] - z[kept].max())
        probs /= probs.sum()
        cum = np.cumsum(probs)
        n = int(np.searchsorted(cum, top_p * (1 - 1e-9))) + 1
        # allow ties at the boundary
        assert z[tok] >= z[kept[min(n, len(kept)) - 1]] - 1e-9


def test_repetition_penalty_discourages_seen_tokens() -> None:
    x = np.zeros(5, dtype=np.float32)
    x[2], x[0], x[4] = 1.0, 0.5, -0.1
    greedy = SamplingParams(do_sample=False, repetition_penalty=3.0, ban_unk=False)
    assert choose_next(x, greedy, None, history=[2]) == 0  # 1/3 < 0.5
    x[:] = -1.0
    x[3] = -0.5
    assert choose_next(x, greedy, None, history=[3]) != 3  # -1.5 < -1: negatives multiply
    assert choose_next(x, SamplingParams(do_sample=False, ban_unk=False), None) == 3


def test_logit_bias_moves_the_choice_greedy_and_sampled() -> None:
    x = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    greedy = SamplingParams(do_sample=False, ban_unk=False)
    assert choose_next(x, greedy, None) == 0
    assert choose_next(x, SamplingParams(do_sample=False, ban_unk=False,
                                         logit_bias=((3, 100.0),)), None) == 3
    banned = SamplingParams(ban_unk=False, logit_bias=((0, -100.0), (1, -100.0)))
    draws = {choose_next(x, banned, np.random.default_rng(s)) for s in range(200)}
    assert draws == {2, 3}
    # a bias of log 2 on token 2 makes it as likely as token 1 would be at 0.3: 0.3 / 0.3
    even = SamplingParams(ban_unk=False, logit_bias=((2, float(np.log(2.0))),))
    n = 20_000
    rng = np.random.default_rng(0)
    counts = np.bincount([choose_next(x, even, rng) for _ in range(n)], minlength=4)
    assert abs(counts[1] - counts[2]) < 5 * np.sqrt(n * 0.23)


def test_stop_prefix_length_is_the_longest_suffix_that_starts_a_stop() -> None:
    assert stop_prefix_length([1, 2, 3], [(3, 4)]) == 1
    assert stop_prefix_length([1, 2, 3], [(2, 3, 4), (3, 9)]) == 2
    assert stop_prefix_length([1, 2, 3], [(2, 3)]) == 0  # a whole match is not a prefix
    assert stop_prefix_length([], [(1, 2)]) == 0
    assert matched_stop([5, 2, 3], [(9,), (2, 3)]) == 1
    assert matched_stop([3], [(2, 3)]) is None


@given(st.lists(st.integers(0, 3), max_size=12),
       st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=5), max_size=3))
def test_stop_prefix_length_against_its_definition(gen: list[int], stops: list[list[int]]) -> None:
    want = max([n for x in stops for n in range(1, len(x)) if n <= len(gen)
                and gen[len(gen) - n:] == x[:n]], default=0)
    assert stop_prefix_length(gen, stops) == want


def test_sampling_params_validation() -> None:
    for bad in ({"temperature": 0.0}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5},
                {"repetition_penalty": 0.0}, {"typical_p": 2.0},
                {"logit_bias": ((-1, 1.0),)}, {"logit_bias": ((1, float("inf")),)}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)  # type: ignore[arg-type]


def test_one_stream_on_ptb_slice_matches_naive(ptb_dir: Path, ptb_vocab) -> None:  # type: ignore[no-untyped-def]
    from model.corpus import load_split

    cfg = ModelConfig(len(ptb_vocab), 24, 24, 2, True, 0.5)
    m = BetterRnnlm(cfg, rng=np.random.default_rng(9))
    r = np.random.default_rng(10)
    for p in m.params.values():
        p += (r.standard_normal(p.shape) * 0.2).astype(np.float32)
    ids = load_split(ptb_dir, "test", ptb_vocab)[:300]
    got = corpus_logprobs(InferenceModel.from_params(cfg, m.params), ids, window=35)
    assert np.allclose(got, naive_logprobs(m.params, cfg, list(ids)), atol=1e-4)
    _ = LSTMState  # the state type travels with the package
