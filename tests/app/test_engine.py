"""The batching engine on its own: results equal the pure functions, the cache, admission."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from app.engine import (
    DECODE_PREFILL_TOKENS,
    INLINE_ROWS,
    STREAM_BUFFER,
    DrainingError,
    Engine,
    GenerationRequest,
    OverloadedError,
    PrefixCache,
    RequestTimeoutError,
)
from model.inference import (
    InferenceModel,
    LSTMState,
    SamplingParams,
    generate,
    next_logprobs,
    score,
)
from model.weights import LoadedWeights
from tests.model.test_inference import naive_logprobs

req = GenerationRequest.of  # a request from plain arguments

pytestmark = pytest.mark.anyio

GREEDY = SamplingParams(do_sample=False)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def engine(tiny_loaded: LoadedWeights) -> AsyncIterator[Engine]:
    e = Engine(tiny_loaded, queue_size=4, max_batch_wait_ms=0)
    yield e
    await e.aclose()


def _seqs(engine: Engine, n: int, rng: np.random.Generator, longest: int = 30) -> list[list[int]]:
    eos, V = engine.vocab.eos_id, len(engine.vocab)
    lengths = rng.integers(1, longest, size=n)
    return [[eos, *rng.integers(0, V, size=int(k)).tolist(), eos] for k in lengths]


def _sample(engine: Engine, name: str, **labels: str) -> float:
    """A sample of the engine's metrics (0 when absent)."""
    return engine.metrics.registry.get_sample_value(name, labels) or 0.0


def _fed(engine: Engine) -> float:
    """Token positions the engine ran through its scoring forward so far."""
    return _sample(engine, "rnnlm_engine_tokens_fed_total", kind="score")


async def test_score_matches_the_pure_function(engine: Engine) -> None:
    seqs = _seqs(engine, 7, np.random.default_rng(0))
    got = await engine.score(seqs)
    want, _ = score(engine.model, [s[:-1] for s in seqs], [s[1:] for s in seqs])
    assert [len(g) for g in got] == [len(s) - 1 for s in seqs]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)
    assert engine.stats()["tokens_scored"] == sum(len(s) - 1 for s in seqs)


async def test_the_batch_window_waits_for_as_many_requests_as_the_last_tick(
    tiny_loaded: LoadedWeights,
) -> None:
    """A lone client never waits out the window; clients that came together are waited for."""
    # A 10-minute window: were it waited out, the awaits below would hit their timeouts.
    engine = Engine(tiny_loaded, max_batch_wait_ms=600_000, state_cache_mb=0)
    rng = np.random.default_rng(1)
    try:
        async with asyncio.timeout(60):
            await engine.score(_seqs(engine, 1, rng))  # alone: no wait
            await engine.score(_seqs(engine, 1, rng))
            # three at once share one forward; the next window then waits for three
            await asyncio.gather(*(engine.score(_seqs(engine, 1, rng)) for _ in range(3)))
            assert engine.stats()["largest_batch_requests"]["score"] == 3
            batches = engine.stats()["batches"]["score"]
            first = [asyncio.create_task(engine.score(_seqs(engine, 1, rng))) for _ in range(2)]
            for _ in range(20):  # let the worker see the two and start its window
                await asyncio.sleep(0)
            assert not any(t.done() for t in first)
            await engine.score(_seqs(engine, 1, rng))
            await asyncio.gather(*first)
            assert engine.stats()["batches"]["score"] == batches + 1
    finally:
        await engine.aclose()


async def test_long_texts_are_fed_in_chunks(tiny_loaded: LoadedWeights) -> None:
    engine = Engine(tiny_loaded, max_batch_size=3, max_batch_tokens=8, state_cache_mb=0)
    try:
        seqs = _seqs(engine, 5, np.random.default_rng(1), longest=40)
        got = await engine.score(seqs)
        stats = engine.stats()
    finally:
        await engine.aclose()
    for g, s in zip(got, seqs, strict=True):
        want = naive_logprobs(tiny_loaded.params, tiny_loaded.config, s)
        np.testing.assert_allclose(g, want, atol=1e-4)
    assert stats["largest_batch"]["score"] <= 3
    # rows x chunk stay within 8 positions, so the texts took many forwards
    assert stats["batches"]["score"] >= sum(len(s) - 1 for s in seqs) // 8


