"""Bodies of the OpenAI-compatible API (/v1/completions, /v1/models) as vLLM serves it.

OpenAI's clients send many optional fields, often null; each is accepted at the value that
changes nothing, and the route answers 400 naming one it cannot honour (docs/design.md).
Limits that follow Settings (max_tokens, the prompt's length) are checked by the route.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas import Text, _Request

_RESPONSE = ConfigDict(extra="forbid")

# OpenAI's own bounds: logprobs 0-5 alternatives, at most 4 stop sequences, n up to 128.
MAX_LOGPROBS = 5
MAX_STOP = 4
MAX_N = 128
MAX_PROMPTS = 256

# logit_bias's keys: token ids written as JSON object keys (decimal, no sign or leading zero)
TokenIdKey = Annotated[str, Field(pattern=r"^(0|[1-9][0-9]*)$")]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, fail_fast=True)]


class StreamOptions(_Request):
    """What a stream carries besides the tokens."""

    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool | None = Field(
        default=None, description="Send a last chunk with usage and no choices.", examples=[True]
    )


class CompletionRequest(_Request):
    """OpenAI's completions body (the fields vLLM reads)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {"prompt": "the stock market", "max_tokens": 8, "temperature": 0},
                {
                    "prompt": ["the stock market fell", "prices rose"],
                    "max_tokens": 0,
                    "echo": True,
                    "logprobs": 1,
                },
            ]
        },
    )

    model: str | None = Field(
        default=None,
        description="The served model's id (GET /v1/models); null: that one.",
        examples=["ptb-650-awd"],
    )
    prompt: Text | list[Text] | TokenIds | list[TokenIds] = Field(
        description="A text, a list of texts, a list of token ids or a list of such lists "
        f"(at most {MAX_PROMPTS} prompts). A text is read after an implicit <eos>.",
        examples=["the stock market"],
    )
    max_tokens: int | None = Field(
        default=16,
        ge=0,
        description="Tokens to generate per choice; 0 with echo scores only.",
        examples=[16, 0],
    )
    echo: bool | None = Field(
        default=False, description="Return the prompt before the output.", examples=[False]
    )
    logprobs: int | None = Field(
        default=None,
        ge=0,
        le=MAX_LOGPROBS,
        description="Return each token's log-probability and this many alternatives.",
        examples=[1],
    )
    temperature: float | None = Field(
        default=1.0,
        ge=0.0,
        le=2.0,
        description="0: greedy decoding; otherwise sampling.",
        examples=[0.0, 1.0],
    )
    top_p: float | None = Field(
        default=1.0, gt=0.0, le=1.0, description="Nucleus sampling.", examples=[1.0]
    )
    top_k: int | None = Field(
        default=None,
        ge=-1,
        description="vLLM's extension: sample among the k most likely (-1 or 0: all).",
        examples=[-1],
    )
    n: int | None = Field(
        default=1, ge=1, le=MAX_N, description="Choices per prompt.", examples=[1]
    )
    seed: int | None = Field(
        default=None, ge=0, lt=2**63, description="Makes sampling reproducible.", examples=[42]
    )
    stop: Text | list[Text] | None = Field(
        default=None,
        description=f"Up to {MAX_STOP} sequences that end a choice (not returned).",
        examples=[["."]],
    )
    stream: bool | None = Field(
        default=False, description="Answer as server-sent events.", examples=[False]
    )
    stream_options: StreamOptions | None = Field(
        default=None,
        description="What a stream carries besides the tokens (without stream, the answer has "
        "its usage anyway).",
        examples=[{"include_usage": True}],
    )
    logit_bias: dict[TokenIdKey, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        default=None,
        description="Added to the log-probabilities of these token ids (as strings) before a "
        "token is chosen, -100 to 100 (OpenAI's): -100 all but bans a token, 100 all but forces "
        "it. Reported logprobs stay the model's.",
        examples=[{"26": -100}],
    )
    user: Text | None = Field(
        default=None, description="Accepted and ignored.", examples=["user-1"]
    )
    # Accepted only at the value that changes nothing; the route's 400 says so.
    best_of: int | None = Field(
        default=None, ge=1, description="Only 1 is supported.", examples=[1],
        json_schema_extra={"enum": [1, None]},
    )
    presence_penalty: float | None = Field(
        default=None, ge=-2.0, le=2.0, description="Only 0 is supported.", examples=[0.0],
        json_schema_extra={"enum": [0, None]},
    )
    frequency_penalty: float | None = Field(
        default=None, ge=-2.0, le=2.0, description="Only 0 is supported.", examples=[0.0],
        json_schema_extra={"enum": [0, None]},
    )
    suffix: Text | None = Field(
        default=None, description="Only null is supported.", examples=[None],
        json_schema_extra={"enum": [None]},
    )


