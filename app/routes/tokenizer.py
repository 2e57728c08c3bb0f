"""POST /tokenize, POST /detokenize and GET /tokenizer_info: vLLM's tokenizer endpoints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.deps import EngineDep, SettingsDep, check_chars, check_model, tokenize_all
from app.errors import ERROR_RESPONSES, validation_error
from app.routes.generate import Renderer
from app.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfoResponse,
)
from model.normalize import EOS

router = APIRouter(tags=["tokenizer"])

# "model" naming another model than the served one is a 404.
RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES, 404: {"model": ErrorResponse, "description": "No such model."}
}


@router.post(
    "/tokenize",
    response_model=TokenizeResponse,
    responses=RESPONSES,
    summary="What the normaliser makes of a text: ids, tokens, words and OOV flags",
)
async def tokenize_text(
    req: TokenizeRequest,
    engine: EngineDep,
    settings: SettingsDep,
) -> TokenizeResponse:
    """Normalise a prompt with the model's normaliser and look it up in the vocabulary."""
    check_model(req.model, engine)
    if (req.prompt is None) == (req.text is None):
        raise validation_error('give "prompt" (vLLM\'s) or "text", exactly one of them',
                               "prompt")
    text, name = (req.prompt, "prompt") if req.prompt is not None else (req.text, "text")
    assert text is not None
    check_chars(text, name, settings)
    special = req.add_special_tokens
    if special is None:
        special = req.prompt is not None
    (tok,) = await tokenize_all([text], engine.tokenizer)
    vocab = engine.vocab
    start = [vocab.eos_id] if special else []
    ids = [*start, *tok.ids]
    return TokenizeResponse(
        tokens=ids,
        count=len(ids),
        max_model_len=settings.max_request_tokens,
        token_strs=[*([EOS] if special else []), *tok.tokens],
        words=[*([EOS] if special else []), *tok.words],
        oov=[*([False] if special else []), *tok.oov],
        oov_words=tok.oov_words,
    )


@router.post(
    "/detokenize",
    response_model=DetokenizeResponse,
    responses=RESPONSES,
    summary="Token ids as text",
)
async def detokenize(req: DetokenizeRequest, engine: EngineDep) -> DetokenizeResponse:
    """Words joined by spaces, <eos> as a line end; a leading <eos> (the start) adds nothing."""
    check_model(req.model, engine)
    vocab = engine.vocab
    V = len(vocab.id_to_word)
    for i, t in enumerate(req.tokens):
        if t >= V:
            raise validation_error(f"tokens[{i}] is {t}, outside the vocabulary (0 to {V - 1})",
                                   f"tokens[{i}]")
    ids = req.tokens[1:] if req.tokens[:1] == [vocab.eos_id] else req.tokens
    r = Renderer(vocab)
    for t in ids:
        r.add(t)
    return DetokenizeResponse(prompt=r.text)


@router.get(
    "/tokenizer_info",
    response_model=TokenizerInfoResponse,
    responses=ERROR_RESPONSES,
    summary="The tokenizer: special tokens, vocabulary size, normaliser",
)
async def tokenizer_info(engine: EngineDep, settings: SettingsDep) -> TokenizerInfoResponse:
    """What a remote tokenizer (lm-evaluation-harness's) needs to know."""
    w = engine.weights
    return TokenizerInfoResponse(
        tokenizer_class=w.normalizer.name,
        eos_token=EOS,
        eos_token_id=engine.vocab.eos_id,
        unk_token=engine.vocab.id_to_word[engine.vocab.unk_id],
        unk_token_id=engine.vocab.unk_id,
        vocab_size=len(engine.vocab.id_to_word),
        model_max_length=settings.max_request_tokens,
        normalizer=w.normalizer.to_dict(),
    )
