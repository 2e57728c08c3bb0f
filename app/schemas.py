"""Request and response bodies of the HTTP API (pydantic v2); unknown fields are rejected.

Limits that come from Settings (text length, counts, max_new_tokens' upper bound) are checked
by the routes, so they follow the configuration; the constraints here are the ones that hold
whatever the configuration.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, model_validator
from pydantic_core import PydanticCustomError

_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(text: str) -> str:
    """Replace lone surrogates (legal in JSON escapes, not in UTF-8) so answers always encode."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


# Every user string passes through _clean: it may be echoed back in a response or an error.
Text = Annotated[str, AfterValidator(_clean)]

# allow_inf_nan=False: Python's JSON parser reads NaN, Infinity and 1e400 as floats; a
# temperature of Infinity used to be accepted (strict JSON has no such number).
_REQUEST = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
_RESPONSE = ConfigDict(extra="forbid")

# A 1 MiB body can hold 200,000 invalid list items or 80,000 unknown fields; FastAPI expands
# every pydantic error into a dict, which took 230 MB for one such request. Lists stop at their
# first invalid item (fail_fast) and a body with this many unknown fields is one error.
MAX_UNKNOWN_FIELDS = 20


class _Request(BaseModel):
    """A request body (each subclass sets extra="forbid" and strict)."""

    @model_validator(mode="before")
    @classmethod
    def _few_unknown_fields(cls, data: Any) -> Any:
        """One error for an object with more than MAX_UNKNOWN_FIELDS unknown fields."""
        if isinstance(data, dict) and len(data) > len(cls.model_fields) + MAX_UNKNOWN_FIELDS:
            unknown = [k for k in data if k not in cls.model_fields]
            if len(unknown) > MAX_UNKNOWN_FIELDS:
                names = ", ".join(repr(str(k)[:40]) for k in unknown[:5])
                raise PydanticCustomError(
                    "too_many_fields",
                    "{count} unknown fields ({names}, ...)",
                    {"count": len(unknown), "names": names},
                )
        if isinstance(data, dict):
            data = {k: _whole_numbers_as_ints(v) for k, v in data.items()}
        return data


