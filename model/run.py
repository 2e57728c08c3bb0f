"""A training run as ``rnnlm train`` drives it: read PTB or one's own text files, start or
resume, stop on a signal or budget, export the best-validation weights with their log and
curve, then measure the final metrics."""

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
from model.corpus import PTB_SHA256, CorpusError, build_vocab, load_split, resolve_data_dir
from model.evaluate import all_metrics, split_metrics
from model.inference import InferenceModel
from model.normalize import PTB, Normalizer
from model.plot import plot_curve
from model.rnnlm import BetterRnnlm
from model.textfile import count_file, encode_file, oov_share
from model.train import TrainConfig, Trainer, TrainState
from model.vocab import Vocab, check_vocab_limits, vocab_from_counts
from model.weights import CONFIG_FILE, load_weights, save_weights, update_metrics

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
    # a corpus of one's own instead of PTB (docs/design.md, "Training on a corpus of one's own")
    train_file: Path | None = None
    valid_file: Path | None = None
    test_file: Path | None = None
    normalizer: str | None = None  # plain for files, ptb for PTB
    lowercase: bool = False
    vocab_size: int | None = None
    min_count: int | None = None


@dataclass
class RunData:
    """The ids a run trains and validates on, with the vocabulary and normaliser they use."""

    vocab: Vocab
    normalizer: Normalizer
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray | None
    files: dict[str, Any]  # what config.json's "training" records about the data


def check_options(opts: RunOptions) -> None:
    """Refuse contradictory flags and an --out that must not be replaced (ValueError)."""
    files = (opts.train_file, opts.valid_file)
    if any(files) and not all(files):
        raise ValueError("--train-file and --valid-file go together")
    if opts.test_file and not opts.train_file:
        raise ValueError("--test-file needs --train-file and --valid-file")
    if not opts.train_file and (opts.vocab_size is not None or opts.min_count is not None
                                or opts.lowercase or opts.normalizer not in (None, "ptb")):
        raise ValueError("--normalizer, --lowercase, --vocab-size and --min-count apply to "
                         "--train-file; PTB keeps its own vocabulary and normaliser")
    check_vocab_limits(opts.vocab_size, opts.min_count)
    Normalizer(opts.normalizer or "plain", opts.lowercase)  # a bad name is a ValueError
    out = opts.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: --out exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / CONFIG_FILE).is_file():
        raise ValueError(f"{out}: --out exists, is not empty and is not a weights directory "
                         f"(no {CONFIG_FILE}); refusing to replace it")


def load_data(opts: RunOptions, batch_size: int, bptt: int) -> RunData:
    """PTB from --data-dir (the book's vocabulary order), or the user's files (streamed)."""
    if opts.train_file is None or opts.valid_file is None:
        data_dir = resolve_data_dir(opts.data_dir)
        vocab = build_vocab(data_dir)
        return RunData(vocab, PTB, load_split(data_dir, "train", vocab),
                       load_split(data_dir, "valid", vocab), None,
                       {"data_sha256": {k: PTB_SHA256[k] for k in ("train", "valid")}})
    norm = Normalizer(opts.normalizer or "plain", opts.lowercase)
    counts = count_file(opts.train_file, norm, "training", opts.progress)
    vocab = vocab_from_counts(counts.words, opts.vocab_size, opts.min_count)
    logger.info("%s: %d tokens in %d lines, %d distinct; vocabulary of %d", opts.train_file,
                counts.tokens, counts.lines, len(counts.words), len(vocab))
    train = encode_file(opts.train_file, vocab, norm, counts.tokens, "training", opts.progress)
    if len(train) - 1 < batch_size * bptt:
        raise CorpusError(f"{opts.train_file}: {len(train)} tokens, fewer than one batch "
                          f"window ({batch_size} x {bptt} + 1)")
    checked = {"valid": opts.valid_file, "test": opts.test_file}
    ids: dict[str, np.ndarray] = {}
    files = {"train": counts.info.to_dict()}
    for what, path in checked.items():
        if path is None:
            continue
        counted = count_file(path, norm, what)  # checks and hashes it
        files[what] = counted.info.to_dict()
        ids[what] = encode_file(path, vocab, norm, counted.tokens, what)
        if oov_share(ids[what], vocab) == 1.0:
            logger.warning("%s: every word of the %s file is outside the vocabulary (<unk>)",
                           path, what)
    return RunData(vocab, norm, train, ids["valid"], ids.get("test"),
                   {"files": files, "vocab_size": len(vocab)})


