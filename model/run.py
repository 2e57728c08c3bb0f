"""A training run as ``rnnlm train`` drives it: start or resume, stop on a signal or budget,
export the best-validation weights with their log and curve, then measure the final metrics."""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from model import run_state
from model.corpus import PTB_SHA256, build_vocab, load_split, resolve_data_dir
from model.evaluate import all_metrics
from model.plot import plot_curve
from model.rnnlm import BetterRnnlm
from model.train import TrainConfig, Trainer, TrainState
from model.vocab import Vocab
from model.weights import load_weights, save_weights, update_metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """What ``rnnlm train`` asks of a run besides its TrainConfig."""

    out: Path
    data_dir: str | Path | None = None
    run_dir: Path | None = None  # default ~/.cache/rnnlm/runs/<out name>
    resume: bool = False
    init_from: str | Path | None = None
    max_minutes: float | None = None
    dtype: Literal["float16", "float32"] = "float32"
    final_eval: bool = True
    progress: bool = True


def state_dir(run_dir: Path) -> Path:
    """Where a run keeps its resumable state (runs of earlier versions: "checkpoint")."""
    legacy = run_dir / "checkpoint"
    return legacy if run_state.exists(legacy) else run_dir / "state"


def export(trainer: Trainer, vocab: Vocab, opts: RunOptions, run_dir: Path,
           finished: bool) -> None:
    """Write the best-validation parameters as a weights directory, with log and curve."""
    if trainer.best_params is None:
        return
    st, cfg = trainer.state, trainer.config
    training = {
        "hyperparameters": asdict(cfg),
        "data_sha256": {k: PTB_SHA256[k] for k in ("train", "valid")},
        "epochs_done": st.epoch,
        "best_epoch": st.best_epoch,
        "best_valid_perplexity_book": st.best_valid_ppl,
        "learning_rate": st.lr,
        "seconds": round(st.seconds, 1),
        "finished": finished,
        "numpy": np.__version__,
    }
    out = opts.out
    save_weights(out, trainer.model.config, trainer.best_params, vocab, dtype=opts.dtype,
                 training=training, metrics={"valid_perplexity_book": st.best_valid_ppl})
    log_src = run_dir / "train_log.jsonl"
    if log_src.exists():
        shutil.copyfile(log_src, out / "train_log.jsonl")
        # the curve needs the optional matplotlib; training does not
        with contextlib.suppress(ImportError):
            plot_curve(out / "train_log.jsonl", out / "curve.png")
    if finished and opts.final_eval:
        update_metrics(out, all_metrics(out, opts.data_dir, progress=opts.progress))
    logger.info("wrote %s (%s)", out, "final" if finished else f"after epoch {st.epoch}")


def _from_weights(init_from: str | Path, given: dict[str, Any], train_ids: np.ndarray,
                  valid_ids: np.ndarray, sdir: Path, log_path: Path) -> Trainer:
    """A trainer that continues from a weights directory's parameters and recorded counters."""
    w = load_weights(init_from)
    tr = w.meta.get("training", {})
    base = dict(tr.get("hyperparameters", {}))
    base.update(given)
    config = TrainConfig.from_dict(base)
    params = {k: np.array(v, dtype=np.float32) for k, v in w.params.items()}
    state = TrainState(
        epoch=int(tr.get("epochs_done", 0)), lr=float(tr.get("learning_rate", config.lr)),
        best_valid_ppl=float(tr.get("best_valid_perplexity_book", math.inf)),
        best_epoch=int(tr.get("best_epoch", 0)), seconds=float(tr.get("seconds", 0.0)),
    )
    logger.info("no run state in %s: starting from weights %s at epoch %d, lr %g",
                sdir, init_from, state.epoch, state.lr)
    return Trainer(BetterRnnlm(w.config, params), config, train_ids, valid_ids, sdir, log_path,
                   state=state, best_params={k: v.copy() for k, v in params.items()},
                   rng=np.random.default_rng([config.seed, state.epoch]))


def run_training(opts: RunOptions, given: dict[str, Any]) -> dict[str, Any]:
    """Start or resume a run (given: the TrainConfig fields set on the command line)."""
    data_dir = resolve_data_dir(opts.data_dir)
    run_dir = opts.run_dir or Path.home() / ".cache" / "rnnlm" / "runs" / opts.out.resolve().name
    run_dir.mkdir(parents=True, exist_ok=True)
    sdir, log_path = state_dir(run_dir), run_dir / "train_log.jsonl"
    vocab = build_vocab(data_dir)
    train_ids = load_split(data_dir, "train", vocab)
    valid_ids = load_split(data_dir, "valid", vocab)
    if opts.resume and run_state.exists(sdir):
        trainer = Trainer.resume(sdir, train_ids, valid_ids, log_path, overrides=given)
        logger.info("resumed %s at epoch %d, iteration %d, lr %g", sdir,
                    trainer.state.epoch, trainer.state.iteration, trainer.state.lr)
    elif opts.resume and opts.init_from:
        trainer = _from_weights(opts.init_from, given, train_ids, valid_ids, sdir, log_path)
    else:
        if opts.resume:
            logger.warning("no run state in %s: starting a new run", sdir)
        elif run_state.exists(sdir):
            raise ValueError(f"{sdir} holds a run state: pass --resume, or another --run-dir")
        config = TrainConfig.from_recipe(given)
        rng = np.random.default_rng(config.seed)
        model = BetterRnnlm(config.model_config(len(vocab)), rng=rng)
        trainer = Trainer(model, config, train_ids, valid_ids, sdir, log_path, rng=rng)
        log_path.unlink(missing_ok=True)
    logger.info("run dir %s; config %s", run_dir, asdict(trainer.config))
    opts = RunOptions(**{**asdict(opts), "data_dir": data_dir})

    stop = {"flag": False}

    def on_signal(signum: int, frame: object) -> None:
        logger.warning("signal %d: stopping after this step, saving the run state", signum)
        stop["flag"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        finished = trainer.fit(
            max_minutes=opts.max_minutes, should_stop=lambda: stop["flag"],
            progress=opts.progress,
            on_epoch_end=lambda t: export(t, vocab, opts, run_dir, False),
        )
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if finished:
        export(trainer, vocab, opts, run_dir, True)
    st = trainer.state
    return {
        "status": "finished" if finished else "stopped",
        "epochs_done": st.epoch, "iteration": st.iteration, "lr": st.lr,
        "best_valid_perplexity_book": st.best_valid_ppl, "seconds": st.seconds,
        "checkpoint": str(sdir), "out": str(opts.out),
    }