async def test_next_word_matches_the_pure_function(engine: Engine) -> None:
    ctx = [engine.vocab.eos_id, 5, 9, 11 % len(engine.vocab)]
    got = await engine.next_word(ctx)
    want, _ = next_logprobs(engine.model, [ctx])
    assert got.shape == (len(engine.vocab),)
    np.testing.assert_allclose(got, want[0], atol=1e-5)
    one = await engine.next_word([engine.vocab.eos_id])  # a context of <eos> alone
    np.testing.assert_allclose(one, next_logprobs(engine.model, [[engine.vocab.eos_id]])[0][0],
                               atol=1e-5)


async def _ids(
    engine: Engine,
    prompt: list[int],
    n: int,
    params: SamplingParams,
    seed: int | None,
    **kw: Any,
) -> list[int]:
    return [s.id async for s in engine.generate(req(prompt, n, params, seed, **kw))]


async def test_generate_matches_the_pure_generator(engine: Engine) -> None:
    eos, unk = engine.vocab.eos_id, engine.vocab.unk_id
    prompt = [eos, *(i % len(engine.vocab) for i in (10, 20, 30))]
    params = SamplingParams(do_sample=True, temperature=0.9, top_k=50, repetition_penalty=1.3)
    got = [s async for s in engine.generate(req(prompt, 25, params, 7, stop_at_eos=False))]
    want = list(
        generate(
            engine.model, prompt, 25, params, np.random.default_rng(7), eos, unk, stop_at_eos=False
        )
    )
    assert [s.id for s in got] == [s.id for s in want]
    np.testing.assert_allclose([s.logprob for s in got], [s.logprob for s in want], atol=1e-5)
    assert [s.finish_reason for s in got] == [None] * 24 + ["length"]


async def test_generate_all_equals_the_streamed_steps(engine: Engine) -> None:
    """Collected steps (non-streamed answers) are the streamed ones, alone and batched."""
    eos, V = engine.vocab.eos_id, len(engine.vocab)  # V: 10,000, or 22 without the PTB data
    prompts = [[eos, 10, 20], [eos, 3], [eos, *(i % V for i in range(40, 52))]]
    params = [SamplingParams(do_sample=True, temperature=0.8, top_p=0.9), GREEDY,
              SamplingParams(do_sample=True, top_k=5)]
    want = [[s async for s in engine.generate(req(p, 9 + i, q, 11 + i, stop_at_eos=False,
                                              top_n_tokens=2, prefill_logprobs=True))]
            for i, (p, q) in enumerate(zip(prompts, params, strict=True))]
    got = await asyncio.gather(*(
        engine.generate_all(req(p, 9 + i, q, 11 + i, stop_at_eos=False, top_n_tokens=2,
                            prefill_logprobs=True))
        for i, (p, q) in enumerate(zip(prompts, params, strict=True))))
    for g, w in zip(got, want, strict=True):
        assert [s.id for s in g] == [s.id for s in w]
        np.testing.assert_allclose([s.logprob for s in g], [s.logprob for s in w], atol=1e-4)
        assert [s.finish_reason for s in g] == [s.finish_reason for s in w]
        assert [[t for t, _ in s.top_tokens] for s in g] == [[t for t, _ in s.top_tokens]
                                                            for s in w]
        assert g[0].prefill_logprobs is not None and w[0].prefill_logprobs is not None
        np.testing.assert_allclose(g[0].prefill_logprobs, w[0].prefill_logprobs, atol=1e-4)
    assert engine.in_flight == 0
    assert await engine.generate_all(req([eos], 0, GREEDY, None)) == []
    with pytest.raises(ValueError, match="at least one token"):
        await engine.generate_all(req([], 3, GREEDY, None))


async def test_a_cancelled_generate_all_leaves_the_batch(engine: Engine) -> None:
    task = asyncio.create_task(
        engine.generate_all(req([engine.vocab.eos_id], 100_000, GREEDY, None, stop_at_eos=False)))
    while engine.stats()["tokens_generated"] < 3:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.in_flight == 0
    await engine.score([[engine.vocab.eos_id, 3]])  # the next tick drops it from the batch
    assert engine.stats()["running_streams"] == 0