def _whole_numbers_as_ints(value: Any) -> Any:
    """3.0 -> 3, in lists too: JSON has one number type, and JSON Schema's integer is any
    number without a fraction (strict mode alone refuses 3.0 for an int; a float field still
    takes the int)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, list) and any(isinstance(v, (float, list)) for v in value):
        return [_whole_numbers_as_ints(v) for v in value]  # a list of ints is kept as it is
    return value


FinishReason = Literal["length", "eos_token", "stop_sequence"]


class ErrorResponse(BaseModel):
    """The envelope of every error answer (text-generation-inference's, plus param and details)."""

    model_config = _RESPONSE

    error: str = Field(
        description="What is wrong, in words.",
        examples=["invalid request: parameters.temperature: Input should be greater than 0"],
    )
    error_type: str = Field(
        description=(
            "Kind of error: validation, payload_too_large, not_found, method_not_allowed, "
            "overloaded, unavailable, timeout or internal."
        ),
        examples=["validation"],
    )
    param: str | None = Field(
        default=None,
        description="The request field at fault, when one is.",
        examples=["parameters.stop"],
    )
    details: list[Any] = Field(
        default_factory=list,
        description="Machine-readable specifics (one entry per invalid field, OOV words, ...).",
        examples=[[{"param": "parameters.temperature", "message": "...", "type": "greater_than"}]],
    )


# --- /generate, /generate_stream, POST / -------------------------------------------------------


class GenerateParameters(_Request):
    """text-generation-inference's parameters; sampling when do_sample or any warper is set."""

    model_config = _REQUEST

    adapter_id: str | None = Field(
        default=None,
        description='LoRA adapter (TGI). This model has none: only null or "" is accepted.',
        examples=[None],
        json_schema_extra={"enum": ["", None]},
    )
    best_of: int | None = Field(
        default=None,
        ge=1,
        description="Sequences to sample, keeping the most likely (TGI). Only null or 1 here.",
        examples=[None],
        json_schema_extra={"enum": [1, None]},
    )
    decoder_input_details: bool = Field(
        default=False,
        description="Fill details.prefill with the prompt tokens' log-probabilities "
        "(the first, <eos>, has null); streamed, on the last event's details.",
        examples=[False],
    )
    details: bool = Field(
        default=False,
        description="Return details (tokens, log-probabilities, finish reason, seed, OOV words).",
        examples=[True],
    )
    do_sample: bool = Field(
        default=False, description="Sample instead of greedy decoding.", examples=[True]
    )
    frequency_penalty: float | None = Field(
        default=None,
        description="Frequency penalty (TGI). Not supported: only null or 0 is accepted; "
        "use repetition_penalty.",
        examples=[None],
        json_schema_extra={"enum": [0, None]},
    )
    grammar: dict[str, Any] | None = Field(
        default=None,
        description="Constrained decoding grammar (TGI). Not supported: only null is accepted.",
        examples=[None],
        json_schema_extra={"enum": [None]},
    )
    max_new_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Tokens to generate at most (default 20, at most 512 by default limits).",
        examples=[20],
    )
    repetition_penalty: float | None = Field(
        default=None,
        gt=0,
        description="CTRL-style penalty (> 0; 1 is none) on tokens of the prompt and output: "
        "a seen token's positive logit is divided by it, a negative one multiplied.",
        examples=[1.2],
    )
    return_full_text: bool | None = Field(
        default=None,
        description="Prepend the prompt to generated_text (default false).",
        examples=[False],
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**64 - 1,
        description="Random seed for sampling; drawn (and reported in details.seed) when null. "
        "The same seed and parameters give the same tokens.",
        examples=[42],
    )
    stop: list[Text] | None = Field(
        default=None,
        fail_fast=True,
        description="Stop sequences (at most 4), matched on normalised tokens; the matched "
        "sequence is included in the output. One with no tokens, or longer than "
        "max_new_tokens, never matches.",
        examples=[["the end"]],
    )
    temperature: float | None = Field(
        default=None,
        gt=0,
        description="Softmax temperature (> 0); a value other than 1 turns sampling on.",
        examples=[0.8],
    )
    top_k: int | None = Field(
        default=None,
        ge=1,
        description="Sample among the k most likely tokens (>= 1); turns sampling on.",
        examples=[50],
    )
    top_n_tokens: int | None = Field(
        default=None,
        ge=0,
        description="Also return the n most likely tokens at each step (at most 5).",
        examples=[None],
    )
    top_p: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Nucleus sampling mass (0 < p <= 1); below 1 turns sampling on.",
        examples=[0.95],
    )
    truncate: int | None = Field(
        default=None,
        ge=1,
        description="Keep only the last n prompt tokens (after the starting <eos>).",
        examples=[None],
    )
    typical_p: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Typical sampling mass (0 < p <= 1); below 1 turns sampling on.",
        examples=[None],
    )
    watermark: bool = Field(
        default=False,
        description="Watermarking (TGI). Not supported: only false is accepted.",
        examples=[False],
        json_schema_extra={"enum": [False]},
    )
    stop_at_eos: bool = Field(
        default=True,
        description="Stop at the end-of-sentence token <eos> (finish_reason eos_token). "
        "When false, an <eos> is rendered as a newline and generation goes on.",
        examples=[True],
    )
    ban_unk: bool = Field(
        default=True, description="Never generate the unknown-word token <unk>.", examples=[True]
    )


