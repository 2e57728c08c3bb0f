"""POST /perplexity and /next-word."""

from __future__ import annotations

import math

import numpy as np
from fastapi import APIRouter

from app.deps import EngineDep, MetricsDep, SettingsDep, check_chars, tokenize_all
from app.errors import ERROR_RESPONSES, ApiError, validation_error
from app.schemas import (
    Aggregate,
    Alternative,
    ErrorResponse,
    NextWordRequest,
    NextWordResponse,
    PerplexityRequest,
    PerplexityResponse,
    Prediction,
    TargetScore,
    TextScore,
    TokenDetail,
    TokenScore,
)
from model.evaluate import text_result, token_entries
from model.inference import TokenDetails
from model.vocab import Vocab

router = APIRouter(tags=["scoring"])


def _shorten(word: str, n: int = 40) -> str:
    """A word for an error message, shortened."""
    return word if len(word) <= n else word[:n] + "..."


@router.post(
    "/perplexity",
    response_model=PerplexityResponse,
    responses={**ERROR_RESPONSES, 409: {
        "model": ErrorResponse,
        "description": 'With oov "reject": words outside the vocabulary (details lists them).'}},
    summary="Score texts: perplexity, log-probability and per-token log-probabilities",
)
async def perplexity(
    req: PerplexityRequest,
    engine: EngineDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> PerplexityResponse:
    """Score each text from a zero state fed <eos> (docs/design.md, scoring conventions)."""
    if req.texts is not None and req.text is not None:
        raise validation_error('give either "text" or "texts", not both', "texts")
    if req.texts is None and req.text is None:
        raise validation_error('give "text" (one text) or "texts" (a list of texts)', "text")
    texts = req.texts if req.texts is not None else [req.text or ""]
    names = [f"texts[{i}]" for i in range(len(texts))] if req.texts is not None else ["text"]
    if len(texts) > settings.max_texts:
        raise validation_error(
            f"texts holds {len(texts)} texts, more than the limit of {settings.max_texts}",
            "texts",
        )
    for text, name in zip(texts, names, strict=True):
        check_chars(text, name, settings)
    vocab = engine.vocab
    toks = await tokenize_all(texts, engine.tokenizer)
    if req.oov == "reject":
        bad = [
            (i, name, tok.oov_words)
            for i, (tok, name) in enumerate(zip(toks, names, strict=True))
            if tok.oov_words
        ]
        if bad:
            listed = "; ".join(
                f"{name}: " + ", ".join(repr(_shorten(w)) for w in words[:10])
                for _, name, words in bad[:5]
            )
            # 409, not 422: the request is well formed, the served vocabulary lacks the words
            raise ApiError(
                409, "oov", f"words outside the vocabulary (oov=reject): {listed}", bad[0][1],
                [{"param": name, "index": i, "oov": words} for i, name, words in bad],
            )
    eos = vocab.eos_id
    seqs = [[eos, *tok.ids, *([eos] if req.eos else [])] for tok in toks]
    total = sum(len(s) - 1 for s in seqs)
    if total > settings.max_request_tokens:
        raise validation_error(
            f"the texts hold {total} tokens to score, more than the limit of "
            f"{settings.max_request_tokens}",
            "texts" if req.texts is not None else "text",
        )
    if req.top_k and not req.return_tokens:
        raise validation_error("top_k needs return_tokens: true", "top_k")
    if req.top_k > settings.max_top_k:
        raise validation_error(
            f"top_k is {req.top_k}, more than the limit of {settings.max_top_k}", "top_k")
    details = await engine.score_details(seqs, req.top_k) if req.top_k else None
    lps = [d.logprobs for d in details] if details is not None else await engine.score(seqs)

    results: list[TextScore] = []
    sum_lp, sum_n = 0.0, 0
    unk = vocab.unk_id
    for n_text, (text, seq, lp) in enumerate(zip(texts, seqs, lps, strict=True)):
        numbers = text_result(seq, lp, unk)  # the arithmetic rnnlm score shares
        tokens: list[TokenDetail | TokenScore] | None = None
        if req.return_tokens:
            tokens = [TokenScore(**t) for t in token_entries(seq, lp, vocab)]
            if details is not None:
                tokens = _with_details(tokens, details[n_text], vocab)
        results.append(TextScore(text=text, **numbers, tokens=tokens))
        sum_lp += numbers["log_prob"]
        sum_n += numbers["num_tokens"]
    metrics.tokens_scored.inc(sum_n)
    metrics.oov_tokens.labels("/perplexity").inc(sum(len(t.oov_words) for t in toks))
    return PerplexityResponse(
        results=results,
        aggregate=Aggregate(
            perplexity=math.exp(-sum_lp / sum_n) if sum_n else None, log_prob=sum_lp,
            num_tokens=sum_n,
        ),
    )


def _with_details(
    tokens: list[TokenDetail | TokenScore], d: TokenDetails, vocab: Vocab
) -> list[TokenDetail | TokenScore]:
    """The tokens with each position's rank and alternatives."""
    return [
        TokenDetail(
            **t.model_dump(), rank=int(d.ranks[j]),
            top=[Alternative(token=vocab.id_to_word[int(i)], id=int(i), logprob=float(v))
                 for i, v in zip(d.top_ids[j], d.top_logprobs[j], strict=True)],
        )
        for j, t in enumerate(tokens)
    ]


@router.post(
    "/next-word",
    response_model=NextWordResponse,
    responses=ERROR_RESPONSES,
    summary="The most likely next words after a context, and the probability of targets",
)
async def next_word(
    req: NextWordRequest,
    engine: EngineDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> NextWordResponse:
    """The next-word distribution after <eos> + the normalised context."""
    check_chars(req.context, "context", settings)
    # the default (10) is capped by the limit; an explicit top_k over it is an error
    top_k = req.top_k if "top_k" in req.model_fields_set else min(req.top_k, settings.max_top_k)
    if top_k > settings.max_top_k:
        raise validation_error(
            f"top_k is {top_k}, more than the limit of {settings.max_top_k}", "top_k"
        )
    targets = req.targets or []
    if len(targets) > settings.max_targets:
        raise validation_error(
            f"targets holds {len(targets)} words, more than the limit of {settings.max_targets}",
            "targets",
        )
    for i, t in enumerate(targets):
        check_chars(t, f"targets[{i}]", settings)
    vocab = engine.vocab
    ctx, *target_toks = await tokenize_all([req.context, *targets], engine.tokenizer)
    if len(ctx.ids) + 1 + max((len(t.ids) for t in target_toks), default=0) > \
            settings.max_request_tokens:
        raise validation_error(
            f"context has {len(ctx.ids)} tokens, more than the limit of "
            f"{settings.max_request_tokens} with its longest target",
            "context",
        )
    start = [vocab.eos_id, *ctx.ids]
    logp = await engine.next_word(start)
    lp64 = logp.astype(np.float64)
    # A target of several tokens is scored after the context by the batched scorer; the
    # context's states come from the prefix cache the next-word step just filled.
    longer = [i for i, t in enumerate(target_toks) if len(t.ids) > 1]
    seq_lps = dict(zip(longer, await engine.score(
        [[*start, *target_toks[i].ids] for i in longer]), strict=True)) if longer else {}

    k = min(top_k, lp64.size)
    top = np.argpartition(-lp64, k - 1)[:k]
    top = top[np.argsort(-lp64[top], kind="stable")]
    predictions = [
        Prediction(
            token=vocab.id_to_word[i], id=int(i), prob=math.exp(lp64[i]), logprob=float(lp64[i])
        )
        for i in top
    ]
    scored: list[TargetScore] = []
    for i, tt in enumerate(target_toks):
        word, n = " ".join(tt.words), len(tt.ids)
        if any(tt.oov):
            scored.append(TargetScore(token=word, num_tokens=n, in_vocab=False, prob=None,
                                      logprob=None, rank=None))
            continue
        rank = None
        if n == 1:
            v = float(lp64[tt.ids[0]])
            rank = int(np.count_nonzero(lp64 > v)) + 1
        else:  # the empty sequence is certain
            v = float(seq_lps[i][len(start) - 1 :].astype(np.float64).sum()) if n else 0.0
        scored.append(TargetScore(token=word, num_tokens=n, in_vocab=True, prob=math.exp(v),
                                  logprob=v, rank=rank))
    p = np.exp(lp64)
    entropy_bits = float(-(p * lp64).sum() / math.log(2.0))
    metrics.prompt_tokens.inc(len(ctx.ids) + 1)
    metrics.oov_tokens.labels("/next-word").inc(len(ctx.oov_words))
    return NextWordResponse(
        context_tokens=ctx.tokens,
        oov=ctx.oov_words,
        predictions=predictions,
        targets=scored,
        entropy_bits=max(entropy_bits, 0.0),
    )
