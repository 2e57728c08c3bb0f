"""POST /generate, /generate_stream and / : text-generation-inference's generate API."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import APIRouter
from sse_starlette import EventSourceResponse

from app.config import Settings
from app.deps import EngineDep, MetricsDep, SettingsDep, check_chars, tokenize_all
from app.engine import Engine, EngineStep, GenerationRequest
from app.errors import ERROR_RESPONSES, ApiError, envelope, validation_error
from app.metrics import Metrics
from app.schemas import (
    GenerateDetails,
    GenerateParameters,
    GenerateRequest,
    GenerateResponse,
    PrefillToken,
    StreamDetails,
    StreamResponse,
    Token,
)
from model.inference import SamplingParams
from model.normalize import Tokenizer
from model.vocab import Vocab

logger = logging.getLogger(__name__)

router = APIRouter(tags=["generation"])


class EventStream(EventSourceResponse):
    """sse-starlette's response, with the class-level media type FastAPI documents."""

    media_type = "text/event-stream"


# One server-sent event, as OpenAPI 3.1 tools read a text/event-stream schema (FastAPI's own SSE
# shape): each event's `data` is a StreamResponse, or the error envelope when generation fails.
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "anyOf": [
                    {"$ref": "#/components/schemas/StreamResponse"},
                    {"$ref": "#/components/schemas/ErrorResponse"},
                ]
            },
        },
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
    },
}
_STREAM_DESCRIPTION = (
    "Server-sent events, each `data:` a StreamResponse: one per token (the last carries "
    "generated_text and details); an error mid-stream is an event {error, error_type}."
)

# No "model" on the 200s: FastAPI would merge its $ref into the event schema. StreamResponse
# reaches components/schemas as /generate_stream's response_model instead.
STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": _STREAM_DESCRIPTION,
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
    },
    **{
        code: {
            "description": doc["description"],
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
            },
        }
        for code, doc in ERROR_RESPONSES.items()
    },
}

# /generate and / answer JSON, or the event stream with "stream": true.
GENERATE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": 'The generation; with "stream": true the event stream of '
        "/generate_stream instead.",
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
    },
    **ERROR_RESPONSES,
}


@dataclass(frozen=True)
class Plan:
    """A validated generation: the engine's request, and what the answer needs besides."""

    request: GenerationRequest
    oov: list[str]
    details: bool
    prefix: str

    @property
    def prompt_ids(self) -> tuple[int, ...]:
        """The prompt as the engine reads it ([eos, tokens...])."""
        return self.request.prompt_ids


def _unsupported(name: str, what: str) -> ApiError:
    """422 for a TGI parameter this model cannot honour."""
    return validation_error(
        f"parameters.{name}: {what} is not supported by this model server", f"parameters.{name}"
    )


def _check_supported(p: GenerateParameters) -> None:
    """Accept TGI's parameters at their defaults; refuse what this model cannot do."""
    if p.adapter_id not in (None, ""):
        raise _unsupported("adapter_id", "a LoRA adapter")
    if p.best_of not in (None, 1):
        raise _unsupported("best_of", "best_of > 1")
    if p.frequency_penalty not in (None, 0.0):
        raise _unsupported("frequency_penalty", "a frequency penalty (use repetition_penalty)")
    if p.grammar is not None:
        raise _unsupported("grammar", "grammar-constrained decoding")
    if p.watermark:
        raise _unsupported("watermark", "watermarking")


# choose_next divides the float64 logits by the temperature and a seen token's logit by the
# penalty: beyond these bounds that overflows to +-inf (a subnormal temperature left nothing to
# sample: a 500), and the sampling asked for is already saturated at the bound.
MIN_TEMPERATURE = 1e-30
PENALTY_BOUNDS = (1e-30, 1e30)


def sampling_params(p: GenerateParameters) -> SamplingParams:
    """TGI's rule: sample when do_sample or any warper is set, otherwise greedy."""
    do_sample = (
        p.do_sample
        or (p.temperature is not None and p.temperature != 1.0)
        or p.top_k is not None
        or (p.top_p is not None and p.top_p < 1.0)
        or (p.typical_p is not None and p.typical_p < 1.0)
    )
    penalty = p.repetition_penalty
    if penalty is not None:
        penalty = min(max(penalty, PENALTY_BOUNDS[0]), PENALTY_BOUNDS[1])
    return SamplingParams(
        do_sample=do_sample,
        temperature=max(p.temperature, MIN_TEMPERATURE) if p.temperature is not None else 1.0,
        top_k=p.top_k,
        top_p=p.top_p,
        typical_p=p.typical_p,
        repetition_penalty=penalty,
        ban_unk=p.ban_unk,
    )