class GenerateRequest(_Request):
    """A text-generation-inference generate request."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "inputs": "the company said it expects",
                    "parameters": {
                        "max_new_tokens": 12,
                        "do_sample": True,
                        "seed": 7,
                        "temperature": 0.8,
                        "details": True,
                    },
                }
            ]
        },
    )

    inputs: Text = Field(
        description="The prompt; normalised like PTB text (an empty prompt starts from <eos>).",
        examples=["the company said it expects"],
    )
    parameters: GenerateParameters = Field(
        default_factory=lambda: GenerateParameters(),
        description="Generation parameters (text-generation-inference's, plus stop_at_eos "
        "and ban_unk).",
        examples=[{"max_new_tokens": 12, "do_sample": True, "seed": 7, "details": True}],
    )
    stream: bool = Field(
        default=False,
        description="Answer with server-sent events, one per token.",
        examples=[False],
    )


class Token(BaseModel):
    """A generated token."""

    model_config = _RESPONSE

    id: int = Field(description="Vocabulary id.", examples=[42])
    text: str = Field(
        description="What the token adds to generated_text: the word with a leading space "
        "(none at the start or after a newline); <eos> is a newline.",
        examples=[" market"],
    )
    logprob: float = Field(description="Natural-log probability under the model.", examples=[-2.3])
    special: bool = Field(description="True for <eos>.", examples=[False])


class PrefillToken(BaseModel):
    """A prompt token as the model read it."""

    model_config = _RESPONSE

    id: int = Field(description="Vocabulary id.", examples=[24])
    text: str = Field(description="The vocabulary token.", examples=["company"])
    logprob: float | None = Field(
        description="Natural-log probability given the tokens before it; null for the first "
        "(<eos>) and when decoder_input_details is false.",
        examples=[-5.1],
    )


class GenerateDetails(BaseModel):
    """How generation went."""

    model_config = _RESPONSE

    finish_reason: FinishReason = Field(
        description="length, eos_token or stop_sequence.", examples=["length"]
    )
    generated_tokens: int = Field(
        description="Tokens generated, a closing <eos> included.", examples=[12]
    )
    seed: int | None = Field(
        description="The seed used when sampling (drawn when none was given); null when greedy "
        "without a seed.",
        examples=[7],
    )
    input_length: int = Field(
        description="Prompt tokens the model read, the starting <eos> included.", examples=[6]
    )
    oov: list[str] = Field(
        description="Prompt words outside the vocabulary (read as <unk>).", examples=[["acme"]]
    )
    prefill: list[PrefillToken] = Field(
        description="The prompt tokens (log-probabilities with decoder_input_details).",
        examples=[
            [
                {"id": 24, "text": "<eos>", "logprob": None},
                {"id": 32, "text": "the", "logprob": -3.1},
            ]
        ],
    )
    tokens: list[Token] = Field(
        description="The generated tokens.",
        examples=[[{"id": 220, "text": " market", "logprob": -2.3, "special": False}]],
    )
    top_tokens: list[list[Token]] | None = Field(
        default=None,
        description="The top_n_tokens most likely tokens at each step, when asked.",
        examples=[None],
    )


class GenerateResponse(BaseModel):
    """The answer of /generate (POST / answers a list holding one)."""

    model_config = _RESPONSE

    generated_text: str = Field(
        description="The generated words joined by single spaces (a stop sequence included, a "
        "closing <eos> left out, other <eos> as newlines); the prompt first with "
        "return_full_text.",
        examples=["to report a loss in the fourth quarter"],
    )
    details: GenerateDetails | None = Field(
        default=None,
        description="Present when parameters.details is true.",
        examples=[None],
    )


class StreamDetails(BaseModel):
    """Details carried by the last streamed event."""

    model_config = _RESPONSE

    finish_reason: FinishReason = Field(
        description="length, eos_token or stop_sequence.", examples=["eos_token"]
    )
    generated_tokens: int = Field(description="Tokens generated, <eos> included.", examples=[9])
    seed: int | None = Field(description="The seed used when sampling.", examples=[7])
    input_length: int = Field(
        description="Prompt tokens the model read, the starting <eos> included.", examples=[6]
    )
    oov: list[str] = Field(description="Prompt words outside the vocabulary.", examples=[[]])
    prefill: list[PrefillToken] | None = Field(
        default=None,
        description="With decoder_input_details: the prompt tokens and their log-probabilities "
        "(the first, <eos>, has null).",
        examples=[None],
    )


class StreamResponse(BaseModel):
    """One server-sent event of /generate_stream: a token; the last also the text and details."""

    model_config = _RESPONSE

    index: int = Field(description="1-based position of the token.", examples=[1])
    token: Token = Field(
        description="The generated token.",
        examples=[{"id": 220, "text": " market", "logprob": -2.3, "special": False}],
    )
    top_tokens: list[Token] | None = Field(
        default=None,
        description="The most likely tokens at this step, with top_n_tokens.",
        examples=[None],
    )
    generated_text: str | None = Field(
        default=None,
        description="The whole generated text, on the last event only.",
        examples=[None],
    )
    details: StreamDetails | None = Field(
        default=None,
        description="On the last event only.",
        examples=[
            {
                "finish_reason": "length",
                "generated_tokens": 8,
                "seed": 7,
                "input_length": 3,
                "oov": [],
            }
        ],
    )


# --- /perplexity --------------------------------------------------------------------------------


def exactly_one_of(*names: str, types: dict[str, str]) -> list[JsonValue]:
    """JSON Schema's oneOf for "give exactly one of these fields, not null" (the route checks
    it, with a message that says so)."""
    return [{"required": [n], "properties": {n: {"type": types[n]}}} for n in names]


class PerplexityRequest(_Request):
    """Texts to score; give exactly one of text and texts."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "oneOf": exactly_one_of("text", "texts", types={"text": "string", "texts": "array"}),
            # top_k's ranks and alternatives belong to the tokens: they need return_tokens
            "if": {"required": ["top_k"], "properties": {"top_k": {"minimum": 1}}},
            "then": {"required": ["return_tokens"],
                     "properties": {"return_tokens": {"const": True}}},
            "examples": [
                {"texts": ["the stock market fell sharply", "prices rose"], "return_tokens": False},
                {"text": "the stock market fell sharply", "eos": True, "oov": "unk"},
            ]
        },
    )

    texts: list[Text] | None = Field(
        default=None,
        min_length=1,
        fail_fast=True,
        description="Texts scored as one batch (at most 256, 20,000 characters each).",
        examples=[["the stock market fell sharply", "prices rose"]],
    )
    text: Text | None = Field(
        default=None, description="One text (instead of texts).", examples=["the stock market fell"]
    )
    eos: bool = Field(
        default=True,
        description="Also predict the closing <eos> (counted in num_tokens).",
        examples=[True],
    )
    return_tokens: bool = Field(
        default=False,
        description="Return each predicted token's log-probability.",
        examples=[False],
    )
    oov: Literal["unk", "reject"] = Field(
        default="unk",
        description="unk: score words outside the vocabulary as <unk>; reject: answer 409 "
        "listing them (the request is well formed; the served vocabulary lacks the words).",
        examples=["unk"],
    )
    top_k: int = Field(
        default=0,
        ge=0,
        description="With return_tokens: also each token's rank in the model's distribution "
        "at its position (1 = most likely) and the top_k most likely tokens there (at most "
        "the /next-word top_k limit, 100 by default). 0: neither.",
        examples=[0, 5],
    )