class CompletionLogprobs(BaseModel):
    """Per token of a choice's text (the echoed prompt first, with echo)."""

    model_config = _RESPONSE

    tokens: list[str] = Field(
        description="The tokens (<eos> included).", examples=[["<eos>", "the", "market"]]
    )
    token_logprobs: list[float | None] = Field(
        description="log p(token | all before it); null for the first token of a prompt.",
        examples=[[None, -3.1, -5.2]],
    )
    top_logprobs: list[dict[str, float] | None] | None = Field(
        description="The most likely tokens at each position and the chosen one.",
        examples=[[None, {"the": -3.1, "a": -3.5}]],
    )
    text_offset: list[int] = Field(
        description="Where each token starts in the choice's text.", examples=[[0, 0, 4]]
    )


class CompletionChoice(BaseModel):
    """One choice; those of prompt i are indices i*n ... i*n+n-1."""

    model_config = _RESPONSE

    index: int = Field(
        description="Its place: prompt i's choices are i*n ... i*n+n-1.", examples=[0]
    )
    text: str = Field(
        description="The output (after the echoed prompt, with echo).", examples=[" fell sharply"]
    )
    logprobs: CompletionLogprobs | None = Field(
        default=None, description="With logprobs: per token; null otherwise.", examples=[1]
    )
    finish_reason: Literal["stop", "length"] | None = Field(
        default=None,
        description="stop: <eos> or a stop sequence; length: max_tokens; null: a chunk "
        "before the last.",
        examples=["length"],
    )
    stop_reason: str | int | None = Field(
        default=None,
        description="vLLM's: the stop sequence that ended the choice.",
        examples=[None],
    )


class Usage(BaseModel):
    """Token counts (the implicit <eos> of a text prompt counted)."""

    model_config = _RESPONSE

    prompt_tokens: int = Field(description="Tokens of the prompts.", examples=[4])
    completion_tokens: int = Field(description="Tokens generated, over all choices.", examples=[16])
    total_tokens: int = Field(description="Their sum.", examples=[20])


class CompletionResponse(BaseModel):
    """The answer to /v1/completions (also each streamed chunk, with choices' deltas)."""

    model_config = _RESPONSE

    id: str = Field(description="cmpl- and a random hex id.", examples=["cmpl-3f2a9c"])
    object: Literal["text_completion"] = Field(
        default="text_completion", description="Kind.", examples=["text_completion"]
    )
    created: int = Field(description="Unix time of the answer.", examples=[1767225600])
    model: str = Field(description="The served model's id.", examples=["ptb-650-awd"])
    choices: list[CompletionChoice] = Field(
        description="The choices (one per chunk).", examples=[[]]
    )
    usage: Usage | None = Field(
        default=None,
        description="Token counts; in a stream only the last chunk's.",
        examples=[None],
    )


class ModelCard(BaseModel):
    """The served model."""

    model_config = _RESPONSE

    id: str = Field(description="The weights directory's name.", examples=["cmpl-3f2a9c"])
    object: Literal["model"] = Field(
        default="model", description="Kind.", examples=["text_completion"]
    )
    created: int = Field(description="Unix time the weights were written.", examples=[1767225600])
    owned_by: str = Field(
        default="rnnlm-service", description="Who serves it.", examples=["rnnlm-service"]
    )
    max_model_len: int | None = Field(
        default=None, description="Tokens one request may hold.", examples=[8192]
    )


class ModelList(BaseModel):
    """GET /v1/models."""

    model_config = _RESPONSE

    object: Literal["list"] = Field(
        default="list", description="Kind.", examples=["text_completion"]
    )
    data: list[ModelCard] = Field(description="The served model.", examples=[[]])


class OpenAIErrorBody(BaseModel):
    """OpenAI's error object."""

    model_config = _RESPONSE

    message: str = Field(
        description="What is wrong, in words.",
        examples=["logprobs: Input should be less than or equal to 5"],
    )
    type: str = Field(
        description="invalid_request_error, rate_limit_error, ...",
        examples=["invalid_request_error"],
    )
    param: str | None = Field(
        default=None, description="The request field at fault.", examples=["logprobs"]
    )
    code: str | None = Field(
        default=None, description="This server's error_type.", examples=["validation"]
    )


class OpenAIError(BaseModel):
    """The envelope of every error under /v1/."""

    model_config = _RESPONSE

    error: OpenAIErrorBody = Field(
        description="The error.",
        examples=[
            {"message": "...", "type": "invalid_request_error", "param": None, "code": "validation"}
        ],
    )
