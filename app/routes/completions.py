"""POST /v1/completions and GET /v1/models: OpenAI's completions API as vLLM serves it."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from sse_starlette import EventSourceResponse

from app.config import Settings
from app.deps import (
    EngineDep,
    MetricsDep,
    SettingsDep,
    served_model,
)
from app.engine import Engine, EngineStep, GenerationRequest
from app.errors import ApiError
from app.metrics import Metrics
from app.openai_schemas import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    OpenAIError,
    Usage,
)
from app.routes.completion_plan import Plan, Prompt, make_plan
from app.routes.generate import EventStream, Renderer
from model.sampling import matched_stop, stop_prefix_length
from model.vocab import Vocab

logger = logging.getLogger(__name__)

router = APIRouter(tags=["openai"])

OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIError, "description": what}
    for code, what in (
        (400, "Invalid request (the message and param name the field)."),
        (404, "No such model."),
        (413, "Body larger than max_body_bytes."),
        (429, "Too many requests in progress."),
        (503, "The model is still loading."),
        (504, "The request took longer than request_timeout_s."),
    )
}


def _top_map(vocab: Vocab, pairs: Sequence[tuple[int, float]], chosen: int, lp: float
             ) -> dict[str, float]:
    """vLLM's top_logprobs entry: the alternatives and the chosen token."""
    d = {vocab.id_to_word[i]: float(x) for i, x in pairs}
    d.setdefault(vocab.id_to_word[chosen], float(lp))
    return d


@dataclass
class Echo:
    """The echoed prompt's logprob entries."""

    tokens: list[str]
    logprobs: list[float | None]
    top: list[dict[str, float] | None]


async def _echoes(plan: Plan, engine: Engine) -> list[Echo] | None:
    """The prompts' entries, scored as one batch (null first token)."""
    if not plan.echo or plan.logprobs is None:
        return None
    vocab = engine.vocab
    seqs = [p.ids for p in plan.prompts]
    out = []
    if plan.logprobs:
        details = await engine.score_details(seqs, plan.logprobs)
        for seq, d in zip(seqs, details, strict=True):
            top: list[dict[str, float] | None] = [None]
            for t in range(len(seq) - 1):
                pairs = list(zip(d.top_ids[t].tolist(), d.top_logprobs[t].tolist(), strict=True))
                top.append(_top_map(vocab, pairs, seq[t + 1], float(d.logprobs[t])))
            out.append(Echo(vocab.decode(seq), [None, *map(float, d.logprobs)], top))
    else:
        for seq, lp in zip(seqs, await engine.score(seqs), strict=True):
            out.append(Echo(vocab.decode(seq), [None, *map(float, lp)], [None] * len(seq)))
    return out


@dataclass
class ChoiceBuilder:
    """One choice's text and logprobs, filled token by token."""

    index: int
    prompt: Prompt
    echo: Echo | None
    plan: Plan
    vocab: Vocab

    def __post_init__(self) -> None:
        self.renderer = Renderer(self.vocab)
        self.ids: list[int] = []  # the generated ids that add text
        self.tokens: list[str] = []
        self.lps: list[float | None] = []
        self.top: list[dict[str, float] | None] = []
        self.offsets: list[int] = []
        self.prefix = self.prompt.text if self.plan.echo else ""
        # The output continues the prompt's words: a space between (none after a line end
        # or a prompt of <eos> alone), so that prompt + text reads right.
        if self.plan.echo:
            self.sep = " " if self.prefix and not self.prefix[-1].isspace() else ""
        else:
            last = self.prompt.ids[-1]
            self.sep = "" if last == self.vocab.eos_id else " "
        if self.echo is not None:
            self.tokens += self.echo.tokens
            self.lps += self.echo.logprobs
            self.top += self.echo.top
            self.offsets += self.prompt.offsets
        self.finish: str | None = None
        self.stop_reason: str | None = None

    @property
    def base(self) -> str:
        """The echoed prompt and the separator before the output."""
        return self.prefix + (self.sep if self.renderer.text else "")

    def add(self, s: EngineStep) -> str:
        """Append a generated step; the text it adds (a generated <eos> adds none)."""
        eos = s.id == self.vocab.eos_id
        before = len(self.renderer.text)
        piece = "" if eos else self.renderer.add(s.id)
        if not eos:
            self.ids.append(s.id)
        if self.plan.logprobs is not None:
            self.tokens.append(self.vocab.id_to_word[s.id])
            self.lps.append(float(s.logprob))
            self.top.append(_top_map(self.vocab, s.top_tokens, s.id, s.logprob)
                            if self.plan.logprobs else None)
            start = len(self.prefix) + len(self.sep) + before
            self.offsets.append(start + (1 if piece.startswith(" ") else 0))
        if s.finish_reason is not None:
            self.finish = "length" if s.finish_reason == "length" else "stop"
        return piece

    def drop_stop(self, n_tokens: int, stop_text: str) -> None:
        """Take the tokens of the stop sequence that ended the choice back out."""
        self.renderer = Renderer(self.vocab)
        for i in self.ids[: len(self.ids) - n_tokens]:
            self.renderer.add(i)
        if self.plan.logprobs is not None:
            del self.tokens[-n_tokens:], self.lps[-n_tokens:], self.top[-n_tokens:]
            del self.offsets[-n_tokens:]
        self.stop_reason = stop_text

    def choice(self) -> CompletionChoice:
        """The finished choice."""
        text = self.base + self.renderer.text
        logprobs = None
        if self.plan.logprobs is not None:
            logprobs = CompletionLogprobs(tokens=self.tokens, token_logprobs=self.lps,
                                          top_logprobs=self.top, text_offset=self.offsets)
        return CompletionChoice(index=self.index, text=text, logprobs=logprobs,
                                finish_reason=self.finish or "length",  # type: ignore[arg-type]
                                stop_reason=self.stop_reason)


