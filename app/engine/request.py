"""What a route hands the engine for a generation (GenerationRequest) and what it gets back
per token (EngineStep): the validated request becomes the queue entry, as in TGI's router."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from model.sampling import GenerationStep, SamplingParams


@dataclass(frozen=True)
class GenerationRequest:
    """A validated generation: prompt ids ([eos, tokens...]), limits, sampling and extras.

    ``seed`` seeds the request's own np.random.Generator (sampling only); ``stop_sequences``
    are token-id lists the output may end with (those that cannot match are dropped);
    ``top_n_tokens`` alternatives are reported per step; ``prefill_logprobs`` asks for the
    prompt's log-probabilities on the first step.
    """

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None
    stop_at_eos: bool = True
    stop_sequences: tuple[tuple[int, ...], ...] = ()
    top_n_tokens: int = 0
    prefill_logprobs: bool = False

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("the prompt needs at least one token (start with <eos>)")
        # lists in, tuples kept: the request is immutable and may be shared with a stream
        object.__setattr__(self, "prompt_ids", tuple(int(i) for i in self.prompt_ids))
        # one with no tokens, or longer than the output may be, can never match
        object.__setattr__(self, "stop_sequences", tuple(
            tuple(int(i) for i in s) for s in self.stop_sequences
            if 0 < len(s) <= self.max_new_tokens
        ))

    @classmethod
    def of(
        cls,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        sampling: SamplingParams | None = None,
        seed: int | None = None,
        stop_at_eos: bool = True,
        stop_sequences: Sequence[Sequence[int]] = (),
        **extras: int | bool,
    ) -> GenerationRequest:
        """The request from plain sequences (what tests and benchmarks have at hand)."""
        return cls(
            tuple(prompt_ids), max_new_tokens, sampling or SamplingParams(), seed,
            stop_at_eos, tuple(tuple(s) for s in stop_sequences), **extras,  # type: ignore[arg-type]
        )


@dataclass(frozen=True, eq=False)
class EngineStep(GenerationStep):
    """A generated token, with the extras a route may ask for."""

    # The top_n most likely (id, logprob) pairs of this step's distribution, best first.
    top_tokens: tuple[tuple[int, float], ...] = ()
    # On the first step only, when asked: log P of prompt tokens 1.. given those before.
    prefill_logprobs: np.ndarray | None = None