class TokenScore(BaseModel):
    """One predicted token."""

    model_config = _RESPONSE

    token: str = Field(description="The vocabulary token predicted.", examples=["market"])
    id: int = Field(description="Its id.", examples=[220])
    logprob: float = Field(description="Natural-log probability.", examples=[-3.2])
    oov: bool = Field(description="True when the token is <unk>.", examples=[False])


class Alternative(BaseModel):
    """One of the most likely tokens at a position."""

    model_config = _RESPONSE

    token: str = Field(description="The vocabulary token.", examples=["market"])
    id: int = Field(description="Its id.", examples=[220])
    logprob: float = Field(description="Natural-log probability at that position.",
                           examples=[-0.7])


class TokenDetail(TokenScore):
    """One predicted token with its rank and the alternatives at its position (top_k > 0)."""

    rank: int = Field(description="1 + the number of tokens the model found more likely.",
                      examples=[3])
    top: list[Alternative] = Field(
        description="The top_k most likely tokens, best first.",
        examples=[[{"token": "market", "id": 392, "logprob": -0.68}]],
    )


class TextScore(BaseModel):
    """The score of one text."""

    model_config = _RESPONSE

    text: str = Field(description="The text as sent.", examples=["the stock market fell"])
    perplexity: float | None = Field(
        description="exp(-log_prob / num_tokens); null when num_tokens is 0 (a text without "
        "tokens, with eos false).",
        examples=[180.5],
    )
    log_prob: float = Field(
        description="Natural-log probability of the text (sum over its tokens).",
        examples=[-25.98],
    )
    log10_prob: float = Field(description="log_prob in base 10.", examples=[-11.28])
    num_tokens: int = Field(
        description="Predicted tokens, the closing <eos> included.", examples=[5]
    )
    num_oov: int = Field(description="Predicted tokens that are <unk>.", examples=[0])
    perplexity_excl_oov: float | None = Field(
        description="Perplexity without the <unk> predictions; null when none is left.",
        examples=[180.5],
    )
    tokens: list[TokenDetail | TokenScore] | None = Field(
        default=None,
        description="Per-token log-probabilities, with return_tokens (and with top_k, each "
        "token's rank and alternatives).",
        examples=[[{"token": "prices", "id": 310, "logprob": -7.2, "oov": False}]],
    )


