"""The served OpenAPI document's limits: each rule a route enforces from Settings or the weights
(lengths, counts, maxima, the token-id range), written into the request schemas.

The pydantic models carry the rules that hold whatever the configuration (types, ranges,
constants, "exactly one of"); the limits here follow the running server, so its /openapi.json
says what it accepts and schemathesis can hold it to that. Token counts (a request's tokens
after normalisation) have no JSON Schema keyword: they are stated in words, and in
``x-max-tokens``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.config import Settings
from app.openai_schemas import MAX_PROMPTS, MAX_STOP
from model.weights import WeightsError, read_model_config


def decimal_below(n: int) -> str:
    """A regular expression matching the decimal integers 0 .. n-1 (no sign, no leading zero)."""
    top = str(n - 1)
    width = len(top)
    alts = ["0"]
    if width == 2:  # 1 .. 9
        alts.append("[1-9]")
    elif width > 2:  # 1 .. 10**(width-1) - 1
        alts.append(f"[1-9][0-9]{{0,{width - 2}}}")
    for i, ch in enumerate(top):  # width digits, below top: equal up to i, smaller at i
        lo, hi = (1 if i == 0 else 0), int(ch) - 1
        if hi >= lo:
            digit = str(lo) if hi == lo else f"[{lo}-{hi}]"
            rest = width - i - 1
            alts.append(top[:i] + digit + (f"[0-9]{{{rest}}}" if rest else ""))
    if top != "0":
        alts.append(top)
    return "^(" + "|".join(alts) + ")$"


def vocab_size_of(weights_dir: Path) -> int | None:
    """The vocabulary size a weights directory's config.json names (None when unreadable)."""
    try:
        return read_model_config(weights_dir).vocab_size
    except WeightsError:
        return None


def _value(prop: dict[str, Any]) -> dict[str, Any]:
    """The schema of an optional property's value: its non-null anyOf branch, or itself."""
    branches = [b for b in prop.get("anyOf", []) if b.get("type") != "null"]
    return branches[0] if len(branches) == 1 else prop


def _branch(prop: dict[str, Any], type_: str, items_type: str | None = None) -> dict[str, Any]:
    """The anyOf branch of a union property with this type (and item type)."""
    for b in prop["anyOf"]:
        if b.get("type") == type_ and (
            items_type is None or b.get("items", {}).get("type") == items_type
        ):
            return b
    raise KeyError(f"no {type_} branch in {prop}")


def _texts(schema: dict[str, Any], max_items: int, chars: int) -> None:
    """A list of texts: at most max_items of at most chars characters."""
    schema["maxItems"] = max_items
    schema["items"]["maxLength"] = chars


def apply_limits(doc: dict[str, Any], settings: Settings, vocab_size: int | None) -> None:
    """Write settings' limits and the token-id range into doc's request schemas, in place."""
    s = doc["components"]["schemas"]
    chars = settings.max_text_chars
    tokens = settings.max_request_tokens
    ids = {"minimum": 0, **({"maximum": vocab_size - 1} if vocab_size else {})}

    def budget(schema: dict[str, Any], what: str) -> None:
        schema["x-max-tokens"] = tokens
        schema["description"] = f"{schema.get('description', '')} {what}".strip()

    # Seeds' bounds as exact integers: the document writes bounds as floats, and 2**64 - 1 as
    # a float is 2**64, which a client would then send.
    _value(s["GenerateParameters"]["properties"]["seed"])["maximum"] = 2**64 - 1
    seed = _value(s["CompletionRequest"]["properties"]["seed"])
    seed.pop("exclusiveMaximum", None)
    seed["maximum"] = 2**63 - 1

    # /generate, /generate_stream, POST /
    g = s["GenerateRequest"]["properties"]
    g["inputs"]["maxLength"] = chars
    budget(s["GenerateRequest"], f"The prompt's tokens plus max_new_tokens are at most {tokens}.")
    gp = s["GenerateParameters"]["properties"]
    _value(gp["max_new_tokens"])["maximum"] = settings.max_new_tokens
    _value(gp["top_n_tokens"])["maximum"] = settings.max_top_n_tokens
    _texts(_value(gp["stop"]), settings.max_stop_sequences, chars)

    # /perplexity
    p = s["PerplexityRequest"]["properties"]
    _texts(_value(p["texts"]), settings.max_texts, chars)
    _value(p["text"])["maxLength"] = chars
    p["top_k"]["maximum"] = settings.max_top_k
    budget(s["PerplexityRequest"], f"The texts hold at most {tokens} tokens to score.")

    # /next-word
    nw = s["NextWordRequest"]["properties"]
    nw["context"]["maxLength"] = chars
    nw["top_k"]["maximum"] = settings.max_top_k
    _texts(_value(nw["targets"]), settings.max_targets, chars)
    budget(s["NextWordRequest"], f"The context and its longest target hold at most {tokens} "
           "tokens.")

    # /tokenize, /detokenize
    for name in ("prompt", "text"):
        _value(s["TokenizeRequest"]["properties"][name])["maxLength"] = chars
    s["DetokenizeRequest"]["properties"]["tokens"]["items"].update(ids)

    # /v1/completions
    c = s["CompletionRequest"]["properties"]
    prompt = c["prompt"]
    _branch(prompt, "string")["maxLength"] = chars
    _texts(_branch(prompt, "array", "string"), MAX_PROMPTS, chars)
    _branch(prompt, "array", "string")["minItems"] = 1
    one = _branch(prompt, "array", "integer")
    one["maxItems"] = tokens
    one["items"].update(ids)
    many = _branch(prompt, "array", "array")
    many["minItems"], many["maxItems"] = 1, MAX_PROMPTS
    many["items"]["maxItems"] = tokens
    many["items"]["items"].update(ids)
    _value(c["max_tokens"])["maximum"] = settings.max_new_tokens
    _branch(c["stop"], "string")["maxLength"] = chars
    _texts(_branch(c["stop"], "array"), min(MAX_STOP, settings.max_stop_sequences), chars)
    if vocab_size:
        _value(c["logit_bias"])["propertyNames"] = {"pattern": decimal_below(vocab_size)}
    budget(s["CompletionRequest"], f"The prompts' tokens plus n x max_tokens for each are at "
           f"most {tokens} (max_model_len); a larger request is a 429, as OpenAI answers one "
           "over its token budget.")
