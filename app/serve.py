"""The ``rnnlm-serve`` command: arguments, Settings, loading the weights, and uvicorn with a drain.

SIGTERM exits 0 on every path: before uvicorn runs (while the weights load) it stops the
start-up, under uvicorn it drains (DrainingServer), and after uvicorn returns it is ignored,
as the process is already on its way out.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

logger = logging.getLogger(__name__)


def _stop_starting(signum: int, frame: FrameType | None) -> None:
    """SIGTERM before uvicorn has its handlers: stop the start-up, exit 0."""
    raise SystemExit(0)


def _parser() -> argparse.ArgumentParser:
    """rnnlm-serve's arguments; each overrides its RNNLM_* variable."""
    p = argparse.ArgumentParser(
        prog="rnnlm-serve",
        description="Serve the LSTM language model over HTTP. Every setting can also be set "
        "with an RNNLM_* environment variable (RNNLM_WEIGHTS, RNNLM_PORT, RNNLM_MAX_TEXTS, ...).",
    )
    p.add_argument("--host", help="address to bind (default 127.0.0.1, RNNLM_HOST)")
    p.add_argument("--port", type=int, help="port (default 8000, RNNLM_PORT)")
    p.add_argument("--weights",
                   help="weights directory (default weights/ptb-650-awd, RNNLM_WEIGHTS)")
    p.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level (default info, RNNLM_LOG_LEVEL)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The rnnlm-serve command: load the weights, then run uvicorn on create_app's app."""
    # Handlers first, the heavy imports (numpy, FastAPI, the model) after them: a SIGTERM
    # while the process starts stops it with status 0, not by the signal.
    signal.signal(signal.SIGTERM, _stop_starting)
    from pydantic import ValidationError

    from app import server
    from app.config import Settings
    from app.main import create_app
    from model.weights import WeightsError, load_weights

    parser = _parser()
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in (
            ("host", args.host),
            ("port", args.port),
            ("weights", args.weights),
            ("log_level", args.log_level),
        )
        if v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        parser.error(str(e))
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Loading before uvicorn starts turns a bad weights file into one log line and exit 2
    # (a failing lifespan would print a traceback through uvicorn).
    logger.debug("loading weights %s", settings.weights)
    try:
        weights = load_weights(settings.weights)
    except WeightsError as e:
        logger.error("cannot load weights: %s", e)
        return 2
    logger.info("starting: weights %s loaded", weights.path)
    server.run(create_app(settings, weights), settings)
    # uvicorn restored the default handlers; a late SIGTERM must not turn exit 0 into -15
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return 0