class Aggregate(BaseModel):
    """The whole batch as one corpus."""

    model_config = _RESPONSE

    perplexity: float | None = Field(
        description="exp(-(sum of log_prob) / (sum of num_tokens)); null when num_tokens is 0.",
        examples=[175.2],
    )
    log_prob: float = Field(description="Sum of the texts' log_prob.", examples=[-41.3])
    num_tokens: int = Field(description="Sum of the texts' num_tokens.", examples=[8])


class PerplexityResponse(BaseModel):
    """Per-text scores and the aggregate."""

    model_config = _RESPONSE

    results: list[TextScore] = Field(
        description="One per text, in order.",
        examples=[
            [
                {
                    "text": "prices rose",
                    "perplexity": 180.5,
                    "log_prob": -15.6,
                    "log10_prob": -6.77,
                    "num_tokens": 3,
                    "num_oov": 0,
                    "perplexity_excl_oov": 180.5,
                    "tokens": None,
                }
            ]
        ],
    )
    aggregate: Aggregate = Field(
        description="All texts together.",
        examples=[{"perplexity": 180.5, "log_prob": -15.6, "num_tokens": 3}],
    )


# --- /next-word -------------------------------------------------------------------------------


class NextWordRequest(_Request):
    """A context whose next-word distribution is wanted."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"context": "the stock", "top_k": 5, "targets": ["market", "price"]}]
        },
    )

    context: Text = Field(
        description="Text before the word (may be empty: the start of a sentence).",
        examples=["the stock"],
    )
    top_k: int = Field(
        default=10,
        ge=1,
        description="How many of the most likely words to return (1..100).",
        examples=[5],
    )
    targets: list[Text] | None = Field(
        default=None,
        fail_fast=True,
        description="Words whose probability is wanted next (at most 100). A target of several "
        "tokens gets the probability of the whole sequence, one with none 1.",
        examples=[["market", "price"]],
    )


class Prediction(BaseModel):
    """One of the most likely next words."""

    model_config = _RESPONSE

    token: str = Field(description="Vocabulary token.", examples=["market"])
    id: int = Field(description="Its id.", examples=[220])
    prob: float = Field(description="Probability.", examples=[0.21])
    logprob: float = Field(description="Natural-log probability.", examples=[-1.56])


class TargetScore(BaseModel):
    """The probability of a requested word."""

    model_config = _RESPONSE

    token: str = Field(
        description="The target as normalised (its tokens joined by spaces).", examples=["price"]
    )
    num_tokens: int = Field(
        description="Its tokens: 1 for a word; a sequence's probability is the product of "
        "each token's given the context and the tokens before it.",
        examples=[1],
    )
    in_vocab: bool = Field(
        description="False when a token is outside the vocabulary.", examples=[True]
    )
    prob: float | None = Field(description="Probability; null when OOV.", examples=[0.01])
    logprob: float | None = Field(
        description="Natural-log probability; null when OOV.", examples=[-4.6]
    )
    rank: int | None = Field(
        description="1-based rank in the distribution, for a one-token target; null when OOV "
        "or not one token.",
        examples=[14],
    )


class NextWordResponse(BaseModel):
    """The next-word distribution after a context."""

    model_config = _RESPONSE

    context_tokens: list[str] = Field(
        description="The context as the model read it (after the starting <eos>).",
        examples=[["the", "stock"]],
    )
    oov: list[str] = Field(description="Context words outside the vocabulary.", examples=[[]])
    predictions: list[Prediction] = Field(
        description="The top_k most likely words.",
        examples=[[{"token": "market", "id": 220, "prob": 0.21, "logprob": -1.56}]],
    )
    targets: list[TargetScore] = Field(
        description="The requested targets, in order.",
        examples=[
            [{"token": "price", "num_tokens": 1, "in_vocab": True, "prob": 0.01,
              "logprob": -4.6, "rank": 14}]
        ],
    )
    entropy_bits: float = Field(
        description="Entropy of the whole distribution in bits.", examples=[7.9]
    )


# --- /tokenize --------------------------------------------------------------------------------


class TokenizeRequest(_Request):
    """vLLM's tokenize body: a prompt, and whether to prepend <eos> as a string prompt is read
    (this project's {"text"} stays accepted: the text's tokens, no <eos> added)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "oneOf": exactly_one_of("prompt", "text", types={"prompt": "string", "text": "string"}),
            "examples": [
                {"prompt": "The U.S. economy can't grow 3.5% a year.", "add_special_tokens": True},
                {"text": "The U.S. economy can't grow 3.5% a year."},
            ]
        },
    )

    prompt: Text | None = Field(
        default=None,
        description="Any text (at most 20,000 characters); give prompt or text, not both.",
        examples=["The U.S. economy can't grow 3.5% a year."],
    )
    text: Text | None = Field(
        default=None, description="The same as prompt with add_special_tokens false.",
        examples=["The U.S. economy"],
    )
    add_special_tokens: bool | None = Field(
        default=None,
        description="Prepend <eos>, the start a string prompt gets (default: true with "
        "prompt, false with text).",
        examples=[True],
    )
    model: str | None = Field(
        default=None, description="The served model's id, or null.", examples=["ptb-650-awd"]
    )