def _finish(b: ChoiceBuilder, steps: list[EngineStep], req: GenerationRequest,
            stop_texts: dict[tuple[int, ...], str]) -> None:
    """After the last step: a stop sequence's tokens leave the output, as OpenAI's do."""
    if steps and steps[-1].finish_reason == "stop_sequence":
        k = matched_stop([s.id for s in steps], req.stop_sequences)
        if k is not None:
            seq = req.stop_sequences[k]
            b.drop_stop(len(seq), stop_texts[seq])


async def complete(engine: Engine, plan: Plan, settings: Settings, metrics: Metrics
                   ) -> CompletionResponse:
    """Every choice to its end, generations running together in the engine's batches."""
    echoes = await _echoes(plan, engine)
    builders = _builders(plan, echoes, engine.vocab)
    if plan.requests:
        try:
            async with asyncio.timeout(settings.request_timeout_s):
                results = await _all_choices(engine, plan.requests)
        except TimeoutError as e:
            raise ApiError(504, "timeout", "the completion took longer than request_timeout_s "
                           f"({settings.request_timeout_s} s)") from e
        for b, r, steps in zip(builders, plan.requests, results, strict=True):
            for s in steps:
                b.add(s)
            _finish(b, steps, r, plan.stop_texts)
    completion = sum(len(r) for r in results) if plan.requests else 0
    metrics.tokens_generated.inc(completion)
    return CompletionResponse(
        id=f"cmpl-{secrets.token_hex(12)}", created=int(time.time()), model=served_model(engine),
        choices=[b.choice() for b in builders], usage=_usage(plan, completion))


async def _all_choices(engine: Engine, requests: list[GenerationRequest]
                       ) -> list[list[EngineStep]]:
    """Every choice's steps; when one fails (the engine is full), the others stop too."""
    tasks = [asyncio.ensure_future(engine.generate_all(r)) for r in requests]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        raise


def _builders(plan: Plan, echoes: list[Echo] | None, vocab: Vocab) -> list[ChoiceBuilder]:
    return [
        ChoiceBuilder(i * plan.n + j, p, echoes[i] if echoes else None, plan, vocab)
        for i, p in enumerate(plan.prompts) for j in range(plan.n)
    ]


def _usage(plan: Plan, completion: int) -> Usage:
    prompt = sum(len(p.ids) for p in plan.prompts)
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=prompt + completion)


