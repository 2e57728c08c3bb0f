"""A /v1/completions request checked against the model and Settings: its Plan (prompts,
choices as GenerationRequests, stop sequences), the 400s and 429s it can get."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from app.config import Settings
from app.deps import check_chars, check_model, tokenize_all
from app.engine import Engine, GenerationRequest
from app.errors import ApiError, validation_error
from app.openai_schemas import MAX_PROMPTS, MAX_STOP, CompletionRequest
from app.routes.generate import MIN_TEMPERATURE, Renderer
from model.inference import SamplingParams
from model.vocab import Vocab


@dataclass
class Prompt:
    """One prompt as the model reads it, and what its echo shows."""

    ids: list[int]  # [eos, tokens...] for a text; as given for token ids
    text: str  # the echoed text
    offsets: list[int]  # where each token starts in text


def _offsets(text: str, words: Sequence[str]) -> list[int]:
    """Where each normalised word starts in the raw text (found case-insensitively from the
    previous one; where it is not found, e.g. a number read as N, the previous end)."""
    low = text.lower()
    out, pos = [], 0
    for w in words:
        at = low.find(w.lower(), pos)
        if at < 0:
            out.append(pos)
        else:
            out.append(at)
            pos = at + len(w)
    return out


def _render(vocab: Vocab, ids: Sequence[int]) -> tuple[str, list[int]]:
    """Token ids as text (words joined by spaces, <eos> a newline) and each token's offset."""
    r = Renderer(vocab)
    offsets = []
    for i in ids:
        before = len(r.text)
        offsets.append(before + (1 if r.add(i).startswith(" ") else 0))
    return r.text, offsets


async def _prompts(req: CompletionRequest, engine: Engine, settings: Settings) -> list[Prompt]:
    """The request's prompts, checked and normalised."""
    p = req.prompt
    if isinstance(p, str):
        items: list[str | list[int]] = [p]
    elif p and all(isinstance(x, int) for x in p):
        items = [p]  # type: ignore[list-item]
    else:
        items = list(p)  # type: ignore[arg-type]
    if not items:
        raise validation_error("prompt must not be an empty list", "prompt")
    if len(items) > MAX_PROMPTS:
        raise validation_error(
            f"prompt holds {len(items)} prompts, more than the limit of {MAX_PROMPTS}", "prompt")
    vocab = engine.vocab
    V = len(vocab.id_to_word)
    texts = [x for x in items if isinstance(x, str)]
    for i, x in enumerate(items):
        if isinstance(x, str):
            check_chars(x, "prompt" if isinstance(p, str) else f"prompt[{i}]", settings)
    toks = iter(await tokenize_all(texts, engine.tokenizer))
    out = []
    for i, x in enumerate(items):
        if isinstance(x, str):
            tok = next(toks)
            out.append(Prompt([vocab.eos_id, *tok.ids], x, [0, *_offsets(x, tok.words)]))
            continue
        bad = [t for t in x if t >= V]
        if bad:
            raise validation_error(
                f"prompt token id {bad[0]} is outside the vocabulary (0 to {V - 1})",
                "prompt" if len(items) == 1 and not isinstance(p[0], list) else f"prompt[{i}]")
        text, offsets = _render(vocab, x)
        out.append(Prompt(list(x), text, offsets))
    return out


def _check_supported(req: CompletionRequest) -> None:
    """Fields at a value that changes nothing are accepted; others are a 400 naming them."""
    if req.best_of not in (None, 1):
        raise validation_error("best_of: only 1 is supported", "best_of")
    if req.presence_penalty not in (None, 0.0):
        raise validation_error("presence_penalty: only 0 is supported", "presence_penalty")
    if req.frequency_penalty not in (None, 0.0):
        raise validation_error("frequency_penalty: only 0 is supported", "frequency_penalty")
    if req.suffix is not None:
        raise validation_error("suffix: only null is supported (no insertion)", "suffix")