class TokenizeResponse(BaseModel):
    """vLLM's tokenize answer, plus what the normaliser made of the text."""

    model_config = _RESPONSE

    tokens: list[int] = Field(description="Token ids.", examples=[[24, 26]])
    count: int = Field(description="len(tokens).", examples=[2])
    max_model_len: int = Field(description="Tokens one request may hold.", examples=[8192])
    token_strs: list[str] = Field(
        description="The vocabulary token of each id (OOV words as <unk>).",
        examples=[["the", "<unk>"]],
    )
    words: list[str] = Field(
        description="Normalised words before vocabulary lookup (<eos> for an added one).",
        examples=[["the", "acme"]],
    )
    oov: list[bool] = Field(
        description="Per token: outside the vocabulary.", examples=[[False, True]]
    )
    oov_words: list[str] = Field(description="The words read as <unk>.", examples=[["acme"]])


class DetokenizeRequest(_Request):
    """Token ids to render as text."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tokens: list[Annotated[int, Field(ge=0)]] = Field(
        fail_fast=True, description="Token ids (each below the vocabulary size).",
        examples=[[24, 32, 760]],
    )
    model: str | None = Field(
        default=None, description="The served model's id, or null.", examples=["ptb-650-awd"]
    )


class DetokenizeResponse(BaseModel):
    """The ids as text: words joined by spaces, <eos> a line end (a leading one dropped)."""

    model_config = _RESPONSE

    prompt: str = Field(description="The text.", examples=["the world"])


class TokenizerInfoResponse(BaseModel):
    """What lm-evaluation-harness's remote tokenizer asks for."""

    model_config = _RESPONSE

    tokenizer_class: str = Field(description="This project's normaliser.", examples=["ptb"])
    eos_token: str = Field(description="The sentence boundary.", examples=["<eos>"])
    eos_token_id: int = Field(description="Its id.", examples=[24])
    bos_token: None = Field(
        default=None, description="No separate start token (<eos> is).", examples=[None]
    )
    pad_token: None = Field(default=None, description="No padding token.", examples=[None])
    unk_token: str = Field(description="Out-of-vocabulary words read as this.", examples=["<unk>"])
    unk_token_id: int = Field(description="Its id.", examples=[26])
    vocab_size: int = Field(description="Tokens in the vocabulary.", examples=[10000])
    model_max_length: int = Field(description="Tokens one request may hold.", examples=[8192])
    normalizer: dict[str, Any] = Field(
        description="The weights' normaliser.", examples=[{"name": "ptb", "lowercase": False}]
    )
    chat_template: None = Field(default=None, description="No chat template.", examples=[None])