async def stream(engine: Engine, plan: Plan, req: CompletionRequest, metrics: Metrics
                 ) -> EventSourceResponse:
    """Server-sent events: a chunk a token of each choice, then data: [DONE]."""
    echoes = await _echoes(plan, engine)
    builders = _builders(plan, echoes, engine.vocab)
    cid, created, name = f"cmpl-{secrets.token_hex(12)}", int(time.time()), served_model(engine)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> dict[str, str]:
        body = CompletionResponse(id=cid, created=created, model=name, choices=choices,
                                  usage=usage)
        return {"data": body.model_dump_json()}

    def token_choice(b: ChoiceBuilder, s: EngineStep) -> CompletionChoice:
        """One step of a choice as its chunk: the text it adds, its logprob entry."""
        n0 = len(b.tokens)
        first = not b.renderer.text
        piece = b.add(s)
        if first and piece:
            piece = b.sep + piece
        lp = None
        if plan.logprobs is not None:
            lp = CompletionLogprobs(tokens=b.tokens[n0:], token_logprobs=b.lps[n0:],
                                    top_logprobs=b.top[n0:], text_offset=b.offsets[n0:])
        finish = b.finish if s.finish_reason is not None else None
        return CompletionChoice(index=b.index, text=piece, logprobs=lp,
                                finish_reason=finish)  # type: ignore[arg-type]

    queue: asyncio.Queue[tuple[int, EngineStep | BaseException | None]] = asyncio.Queue()

    async def run(k: int, r: GenerationRequest) -> None:
        try:
            async for s in engine.generate(r):
                await queue.put((k, s))
        except BaseException as e:
            await queue.put((k, e))
            return
        await queue.put((k, None))

    async def events() -> AsyncIterator[dict[str, str]]:
        tasks = [asyncio.create_task(run(k, r)) for k, r in enumerate(plan.requests)]
        completion = 0
        try:
            if plan.echo:
                for b in builders:
                    lp = None
                    if plan.logprobs is not None:
                        lp = CompletionLogprobs(tokens=list(b.tokens), token_logprobs=list(b.lps),
                                                top_logprobs=list(b.top),
                                                text_offset=list(b.offsets))
                    yield chunk([CompletionChoice(index=b.index, text=b.prefix, logprobs=lp)])
            if not plan.requests:
                for b in builders:
                    yield chunk([CompletionChoice(index=b.index, text="", finish_reason="length")])
            # Tokens that may begin a stop sequence wait until the next ones decide: a
            # matched stop sequence is left out of the stream as it is of the whole answer.
            held: list[list[EngineStep]] = [[] for _ in builders]
            ids: list[list[int]] = [[] for _ in builders]
            left = len(plan.requests)
            while left:
                k, item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    left -= 1
                    continue
                completion += 1
                metrics.tokens_generated.inc()
                b, stops = builders[k], plan.requests[k].stop_sequences
                ids[k].append(item.id)
                held[k].append(item)
                if item.finish_reason == "stop_sequence":
                    m = matched_stop(ids[k], stops)
                    seq = stops[m] if m is not None else ()
                    for s in held[k][: len(held[k]) - len(seq)]:
                        yield chunk([token_choice(b, s)])
                    b.finish, b.stop_reason = "stop", plan.stop_texts.get(seq)
                    yield chunk([CompletionChoice(
                        index=b.index, text="", finish_reason="stop", stop_reason=b.stop_reason,
                        logprobs=None if plan.logprobs is None else CompletionLogprobs(
                            tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[]))])
                    continue
                keep = 0 if item.finish_reason else stop_prefix_length(ids[k], stops)
                ready, held[k] = held[k][: len(held[k]) - keep], held[k][len(held[k]) - keep :]
                for s in ready:
                    yield chunk([token_choice(b, s)])
            if include_usage:
                yield chunk([], _usage(plan, completion))
            yield {"data": "[DONE]"}
        except Exception:
            logger.exception("completion failed mid-stream")
            yield {"data": OpenAIError.model_validate({"error": {
                "message": "internal server error", "type": "internal_error",
                "code": "internal"}}).model_dump_json()}
        finally:
            for t in tasks:
                t.cancel()

    return EventStream(events(), sep="\n")


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses={**OPENAI_ERRORS, 200: {
        "description": 'The completion; with "stream": true server-sent events, each data a '
        "CompletionResponse chunk, the last data: [DONE].",
        "content": {"text/event-stream": {"schema": {
            "type": "object", "required": ["data"],
            "properties": {"data": {"type": "string"}, "event": {"type": "string"},
                           "id": {"type": "string"}}}}}}},
    summary="OpenAI's completions: generate, or with echo and logprobs score the prompt",
)
async def completions(
    req: CompletionRequest,
    engine: EngineDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> CompletionResponse | EventSourceResponse:
    """vLLM's /v1/completions (docs/design.md, "OpenAI-compatible completions")."""
    plan = await make_plan(req, engine, settings)
    metrics.prompt_tokens.inc(sum(len(p.ids) for p in plan.prompts))
    if req.stream:
        return await stream(engine, plan, req, metrics)
    return await complete(engine, plan, settings, metrics)


@router.get("/v1/models", response_model=ModelList, responses=OPENAI_ERRORS,
            summary="The served model, in OpenAI's list")
async def models(engine: EngineDep, settings: SettingsDep) -> ModelList:
    """One model: the served weights, by their directory's name."""
    path = engine.weights.path
    created = int(path.stat().st_mtime) if path.exists() else 0
    return ModelList(data=[ModelCard(id=served_model(engine), created=created,
                                     max_model_len=settings.max_request_tokens)])