async def test_short_prompts_ride_in_the_decode_batch(tiny_loaded: LoadedWeights) -> None:
    """Prompts that join running generations are read a token a step in the decode batch
    (DECODE_PREFILL_TOKENS at most; a longer one gets a forward of its own): the same tokens, the
    same prefill log-probs, and the prompt cached as a forward would have cached it."""
    engine = Engine(tiny_loaded)
    eos, unk, V = engine.vocab.eos_id, engine.vocab.unk_id, len(engine.vocab)
    params = SamplingParams(do_sample=True, temperature=0.9)
    rng = np.random.default_rng(5)
    prompts = [[eos, *rng.integers(2, V, n).tolist()] for n in (1, 4, 9, DECODE_PREFILL_TOKENS + 6)]
    try:
        first = engine.generate(req([eos, 3], 60, params, 0, False))
        head = [await anext(first)]  # it runs: the others join a decode batch

        async def one(prompt: list[int], seed: int) -> list[Any]:
            gen = engine.generate(req(prompt, 8, params, seed, False, prefill_logprobs=True))
            return [s async for s in gen]

        got = await asyncio.gather(*(one(p, k) for k, p in enumerate(prompts)))
        head += [s async for s in first]
        stats = engine.stats()
        fed = _fed(engine)
        (lp,) = await engine.score([prompts[2]])  # prefilled in the decode batch: a cache hit
        assert _fed(engine) == fed
    finally:
        await engine.aclose()
    # all but the long prompt's tokens were read in the decode batch
    assert stats["prompt_tokens_in_decode"] == sum(len(p) - 1 for p in prompts[:3])
    want0 = generate(engine.model, [eos, 3], 60, params, np.random.default_rng(0), eos, unk,
                     False)
    assert [s.id for s in head] == [s.id for s in want0]
    for k, (prompt, steps) in enumerate(zip(prompts, got, strict=True)):
        want = list(generate(engine.model, prompt, 8, params, np.random.default_rng(k), eos,
                             unk, False))
        assert [s.id for s in steps] == [s.id for s in want]
        np.testing.assert_allclose([s.logprob for s in steps], [s.logprob for s in want],
                                   atol=1e-5)
        (ref,) = score(engine.model, [prompt[:-1]], [prompt[1:]])[0]
        assert steps[0].prefill_logprobs is not None
        np.testing.assert_allclose(steps[0].prefill_logprobs, ref, atol=1e-5)
        if k == 2:
            np.testing.assert_allclose(lp, ref, atol=1e-5)


