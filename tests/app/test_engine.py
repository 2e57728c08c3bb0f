"""The engine: the model's pure functions, run off the event loop, with no shared request state."""

from __future__ import annotations

import numpy as np
import pytest

from app.engine import Engine, OverloadedError, _groups
from model.checkpoint import LoadedWeights
from model.inference import InferenceModel, SamplingParams, generate, next_logprobs, score

pytestmark = pytest.mark.anyio

GREEDY = SamplingParams(do_sample=False)


@pytest.fixture
def engine(tiny_loaded: LoadedWeights) -> Engine:
    return Engine(tiny_loaded, queue_size=4)


def _seqs(engine: Engine, n: int, rng: np.random.Generator) -> list[list[int]]:
    eos, V = engine.vocab.eos_id, len(engine.vocab)
    lengths = rng.integers(1, 30, size=n)
    return [[eos, *rng.integers(0, V, size=int(k)).tolist(), eos] for k in lengths]


async def test_score_matches_the_pure_function(engine: Engine) -> None:
    seqs = _seqs(engine, 7, np.random.default_rng(0))
    got = await engine.score(seqs)
    want, _ = score(engine.model, [s[:-1] for s in seqs], [s[1:] for s in seqs])
    assert [len(g) for g in got] == [len(s) - 1 for s in seqs]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)
    assert engine.stats()["tokens_scored"] == sum(len(s) - 1 for s in seqs)


def test_groups_bound_padding_and_cover_every_text() -> None:
    lengths = [1, 5000, 3, 20000, 7, 7]
    groups = _groups(lengths, 10_000)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        longest = max(lengths[i] for i in g)
        assert len(g) == 1 or len(g) * longest <= 10_000
    assert _groups([4, 4, 4], 10_000) == [[0, 1, 2]]  # a typical request is one batch


async def test_score_in_several_groups_equals_one_batch(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seqs = _seqs(engine, 6, np.random.default_rng(1))
    one = await engine.score(seqs)
    monkeypatch.setattr("app.engine.PAD_BUDGET", 30)
    split = await engine.score(seqs)
    for a, b in zip(one, split, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


async def test_next_word_matches_the_pure_function(engine: Engine) -> None:
    ctx = [engine.vocab.eos_id, 5, 9, 11 % len(engine.vocab)]
    got = await engine.next_word(ctx)
    want, _ = next_logprobs(engine.model, [ctx])
    assert got.shape == (len(engine.vocab),)
    np.testing.assert_allclose(got, want[0], atol=1e-6)


async def _ids(
    engine: Engine,
    prompt: list[int],
    n: int,
    params: SamplingParams,
    seed: int | None,
    **kw: object,
) -> list[int]:
    return [s.id async for s in engine.generate(prompt, n, params, seed, **kw)]  # type: ignore[arg-type]


async def test_generate_matches_the_pure_generator(engine: Engine) -> None:
    eos, unk = engine.vocab.eos_id, engine.vocab.unk_id
    prompt = [eos, *(i % len(engine.vocab) for i in (10, 20, 30))]
    params = SamplingParams(do_sample=True, temperature=0.9, top_k=50, repetition_penalty=1.3)
    got = [s async for s in engine.generate(prompt, 25, params, 7, stop_at_eos=False)]
    want = list(
        generate(
            engine.model, prompt, 25, params, np.random.default_rng(7), eos, unk, stop_at_eos=False
        )
    )
    assert [s.id for s in got] == [s.id for s in want]
    np.testing.assert_allclose([s.logprob for s in got], [s.logprob for s in want], atol=1e-5)
    assert [s.finish_reason for s in got] == [None] * 24 + ["length"]


async def test_same_seed_same_tokens_and_no_state_leaks(engine: Engine) -> None:
    prompt = [engine.vocab.eos_id, 3]
    params = SamplingParams(do_sample=True)
    a = await _ids(engine, prompt, 30, params, 123, stop_at_eos=False)
    other = [engine.vocab.eos_id, *(i % len(engine.vocab) for i in (99, 98))]
    await _ids(engine, other, 30, params, 5, stop_at_eos=False)
    b = await _ids(engine, prompt, 30, params, 123, stop_at_eos=False)
    assert a == b
    c = await _ids(engine, prompt, 30, params, 124, stop_at_eos=False)
    assert c != a


async def test_stop_sequence_ends_generation(engine: Engine) -> None:
    prompt = [engine.vocab.eos_id, 7]
    path = await _ids(engine, prompt, 12, GREEDY, None, stop_at_eos=False)
    stop = path[4:6]
    steps = [s async for s in engine.generate(prompt, 12, GREEDY, None, False, [stop])]
    ids = [s.id for s in steps]
    first = next(i for i in range(1, len(path)) if path[i - 1 : i + 1] == stop)
    assert ids == path[: first + 1]
    assert steps[-1].finish_reason == "stop_sequence"


async def test_prefill_and_top_tokens(engine: Engine) -> None:
    prompt = [engine.vocab.eos_id, 4, 8, 15 % len(engine.vocab), 16 % len(engine.vocab)]
    steps = [
        s
        async for s in engine.generate(
            prompt, 3, GREEDY, None, top_n_tokens=4, prefill_logprobs=True
        )
    ]
    want, _ = score(engine.model, [prompt[:-1]], [prompt[1:]])
    assert steps[0].prefill_logprobs is not None
    np.testing.assert_allclose(steps[0].prefill_logprobs, want[0], atol=1e-5)
    assert all(s.prefill_logprobs is None for s in steps[1:])
    for s in steps:
        assert len(s.top_tokens) == 4
        lps = [lp for _, lp in s.top_tokens]
        assert lps == sorted(lps, reverse=True)
        assert s.top_tokens[0][0] == s.id  # greedy picks the best (no <unk> among them here)
        assert s.top_tokens[0][1] == pytest.approx(s.logprob)


async def test_closing_the_generator_stops_generation(engine: Engine) -> None:
    gen = engine.generate([engine.vocab.eos_id], 500, SamplingParams(), 1, stop_at_eos=False)
    taken = [await anext(gen) for _ in range(3)]
    assert engine.in_flight == 1
    await gen.aclose()
    assert len(taken) == 3
    assert engine.in_flight == 0
    assert engine.stats()["tokens_generated"] == 3


async def test_overloaded_when_the_queue_is_full(tiny_loaded: LoadedWeights) -> None:
    engine = Engine(tiny_loaded, queue_size=1)
    gen = engine.generate([engine.vocab.eos_id], 50, GREEDY, None)
    await anext(gen)
    with pytest.raises(OverloadedError):
        await engine.next_word([engine.vocab.eos_id])
    await gen.aclose()
    assert await engine.wait_idle(1.0)
    await engine.next_word([engine.vocab.eos_id])  # room again


async def test_warmup_and_stats(engine: Engine) -> None:
    await engine.warmup()
    stats = engine.stats()
    assert stats["in_flight"] == 0
    assert stats["queue_size"] == 4
    assert isinstance(engine.model, InferenceModel)