async def make_plan(
    req: GenerateRequest, settings: Settings, tokenizer: Tokenizer
) -> Plan:
    """Check every parameter and limit; normalise the prompt and the stop sequences."""
    p = req.parameters
    _check_supported(p)
    check_chars(req.inputs, "inputs", settings)
    max_new = p.max_new_tokens
    if max_new is None:
        max_new = min(settings.default_max_new_tokens, settings.max_new_tokens)
    if max_new > settings.max_new_tokens:
        raise validation_error(
            f"parameters.max_new_tokens is {max_new}, more than the limit of "
            f"{settings.max_new_tokens}",
            "parameters.max_new_tokens",
        )
    top_n = p.top_n_tokens or 0
    if top_n > settings.max_top_n_tokens:
        raise validation_error(
            f"parameters.top_n_tokens is {top_n}, more than the limit of "
            f"{settings.max_top_n_tokens}",
            "parameters.top_n_tokens",
        )
    stop = p.stop or []
    if len(stop) > settings.max_stop_sequences:
        raise validation_error(
            f"parameters.stop holds {len(stop)} sequences, more than the limit of "
            f"{settings.max_stop_sequences}",
            "parameters.stop",
        )
    for i, s in enumerate(stop):
        check_chars(s, f"parameters.stop[{i}]", settings)
    vocab = tokenizer.vocab
    prompt, *stop_toks = await tokenize_all([req.inputs, *stop], tokenizer)
    stops = [st.ids for st in stop_toks]  # GenerationRequest drops those that cannot match
    ids = prompt.ids
    if p.truncate is not None and len(ids) > p.truncate:
        ids = ids[-p.truncate :]
    prompt_ids = [vocab.eos_id, *ids]
    if len(prompt_ids) + max_new > settings.max_request_tokens:
        raise validation_error(
            f"the prompt's {len(prompt_ids)} tokens plus max_new_tokens {max_new} are more "
            f"than the limit of {settings.max_request_tokens} tokens per request",
            "inputs",
        )
    sampling = sampling_params(p)
    seed = p.seed
    if sampling.do_sample and seed is None:
        seed = secrets.randbits(63)
    prefix = ""
    if p.return_full_text:
        prefix = req.inputs
        if prefix and not prefix[-1].isspace():
            prefix += " "
    request = GenerationRequest(
        prompt_ids=tuple(prompt_ids),
        max_new_tokens=max_new,
        sampling=sampling,
        seed=seed,
        stop_at_eos=p.stop_at_eos,
        stop_sequences=tuple(tuple(x) for x in stops),
        top_n_tokens=top_n,
        prefill_logprobs=p.decoder_input_details,
    )
    return Plan(request=request, oov=prompt.oov_words, details=p.details, prefix=prefix)


class Renderer:
    """Turns generated ids into text pieces: words joined by spaces, <eos> as a newline."""

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self.text = ""
        self._line_start = True
        self._last_eos = False

    def add(self, token_id: int) -> str:
        """Append the next generated id to the output; the text it adds."""
        eos = token_id == self.vocab.eos_id
        if eos:
            piece = "\n"
        else:
            word = self.vocab.id_to_word[token_id]
            piece = word if self._line_start else " " + word
        self._line_start = eos
        self._last_eos = eos
        self.text += piece
        return piece

    def token(self, token_id: int, logprob: float) -> Token:
        """The Token for the next generated id, appended to the output."""
        eos = token_id == self.vocab.eos_id
        return Token(id=token_id, text=self.add(token_id), logprob=logprob, special=eos)

    def top(self, pairs: tuple[tuple[int, float], ...]) -> list[Token]:
        """The top alternatives as Tokens, their text as if each were chosen."""
        out = []
        for i, lp in pairs:
            eos = i == self.vocab.eos_id
            word = self.vocab.id_to_word[i]
            piece = "\n" if eos else (word if self._line_start else " " + word)
            out.append(Token(id=i, text=piece, logprob=lp, special=eos))
        return out

    def generated_text(self, prefix: str) -> str:
        """The output so far, a closing <eos> left out."""
        text = self.text[:-1] if self._last_eos else self.text
        return prefix + text


def _prefill(vocab: Vocab, plan: Plan, first: EngineStep | None) -> list[PrefillToken]:
    """The prompt tokens, with their log-probabilities when they were computed."""
    lps = first.prefill_logprobs if first is not None else None
    words = vocab.decode(plan.prompt_ids)
    return [
        PrefillToken(
            id=i,
            text=w,
            logprob=float(lps[n - 1]) if lps is not None and n > 0 else None,
        )
        for n, (i, w) in enumerate(zip(plan.prompt_ids, words, strict=True))
    ]


