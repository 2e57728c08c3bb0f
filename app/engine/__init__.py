"""The batching engine: one worker that batches every client's numpy work, as TGI and vLLM do.

Routes make one call each (``Engine.score``, ``next_word``, ``generate``, ``generate_all``).
The package's files, each one role: ``core`` (the Engine: admission and the worker),
``request`` (GenerationRequest, EngineStep), ``scheduler`` (ticks planned and delivered),
``compute`` (a tick's numpy work), ``jobs`` (the queue entries), ``cache`` (the prefix-state
cache) and ``errors``.
"""

from app.engine.cache import PrefixCache
from app.engine.core import INLINE_ROWS, Engine
from app.engine.errors import (
    DrainingError,
    EngineClosedError,
    OverloadedError,
    RequestTimeoutError,
)
from app.engine.jobs import STREAM_BUFFER
from app.engine.request import EngineStep, GenerationRequest
from app.engine.scheduler import DECODE_PREFILL_TOKENS

__all__ = [
    "DECODE_PREFILL_TOKENS",
    "INLINE_ROWS",
    "STREAM_BUFFER",
    "DrainingError",
    "Engine",
    "EngineClosedError",
    "EngineStep",
    "GenerationRequest",
    "OverloadedError",
    "PrefixCache",
    "RequestTimeoutError",
]
