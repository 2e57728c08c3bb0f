"""Scoring texts in bulk, the Python API behind ``rnnlm score``: texts or input lines in,
``/perplexity``'s numbers out (docs/design.md, "Scoring files").

A ``Scorer`` holds one model and its normaliser. ``score`` takes texts; ``score_lines`` takes
raw input lines (text or JSON lines), the unit ``rnnlm score``, its workers and the Ray
engine all hand it, and gives back finished JSON lines in input order. Within such a chunk
the texts are fed together through the tree of their distinct prefixes
(``model.prefixes.score_prefixes``): what they share is computed once, padding never; a
text longer than ``SEGMENT_TOKENS`` is scored alone in segments with its state carried, so
memory stays bounded however long a document is. The numbers come from
``model.evaluate.text_result``, as the service's do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.evaluate import text_result, token_entries
from model.inference import InferenceModel, LSTMState, score
from model.normalize import Tokenizer
from model.prefixes import score_prefixes
from model.weights import LoadedWeights, load_weights

# A text with more predictions than this is scored alone, this many positions at a time.
SEGMENT_TOKENS = 4096

# The fields of an output object that the scorer writes itself (an input field of the same
# name would be overwritten, so it stops the run instead).
NUMBER_FIELDS = ("perplexity", "log_prob", "log10_prob", "num_tokens", "num_oov",
                 "perplexity_excl_oov")


@dataclass(frozen=True)
class ScoreOptions:
    """How input lines are read and what each output object holds."""

    format: str = "text"  # "text": a line is a text; "jsonl": a line is an object
    field: str = "text"  # jsonl: the field holding the text
    eos: bool = True  # predict the closing <eos> (the API's "eos")
    return_tokens: bool = False  # add "tokens": [{token, id, logprob, oov}]
    keep_text: bool = False  # copy the text into the output
    on_error: str = "stop"  # "stop": a bad line ends the run; "skip": an error object

    def __post_init__(self) -> None:
        if self.format not in ("text", "jsonl"):
            raise ValueError(f"--format must be text or jsonl, not {self.format!r}")
        if self.on_error not in ("stop", "skip"):
            raise ValueError(f"--on-error must be stop or skip, not {self.on_error!r}")
        if not self.field:
            raise ValueError("--field must name a field")

    def reserved(self) -> frozenset[str]:
        """Output fields an input field may not share a name with."""
        names = {"line", *NUMBER_FIELDS}
        if self.return_tokens:
            names.add("tokens")
        if self.format == "text" and self.keep_text:
            names.add("text")
        return frozenset(names)


class InputLineError(ValueError):
    """A line that cannot be scored; ``fatal`` ones stop the run even with --on-error skip."""

    def __init__(self, line: int, message: str, fatal: bool = False) -> None:
        super().__init__(f"line {line}: {message}")
        self.line, self.message, self.fatal = line, message, fatal

    def __reduce__(self) -> tuple[type[InputLineError], tuple[int, str, bool]]:
        # Pickled as its fields, so that it survives a trip from a worker process.
        return InputLineError, (self.line, self.message, self.fatal)


@dataclass(frozen=True)
class Parsed:
    """One input line read: its text and the fields copied to its output."""

    line: int
    text: str
    fields: dict[str, Any]


def parse_line(raw: bytes, line: int, opts: ScoreOptions) -> Parsed:
    """An input line (bytes, its line end included or not) as a Parsed; InputLineError else."""
    if raw.endswith(b"\n"):
        raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputLineError(line, f"not UTF-8 (byte {e.start + 1})") from None
    if opts.format == "text":
        return Parsed(line, s, {"text": s} if opts.keep_text else {})
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as e:
        raise InputLineError(line, f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise InputLineError(line, f"not a JSON object but {type(obj).__name__}")
    if opts.field not in obj:
        raise InputLineError(line, f'no field "{opts.field}"')
    text = obj[opts.field]
    if not isinstance(text, str):
        raise InputLineError(
            line, f'field "{opts.field}" is {type(text).__name__}, not a string')
    reserved = opts.reserved()
    clash = [k for k in obj if k in reserved and k != opts.field]
    if clash:
        raise InputLineError(
            line, f'the input field "{clash[0]}" has the name of an output field; rename it '
            "(nothing is overwritten)", fatal=True)
    fields = {k: v for k, v in obj.items() if k != opts.field or opts.keep_text}
    return Parsed(line, text, fields)


@dataclass
class Chunk:
    """What scoring a run of input lines gave: its output lines, ready to write."""

    text: str  # JSON lines, one per input line up to ``stop`` (or all of them)
    first_line: int
    last_line: int  # the last input line with an output line (first_line - 1: none)
    texts: int = 0
    tokens: int = 0
    errors: int = 0
    stop: InputLineError | None = None  # the line that ended the run, with nothing after it
    rows: list[dict[str, Any]] = field(default_factory=list)  # only when asked for


class Scorer:
    """One model with its normaliser, scoring texts as the service does."""

    def __init__(self, weights: LoadedWeights) -> None:
        self.weights = weights
        self.model = InferenceModel.from_params(weights.config, weights.params)
        self.vocab = weights.vocab
        self.tokenizer = Tokenizer(weights.vocab, weights.normalizer)

    @classmethod
    def load(cls, path: str | Path) -> Scorer:
        """A Scorer for a weights directory (verified as the service verifies it)."""
        return cls(load_weights(path))

    def logprobs(self, seqs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """log P(seq[t] | seq[:t]) for t >= 1 of each id sequence (each begins with <eos>)."""
        # The texts go through the tree of their distinct prefixes together, so a prefix
        # they share (a sentence opening, an n-best list's common part, a repeated line) is
        # computed once; a text longer than SEGMENT_TOKENS is scored alone in segments.
        long = {i for i, q in enumerate(seqs) if len(q) - 1 > SEGMENT_TOKENS}
        out = score_prefixes(self.model, [q[:1] if i in long else q for i, q in enumerate(seqs)])
        for i in long:
            out[i] = self._long(seqs[i])
        return out

    def _long(self, seq: Sequence[int]) -> np.ndarray:
        """One long sequence from the zero state, SEGMENT_TOKENS positions at a time, the
        state carried over."""
        parts = []
        state: LSTMState | None = None
        for a in range(0, len(seq) - 1, SEGMENT_TOKENS):
            b = min(a + SEGMENT_TOKENS, len(seq) - 1)
            (lp,), state = score(self.model, [seq[a:b]], [seq[a + 1 : b + 1]], state)
            parts.append(lp)
        return np.concatenate(parts)

    def _results(self, texts: Sequence[str], eos: bool, return_tokens: bool
                 ) -> list[dict[str, Any]]:
        """Each text's /perplexity numbers (and tokens)."""
        e = self.vocab.eos_id
        seqs = [[e, *self.tokenizer(t).ids, *([e] if eos else [])] for t in texts]
        out = []
        for seq, lp in zip(seqs, self.logprobs(seqs), strict=True):
            r = text_result(seq, lp, self.vocab.unk_id)
            if return_tokens:
                r["tokens"] = token_entries(seq, lp, self.vocab)
            out.append(r)
        return out

    def score(self, texts: Sequence[str], eos: bool = True, return_tokens: bool = False
              ) -> list[dict[str, Any]]:
        """Each text's numbers as /perplexity gives them: perplexity, log_prob, log10_prob,
        num_tokens, num_oov, perplexity_excl_oov (and tokens), in the order given."""
        return self._results(texts, eos, return_tokens)

    def score_lines(self, lines: Sequence[tuple[int, bytes]], opts: ScoreOptions,
                    keep_rows: bool = False) -> Chunk:
        """Score numbered raw input lines; their JSON output lines in input order.

        With on_error "stop" a bad line ends the chunk: the lines before it are scored and
        ``stop`` names it. With "skip" it gets ``{"line", "error"}`` and the rest go on.
        """
        parsed: list[Parsed | InputLineError] = []
        stop: InputLineError | None = None
        for n, raw in lines:
            try:
                parsed.append(parse_line(raw, n, opts))
            except InputLineError as e:
                if opts.on_error == "stop" or e.fatal:
                    stop = e
                    break
                parsed.append(e)
        good = [p for p in parsed if isinstance(p, Parsed)]
        results = iter(self._results([p.text for p in good], opts.eos, opts.return_tokens))
        rows: list[dict[str, Any]] = []
        tokens = errors = 0
        for p in parsed:
            if isinstance(p, InputLineError):
                rows.append({"line": p.line, "error": p.message})
                errors += 1
            else:
                r = next(results)
                rows.append({"line": p.line, **p.fields, **r})
                tokens += r["num_tokens"]
        first = lines[0][0] if lines else 0
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return Chunk(
            text=text, first_line=first, last_line=rows[-1]["line"] if rows else first - 1,
            texts=len(good), tokens=tokens, errors=errors, stop=stop,
            rows=rows if keep_rows else [],
        )


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The batch aggregate of scored rows, as /perplexity's: exp(-sum of sums / sum of N)."""
    lp = sum(r["log_prob"] for r in rows if "log_prob" in r)
    n = sum(r["num_tokens"] for r in rows if "num_tokens" in r)
    return {"perplexity": math.exp(-lp / n) if n else None, "log_prob": lp, "num_tokens": n}