async def generate_once(
    engine: Engine, plan: Plan, settings: Settings, metrics: Metrics
) -> GenerateResponse:
    """Run a generation to its end (504 past request_timeout_s) and build the answer."""
    renderer = Renderer(engine.vocab)
    metrics.prompt_tokens.inc(len(plan.prompt_ids))
    metrics.oov_tokens.labels("/generate").inc(len(plan.oov))
    try:
        with anyio.fail_after(settings.request_timeout_s):
            steps: list[EngineStep] = await engine.generate_all(plan.request)
    except TimeoutError as e:
        raise ApiError(
            504,
            "timeout",
            f"generation took longer than request_timeout_s ({settings.request_timeout_s} s)",
        ) from e
    metrics.tokens_generated.inc(len(steps))
    if not plan.details:  # the text alone: no Token objects to build
        for s in steps:
            renderer.add(s.id)
        return GenerateResponse(generated_text=renderer.generated_text(plan.prefix), details=None)
    top_tokens: list[list[Token]] = []
    tokens: list[Token] = []
    for s in steps:
        # each step's alternatives are rendered as if they came in its place
        if plan.request.top_n_tokens:
            top_tokens.append(renderer.top(s.top_tokens))
        tokens.append(renderer.token(s.id, s.logprob))
    details = GenerateDetails(
        finish_reason=steps[-1].finish_reason,  # type: ignore[arg-type]
        generated_tokens=len(steps),
        seed=plan.request.seed,
        input_length=len(plan.prompt_ids),
        oov=plan.oov,
        prefill=_prefill(engine.vocab, plan, steps[0]),
        tokens=tokens,
        top_tokens=top_tokens if plan.request.top_n_tokens else None,
    )
    return GenerateResponse(generated_text=renderer.generated_text(plan.prefix), details=details)


async def generate_stream_response(
    engine: Engine, plan: Plan, metrics: Metrics
) -> EventSourceResponse:
    """Server-sent events, one per token; the engine's first step is awaited before answering,
    so a refusal (overload) is still an HTTP error, and a disconnect stops the generation."""
    gen: AsyncGenerator[EngineStep, None] = engine.generate(plan.request)
    try:
        first = await anext(gen)
    except BaseException:
        await gen.aclose()
        raise
    metrics.prompt_tokens.inc(len(plan.prompt_ids))
    metrics.oov_tokens.labels("/generate_stream").inc(len(plan.oov))

    # TGI's events have no prefill: it is sent only when decoder_input_details asks for it
    unasked = None if plan.request.prefill_logprobs else {"details": {"prefill"}}

    async def events() -> AsyncIterator[dict[str, str]]:
        renderer = Renderer(engine.vocab)
        async with aclosing(gen):
            s: EngineStep | None = first
            index = 0
            try:
                while s is not None:
                    index += 1
                    metrics.tokens_generated.inc()
                    top = renderer.top(s.top_tokens) if plan.request.top_n_tokens else None
                    token = renderer.token(s.id, s.logprob)
                    last = s.finish_reason is not None
                    event = StreamResponse(
                        index=index,
                        token=token,
                        top_tokens=top,
                        generated_text=renderer.generated_text(plan.prefix) if last else None,
                        details=StreamDetails(
                            finish_reason=s.finish_reason,  # type: ignore[arg-type]
                            generated_tokens=index,
                            seed=plan.request.seed,
                            input_length=len(plan.prompt_ids),
                            oov=plan.oov,
                            prefill=_prefill(engine.vocab, plan, first)
                            if plan.request.prefill_logprobs else None,
                        )
                        if last
                        else None,
                    )
                    yield {"data": event.model_dump_json(exclude=unasked)}
                    s = None if last else await anext(gen, None)
            except Exception:
                logger.exception("generation failed mid-stream")
                yield {"data": _json_error("internal server error", "internal")}

    return EventStream(events(), sep="\n")


def _json_error(message: str, error_type: str) -> str:
    """An error event's data: the envelope, as TGI streams errors."""
    return json.dumps(envelope(message, error_type))


async def _answer(
    req: GenerateRequest,
    stream: bool,
    engine: Engine,
    settings: Settings,
    metrics: Metrics,
) -> GenerateResponse | EventSourceResponse:
    """Plan, then stream or run to the end."""
    plan = await make_plan(req, settings, engine.tokenizer)
    if stream:
        return await generate_stream_response(engine, plan, metrics)
    return await generate_once(engine, plan, settings, metrics)


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses=GENERATE_DOC,
    summary="Generate text after a prompt (text-generation-inference's /generate)",
)
async def generate(
    req: GenerateRequest,
    engine: EngineDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> Any:
    """Generate; with "stream": true the answer is /generate_stream's event stream."""
    return await _answer(req, req.stream, engine, settings, metrics)


@router.post(
    "/generate_stream",
    response_model=StreamResponse,
    response_class=EventStream,
    responses=STREAM_DOC,
    summary="Generate text as server-sent events, one per token",
)
async def generate_stream(
    req: GenerateRequest,
    engine: EngineDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> Any:
    """Stream the generation; the last event carries generated_text and details."""
    return await _answer(req, True, engine, settings, metrics)


@router.post(
    "/",
    response_model=list[GenerateResponse],
    responses=GENERATE_DOC,
    summary="text-generation-inference's compatibility route: a list of one result, or a stream",
)
async def compat_generate(
    req: GenerateRequest,
    engine: EngineDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> Any:
    """As /generate, but the answer is a list of one (or events with "stream": true)."""
    result = await _answer(req, req.stream, engine, settings, metrics)
    return result if isinstance(result, EventSourceResponse) else [result]