def state_dir(run_dir: Path) -> Path:
    """Where a run keeps its resumable state (runs of earlier versions: "checkpoint")."""
    legacy = run_dir / "checkpoint"
    return legacy if run_state.exists(legacy) else run_dir / "state"


def export(trainer: Trainer, data: RunData, opts: RunOptions, run_dir: Path,
           finished: bool) -> None:
    """Write the best-validation parameters as a weights directory, with log and curve."""
    if trainer.best_params is None:
        return
    st, cfg = trainer.state, trainer.config
    training = {
        "hyperparameters": asdict(cfg),
        **data.files,
        "epochs_done": st.epoch,
        "best_epoch": st.best_epoch,
        "best_valid_perplexity_book": st.best_valid_ppl,
        "learning_rate": st.lr,
        "seconds": round(st.seconds, 1),
        "finished": finished,
        "numpy": np.__version__,
    }
    out = opts.out
    save_weights(out, trainer.model.config, trainer.best_params, data.vocab, dtype=opts.dtype,
                 training=training, metrics={"valid_perplexity_book": st.best_valid_ppl},
                 normalizer=data.normalizer)
    log_src = run_dir / "train_log.jsonl"
    if log_src.exists():
        shutil.copyfile(log_src, out / "train_log.jsonl")
        # the curve needs the optional matplotlib; training does not
        with contextlib.suppress(ImportError):
            plot_curve(out / "train_log.jsonl", out / "curve.png")
    if finished and opts.final_eval:
        update_metrics(out, _final_metrics(out, data, opts))
    logger.info("wrote %s (%s)", out, "final" if finished else f"after epoch {st.epoch}")


def _final_metrics(out: Path, data: RunData, opts: RunOptions) -> dict[str, float]:
    """The four metrics of the written weights: PTB's splits, or the user's files."""
    if opts.train_file is None:
        return all_metrics(out, opts.data_dir, progress=opts.progress)
    w = load_weights(out)
    splits = {"valid": data.valid, **({"test": data.test} if data.test is not None else {})}
    return split_metrics(InferenceModel.from_params(w.config, w.params), splits, opts.progress)


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
    check_options(opts)
    new_config = TrainConfig.from_recipe(given)
    # a bad file stops here, before anything is written
    data = load_data(opts, new_config.batch_size, new_config.bptt)
    run_dir = opts.run_dir or Path.home() / ".cache" / "rnnlm" / "runs" / opts.out.resolve().name
    run_dir.mkdir(parents=True, exist_ok=True)
    sdir, log_path = state_dir(run_dir), run_dir / "train_log.jsonl"
    train_ids, valid_ids, vocab = data.train, data.valid, data.vocab
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
        config = new_config
        rng = np.random.default_rng(config.seed)
        model = BetterRnnlm(config.model_config(len(vocab)), rng=rng)
        trainer = Trainer(model, config, train_ids, valid_ids, sdir, log_path, rng=rng)
        log_path.unlink(missing_ok=True)
    logger.info("run dir %s; config %s", run_dir, asdict(trainer.config))

    stop = {"step": False, "epoch": False}

    def on_signal(signum: int, frame: object) -> None:
        logger.warning("signal %d: stopping after this step, saving the run state", signum)
        stop["step"] = True

    def on_usr1(signum: int, frame: object) -> None:
        # an epoch-end state has best == params: the smallest state to carry to a new machine
        logger.warning("signal %d: stopping at the end of this epoch", signum)
        stop["epoch"] = True

    handlers = {signal.SIGTERM: on_signal, signal.SIGINT: on_signal, signal.SIGUSR1: on_usr1}
    old = {s: signal.signal(s, h) for s, h in handlers.items()}
    try:
        finished = trainer.fit(
            max_minutes=opts.max_minutes, should_stop=lambda: stop["step"],
            progress=opts.progress,
            on_epoch_end=lambda t: export(t, data, opts, run_dir, False),
            stop_at_epoch_end=lambda: stop["epoch"],
        )
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if finished:
        export(trainer, data, opts, run_dir, True)
    st = trainer.state
    return {
        "status": "finished" if finished else "stopped",
        "epochs_done": st.epoch, "iteration": st.iteration, "lr": st.lr,
        "best_valid_perplexity_book": st.best_valid_ppl, "seconds": st.seconds,
        "checkpoint": str(sdir), "out": str(opts.out),
    }