async def test_small_decode_ticks_run_on_the_event_loop(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    where: list[tuple[str, int, int]] = []
    compute = engine._compute

    def recording(tick: Any) -> Any:
        where.append((threading.current_thread().name, len(tick.feed), len(tick.decode)))
        return compute(tick)

    monkeypatch.setattr(engine, "_compute", recording)
    eos = engine.vocab.eos_id
    greedy = SamplingParams(do_sample=False)
    await engine.generate_all(req([eos, 5, 6], 4, greedy, None, stop_at_eos=False))  # alone
    await asyncio.gather(*(engine.generate_all(req([eos, 5 + i, 6], 4, greedy, None, False))
                           for i in range(4)))  # a batch of 4
    await engine.score([[eos, 5, 6, 7, eos]])
    loop_thread = threading.current_thread().name
    for name, feed, decode in where:
        small = not feed and decode <= INLINE_ROWS
        assert (name == loop_thread) == small, (name, feed, decode)
    assert any(decode > INLINE_ROWS for _, _, decode in where)  # both paths ran
    assert any(name == loop_thread for name, _, _ in where)


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
    steps = [s async for s in engine.generate(req(prompt, 12, GREEDY, None, False, [stop]))]
    ids = [s.id for s in steps]
    first = next(i for i in range(1, len(path)) if path[i - 1 : i + 1] == stop)
    assert ids == path[: first + 1]
    assert steps[-1].finish_reason == "stop_sequence"


async def test_prefill_and_top_tokens(engine: Engine) -> None:
    prompt = [engine.vocab.eos_id, 4, 8, 15 % len(engine.vocab), 16 % len(engine.vocab)]
    steps = [
        s
        async for s in engine.generate(req(
            prompt, 3, GREEDY, None, top_n_tokens=4, prefill_logprobs=True
        ))
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
    gen = engine.generate(req([engine.vocab.eos_id], 500, SamplingParams(), 1, stop_at_eos=False))
    taken = [await anext(gen) for _ in range(3)]
    assert engine.in_flight == 1
    await gen.aclose()
    assert len(taken) == 3
    assert engine.in_flight == 0
    # an unread stream holds at most STREAM_BUFFER tokens ahead of its consumer
    assert engine.stats()["tokens_generated"] <= 3 + STREAM_BUFFER
    await engine.score([[engine.vocab.eos_id, 3]])  # the next tick drops it from the batch
    assert engine.stats()["running_streams"] == 0


async def test_overloaded_when_the_queue_is_full(tiny_loaded: LoadedWeights) -> None:
    engine = Engine(tiny_loaded, queue_size=1)
    try:
        gen = engine.generate(req([engine.vocab.eos_id], 50, GREEDY, None))
        await anext(gen)
        with pytest.raises(OverloadedError):
            await engine.next_word([engine.vocab.eos_id])
        await gen.aclose()
        assert await engine.wait_idle(1.0)
        await engine.next_word([engine.vocab.eos_id])  # room again
        assert _sample(engine, "rnnlm_engine_rejected_total", reason="overloaded") == 1
    finally:
        await engine.aclose()


async def test_draining_refuses_new_work_and_finishes_what_is_in(engine: Engine) -> None:
    gen = engine.generate(req([engine.vocab.eos_id], 20, GREEDY, None, stop_at_eos=False))
    first = await anext(gen)
    engine.drain()
    with pytest.raises(DrainingError):
        await engine.score([[engine.vocab.eos_id, 3]])
    with pytest.raises(DrainingError):
        await anext(engine.generate(req([engine.vocab.eos_id], 5, GREEDY, None)))
    rest = [s async for s in gen]
    assert len([first, *rest]) == 20 and rest[-1].finish_reason == "length"
    assert await engine.wait_idle(1.0)


async def test_a_request_past_its_time_limit_is_refused(tiny_loaded: LoadedWeights) -> None:
    engine = Engine(tiny_loaded, request_timeout_s=1e-9)
    try:
        with pytest.raises(RequestTimeoutError, match="request_timeout_s"):
            await engine.score([[engine.vocab.eos_id, 3, 4]])
        with pytest.raises(RequestTimeoutError):
            await engine.next_word([engine.vocab.eos_id, 3])
        assert engine.in_flight == 0
        engine.request_timeout_s = None
        assert len((await engine.score([[engine.vocab.eos_id, 3, 4]]))[0]) == 2  # still works
    finally:
        await engine.aclose()


async def test_warmup_and_stats(engine: Engine) -> None:
    assert engine.stats()["warmup"] is None
    await engine.warmup()
    stats = engine.stats()
    # it ran a forward and a step at batch sizes 1 and 2 in the compute thread, where the
    # requests' products run (not on the event loop's thread)
    assert stats["warmup"]["batch_sizes"] == [1, 2]
    assert stats["warmup"]["thread"].startswith("rnnlm-engine")
    assert stats["warmup"]["seconds"] > 0
    assert stats["in_flight"] == 0
    assert stats["queue_size"] == 4
    assert stats["kind"] == "batching"
    assert isinstance(engine.model, InferenceModel)


# --- the prefix-state cache -------------------------------------------------------------------


async def test_a_cache_hit_gives_the_cold_numbers_and_feeds_only_new_tokens(
    tiny_loaded: LoadedWeights,
) -> None:
    cold = Engine(tiny_loaded, state_cache_mb=0)
    warm = Engine(tiny_loaded)
    try:
        eos = warm.vocab.eos_id
        rng = np.random.default_rng(3)
        base = [eos, *rng.integers(2, len(warm.vocab), 12).tolist()]
        longer = [*base, *rng.integers(2, len(warm.vocab), 5).tolist()]
        (a,) = await warm.score([base])
        fed = _fed(warm)
        (b,) = await warm.score([longer])  # extends the cached text: only 5 new tokens
        assert _fed(warm) - fed == len(longer) - len(base)
        (again,) = await warm.score([longer])  # all cached: nothing fed
        assert _fed(warm) - fed == len(longer) - len(base)
        stats = warm.stats()["cache"]
        assert stats["hits"] == 2 and stats["misses"] == 1
        assert stats["tokens_saved"] == (len(base) - 1) + (len(longer) - 1)
        (cold_b,) = await cold.score([longer])
        assert cold.stats()["cache"]["hits"] == 0 and cold.stats()["cache"]["entries"] == 0
        np.testing.assert_allclose(b, cold_b, atol=1e-4)
        np.testing.assert_allclose(again, cold_b, atol=1e-4)
        np.testing.assert_allclose(b[: len(a)], a, atol=1e-6)  # the cached part is reused
        want = naive_logprobs(tiny_loaded.params, tiny_loaded.config, longer)
        np.testing.assert_allclose(b, want, atol=1e-4)
        # a next-word context and a generation prompt extending the cached text hit too
        ctx = [*longer, 5, 6]
        np.testing.assert_allclose(
            await warm.next_word(ctx), await cold.next_word(ctx), atol=1e-4
        )
        assert warm.stats()["cache"]["hits"] == 3
    finally:
        await warm.aclose()
        await cold.aclose()


async def test_a_generation_is_cached_for_a_follow_up(tiny_loaded: LoadedWeights) -> None:
    cold = Engine(tiny_loaded, state_cache_mb=0)
    warm = Engine(tiny_loaded)
    try:
        eos = warm.vocab.eos_id
        prompt = [eos, 4, 5, 6]
        params = SamplingParams(do_sample=True, top_p=0.9)
        one = [s async for s in warm.generate(req(prompt, 10, params, 11, stop_at_eos=False))]
        two = [s async for s in warm.generate(req(prompt, 10, params, 11, stop_at_eos=False))]
        ref = [s async for s in cold.generate(req(prompt, 10, params, 11, stop_at_eos=False))]
        assert [s.id for s in one] == [s.id for s in two] == [s.id for s in ref]
        np.testing.assert_allclose([s.logprob for s in two], [s.logprob for s in ref], atol=1e-4)
        assert warm.stats()["cache"]["hits"] == 1  # the second prompt was read from the cache
        # a follow-up that extends prompt + generated text starts from the generation's end
        follow = [*prompt, *(s.id for s in one), 7]
        fed = _fed(warm)
        (lp,) = await warm.score([follow])
        assert _fed(warm) - fed == 1
        np.testing.assert_allclose(lp, (await cold.score([follow]))[0], atol=1e-4)
        np.testing.assert_allclose(
            lp[len(prompt) - 1 : -1], [s.logprob for s in one], atol=1e-4
        )  # the generated tokens' log-probs are what generation reported
    finally:
        await warm.aclose()
        await cold.aclose()


async def test_cache_entries_are_read_only(engine: Engine) -> None:
    await engine.score(_seqs(engine, 3, np.random.default_rng(4)))
    entries = engine.cache.entries()
    assert len(entries) == 3
    for e in entries:
        for a in (e.state.h, e.state.c, e.logprobs):
            assert not a.flags.writeable
            with pytest.raises(ValueError, match="read-only"):
                a[...] = 0


def _state(n: int = 1, value: float = 0.0) -> LSTMState:
    h = np.full((2, n, 4), value, np.float32)
    return LSTMState(h, h.copy())


def test_prefix_cache_is_an_lru_bounded_in_bytes() -> None:
    def ids(*xs: int) -> np.ndarray:
        return np.array(xs, np.int32)

    probe = PrefixCache(1 << 20)
    probe.insert(ids(0, 1, 2), _state(), np.zeros(2, np.float32))
    per_entry = probe.nbytes
    cache = PrefixCache(3 * per_entry)
    for k in range(5):
        cache.insert(ids(0, 1, 2 + k), _state(value=k), np.full(2, k, np.float32))
    assert len(cache) == 3 and cache.nbytes <= cache.capacity_bytes
    assert cache.stats()["evictions"] == 2
    assert cache.lookup(ids(0, 1, 2, 9), 4) is None  # the oldest two were evicted
    hit = cache.lookup(ids(0, 1, 4, 9, 9), 5)
    assert hit is not None and hit.length == 3 and float(hit.logprobs[0]) == 2.0
    assert cache.lookup(ids(0, 1, 4), 2) is None  # the key is longer than allowed
    # a hit is the most recent: the next insert evicts (0, 1, 5), not (0, 1, 4)
    cache.insert(ids(0, 1, 7), _state(), np.zeros(2, np.float32))
    assert cache.lookup(ids(0, 1, 4), 3) is not None
    assert cache.lookup(ids(0, 1, 5), 3) is None
    # the longest cached prefix wins
    cache.insert(ids(0, 1, 4, 8, 8), _state(), np.zeros(4, np.float32))
    hit = cache.lookup(ids(0, 1, 4, 8, 8, 3), 6)
    assert hit is not None and hit.length == 5
    off = PrefixCache(0)
    off.insert(ids(0, 1, 2), _state(), np.zeros(2, np.float32))
    assert len(off) == 0 and off.lookup(ids(0, 1, 2), 3) is None and off.misses == 1