# --- health and info --------------------------------------------------------------------------


class HealthResponse(BaseModel):
    """Liveness or readiness."""

    model_config = _RESPONSE

    status: Literal["alive", "ready"] = Field(description="alive or ready.", examples=["ready"])


class InfoResponse(BaseModel):
    """What is served and under which limits."""

    model_config = _RESPONSE

    version: str = Field(description="Service version.", examples=["0.1.0"])
    model: dict[str, Any] = Field(
        description="Architecture: vocab_size, wordvec_size, hidden_size, num_layers, tied; "
        "the normalizer the weights name ({name: ptb | plain, lowercase}).",
        examples=[{"architecture": "lstm", "vocab_size": 10000, "hidden_size": 650}],
    )
    weights: dict[str, Any] = Field(
        description="Weights directory name, sha256 of params.npz, dtype, format version.",
        examples=[{"name": "ptb-650-awd", "sha256": "ab12...", "dtype": "float16"}],
    )
    training: dict[str, Any] = Field(
        description="Training record from config.json.",
        examples=[{"epochs": 40, "batch_size": 20, "bptt": 35}],
    )
    metrics: dict[str, Any] = Field(
        description="Evaluation metrics from config.json (e.g. test_perplexity).",
        examples=[{"test_perplexity": 98.2}],
    )
    limits: dict[str, Any] = Field(
        description="Every request limit.",
        examples=[{"max_texts": 256, "max_new_tokens": 512}],
    )
    engine: dict[str, Any] = Field(
        description="Engine settings and counters: batching, queue, prefix-state cache "
        "(hits, misses, bytes), phase.",
        examples=[{"kind": "batching", "in_flight": 0, "queue_size": 256, "max_batch_size": 32}],
    )
    blas: dict[str, Any] = Field(
        default_factory=dict,
        description="numpy's BLAS: OpenBLAS kernel family (corename), threads, OPENBLAS_* "
        "variables.",
        examples=[{"numpy": "2.4.6", "corename": "Haswell", "threads": 2, "cpu_avx512": False}],
    )