def _logit_bias(req: CompletionRequest, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """logit_bias as (id, bias) pairs; an id outside the vocabulary is a 400."""
    pairs = tuple((int(k), float(v)) for k, v in (req.logit_bias or {}).items())
    for (i, _), key in zip(pairs, req.logit_bias or {}, strict=True):
        if i >= vocab_size:
            raise validation_error(f"logit_bias: token id {key} is outside the vocabulary "
                                   f"(0 to {vocab_size - 1})", "logit_bias")
    return pairs


def _sampling(req: CompletionRequest, vocab_size: int) -> SamplingParams:
    """temperature 0: greedy; otherwise sampling with the given temperature and top_p."""
    t = 1.0 if req.temperature is None else req.temperature
    top_k = req.top_k if req.top_k is not None and req.top_k > 0 else None
    top_p = req.top_p if req.top_p is not None and req.top_p < 1.0 else None
    return SamplingParams(do_sample=t > 0, temperature=max(t, MIN_TEMPERATURE),
                          top_k=top_k, top_p=top_p, logit_bias=_logit_bias(req, vocab_size))


@dataclass
class Plan:
    """A validated completion request."""

    prompts: list[Prompt]
    n: int
    max_tokens: int
    logprobs: int | None
    echo: bool
    requests: list[GenerationRequest]  # one per choice, prompt-major; empty with max_tokens 0
    stop_texts: dict[tuple[int, ...], str]  # each stop sequence's text, for stop_reason


async def make_plan(req: CompletionRequest, engine: Engine, settings: Settings) -> Plan:
    """Check the request against the model and Settings."""
    check_model(req.model, engine)
    _check_supported(req)
    max_tokens = 16 if req.max_tokens is None else req.max_tokens
    if max_tokens > settings.max_new_tokens:
        raise validation_error(f"max_tokens is {max_tokens}, more than the limit of "
                               f"{settings.max_new_tokens}", "max_tokens")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > min(MAX_STOP, settings.max_stop_sequences):
        raise validation_error(f"stop holds {len(stop)} sequences, more than the limit of "
                               f"{min(MAX_STOP, settings.max_stop_sequences)}", "stop")
    for i, s in enumerate(stop):
        check_chars(s, f"stop[{i}]", settings)
    prompts = await _prompts(req, engine, settings)
    n = req.n or 1
    total = sum(len(p.ids) for p in prompts) + n * len(prompts) * max_tokens
    if total > settings.max_request_tokens:
        # As OpenAI answers a request larger than its token budget: 429, not a 400. The budget
        # is a product of fields (prompts x n x max_tokens) that no schema can state.
        raise ApiError(
            429, "rate_limit_exceeded",
            f"request too large: the prompts' tokens plus n x max_tokens for each ({total}) are "
            f"more than this server's {settings.max_request_tokens} tokens per request "
            "(max_model_len); send fewer prompts, a smaller n or max_tokens", "prompt")
    stop_toks = await tokenize_all(stop, engine.tokenizer)
    stop_ids = [st.ids for st in stop_toks]  # GenerationRequest drops those that cannot match
    stop_texts: dict[tuple[int, ...], str] = {}
    for text, ids in zip(stop, stop_ids, strict=True):
        stop_texts.setdefault(tuple(ids), text)
    sampling = _sampling(req, len(engine.vocab.id_to_word))
    seed = req.seed
    if sampling.do_sample and seed is None:
        seed = secrets.randbits(62)
    requests = []
    if max_tokens > 0:
        for p in prompts:
            for j in range(n):
                requests.append(GenerationRequest(
                    prompt_ids=tuple(p.ids),
                    max_new_tokens=max_tokens,
                    sampling=sampling,
                    # the choices of one seed differ: choice j samples with seed + j
                    seed=None if seed is None else (seed + j) % 2**63,
                    stop_at_eos=True,
                    stop_sequences=tuple(tuple(x) for x in stop_ids),
                    top_n_tokens=req.logprobs or 0,
                ))
    return Plan(prompts, n, max_tokens, req.logprobs, bool(req.echo), requests, stop_texts)
