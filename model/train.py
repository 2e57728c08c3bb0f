"""Offline training of BetterRnnlm on PTB: Trainer and TrainConfig (the book's recipe).

SGD with global gradient-norm clipping, dropout active, truncated BPTT with the state
carried across windows within an epoch, validation with the book's batching after each
epoch and the learning rate divided by 4 when it does not improve (Zaremba et al. 2014;
the book's ch06/train_better_rnnlm.py). Runs are budgeted and resumable: a checkpoint
holds everything needed to continue bit for bit.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from model.inference import InferenceModel, corpus_logprobs
from model.rnnlm import BetterRnnlm, LSTMState, ModelConfig
from model.vocab import Vocab

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a run; the defaults are the book's 2x650 recipe."""

    batch_size: int = 20
    bptt: int = 35
    lr: float = 20.0
    clip: float = 0.25
    dropout: float = 0.5
    wordvec_size: int = 650
    hidden_size: int = 650
    num_layers: int = 2
    tied: bool = True
    epochs: int = 40
    # "plateau": lr / 4 when validation does not improve (the book); otherwise a comma
    # list of per-epoch learning rates, the last one repeated (a planned schedule).
    lr_schedule: str = "plateau"
    seed: int = 0
    log_interval: int = 100
    checkpoint_minutes: float = 10.0
    max_train_tokens: int | None = None  # a prefix of the training split (tests, smoke runs)
    max_valid_tokens: int | None = None

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The architecture this run trains."""
        return ModelConfig(
            vocab_size=vocab_size,
            wordvec_size=self.wordvec_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            tied=self.tied,
            dropout=self.dropout,
        )

    def planned_lrs(self) -> list[float] | None:
        """The per-epoch learning rates of a planned schedule, None for the plateau rule."""
        if self.lr_schedule == "plateau":
            return None
        try:
            lrs = [float(x) for x in self.lr_schedule.split(",")]
        except ValueError as e:
            raise ValueError(
                f"--lr-schedule must be 'plateau' or a comma list of numbers: {e}"
            ) from None
        if not lrs or any(not (x > 0) for x in lrs):
            raise ValueError("--lr-schedule learning rates must be positive")
        return lrs

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """From a checkpoint's JSON, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class TrainState:
    """Everything besides the parameters that a resumed run needs."""

    epoch: int = 0  # epochs completed
    iteration: int = 0  # windows done within the current epoch
    lr: float = 20.0
    best_valid_ppl: float = math.inf
    best_epoch: int = 0
    seconds: float = 0.0  # training wall time so far, across resumes
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per validation


def clip_grads(grads: list[np.ndarray], max_norm: float) -> float:
    """Scale gradients in place so their global L2 norm is at most max_norm; -> the norm."""
    total = math.sqrt(sum(float(np.vdot(g.ravel(), g.ravel())) for g in grads))
    rate = max_norm / (total + 1e-6)
    if rate < 1.0:
        for g in grads:
            g *= g.dtype.type(rate)
    return total


def sgd_update(params: list[np.ndarray], grads: list[np.ndarray], lr: float) -> None:
    """p -= lr * g in place (the gradients are consumed)."""
    for p, g in zip(params, grads, strict=True):
        g *= p.dtype.type(lr)
        p -= g


def window_batches(
    ids: np.ndarray, batch_size: int, bptt: int
) -> tuple[np.ndarray, np.ndarray]:
    """The book's training batching: row i reads its own stretch starting at i * jump.

    Returns inputs and targets of shape (iters, N, T); window k of row i covers
    xs[i*jump + k*T : i*jump + (k+1)*T] with xs = ids[:-1], ts = ids[1:].
    """
    xs, ts = ids[:-1], ids[1:]
    size = len(xs)
    iters = size // (batch_size * bptt)
    jump = size // batch_size
    starts = np.arange(batch_size)[:, None] * jump + np.arange(iters * bptt)[None, :]
    bx = xs[starts % size].reshape(batch_size, iters, bptt).transpose(1, 0, 2)  # (K, N, T)
    bt = ts[starts % size].reshape(batch_size, iters, bptt).transpose(1, 0, 2)  # (K, N, T)
    return np.ascontiguousarray(bx), np.ascontiguousarray(bt)


def perplexity(model: BetterRnnlm | InferenceModel, ids: np.ndarray) -> float:
    """Validation perplexity with the book's eval_perplexity batching (10 x 35)."""
    if isinstance(model, BetterRnnlm):
        model = InferenceModel.from_params(model.config, model.params)
    lp = corpus_logprobs(model, ids, book_batching=True)
    return float(np.exp(-lp.astype(np.float64).mean()))


def _atomic_write_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Write a folder's files into a sibling temp folder, then swap it in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write(tmp)
    old = target.with_name(target.name + ".old")
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        target.rename(old)
    tmp.rename(target)
    if old.exists():
        shutil.rmtree(old)


class Trainer:
    """Runs epochs of SGD on a BetterRnnlm with checkpoints, budget and logging."""

    def __init__(
        self,
        model: BetterRnnlm,
        config: TrainConfig,
        train_ids: np.ndarray,
        valid_ids: np.ndarray,
        checkpoint_dir: Path,
        log_path: Path | None = None,
        state: TrainState | None = None,
        rng: np.random.Generator | None = None,
        lstm_state: LSTMState | None = None,
        best_params: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.model = model
        self.config = config
        if config.max_train_tokens is not None:
            train_ids = train_ids[: config.max_train_tokens]
        if config.max_valid_tokens is not None:
            valid_ids = valid_ids[: config.max_valid_tokens]
        self.train_ids = train_ids
        self.valid_ids = valid_ids
        self.checkpoint_dir = Path(checkpoint_dir)
        self.log_path = log_path
        self.state = state or TrainState(lr=config.lr)
        self.rng = rng or np.random.default_rng(config.seed)
        self.lstm_state = lstm_state
        self.best_params = best_params
        self.bx, self.bt = window_batches(train_ids, config.batch_size, config.bptt)
        if len(self.bx) == 0:
            raise ValueError("training data is shorter than one batch of windows")

    # ----------------------------------------------------------------- persistence
    def save_checkpoint(self) -> None:
        """Atomically write params, best params, LSTM state, RNG state and counters."""

        def write(d: Path) -> None:
            np.savez(d / "params.npz", **self.model.params)  # type: ignore[arg-type]
            if self.best_params is not None:
                np.savez(d / "best.npz", **self.best_params)  # type: ignore[arg-type]
            if self.lstm_state is not None:
                np.savez(d / "lstm_state.npz", h=self.lstm_state.h, c=self.lstm_state.c)
            meta = {
                "checkpoint_version": CHECKPOINT_VERSION,
                "train_config": asdict(self.config),
                "model_config": self.model.config.to_dict(),
                "state": asdict(self.state),
                "rng": self.rng.bit_generator.state,
                "saved_at": time.time(),
            }
            (d / "trainer.json").write_text(json.dumps(meta, indent=1))

        _atomic_write_dir(self.checkpoint_dir, write)
        log.info(
            "checkpoint: epoch %d, iteration %d -> %s",
            self.state.epoch, self.state.iteration, self.checkpoint_dir,
        )

    @classmethod
    def resume(
        cls,
        checkpoint_dir: Path,
        train_ids: np.ndarray,
        valid_ids: np.ndarray,
        log_path: Path | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> Trainer:
        """Continue a run from its checkpoint folder exactly where it stopped."""
        checkpoint_dir = Path(checkpoint_dir)
        meta_path = checkpoint_dir / "trainer.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: no checkpoint to resume from")
        meta = json.loads(meta_path.read_text())
        if meta.get("checkpoint_version") != CHECKPOINT_VERSION:
            raise ValueError(f"{meta_path}: unknown checkpoint_version")
        tc = dict(meta["train_config"])
        tc.update(overrides or {})
        config = TrainConfig.from_dict(tc)
        mcfg = ModelConfig.from_dict(meta["model_config"])

        def load(name: str) -> dict[str, np.ndarray]:
            with np.load(checkpoint_dir / name, allow_pickle=False) as z:
                return {k: z[k].copy() for k in z.files}

        model = BetterRnnlm(mcfg, load("params.npz"))
        best = load("best.npz") if (checkpoint_dir / "best.npz").exists() else None
        lstm_state = None
        if (checkpoint_dir / "lstm_state.npz").exists():
            z = load("lstm_state.npz")
            lstm_state = LSTMState(z["h"], z["c"])
        rng = np.random.default_rng()
        rng.bit_generator.state = meta["rng"]
        state = TrainState(**meta["state"])
        return cls(
            model, config, train_ids, valid_ids, checkpoint_dir, log_path,
            state=state, rng=rng, lstm_state=lstm_state, best_params=best,
        )

    def _log(self, record: dict[str, Any]) -> None:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    # ----------------------------------------------------------------- training
    def train_step(self, xs: np.ndarray, ts: np.ndarray) -> float:
        """One window: forward with dropout, backward, clip, SGD; -> the mean loss."""
        model = self.model
        loss, self.lstm_state = model.forward(xs, ts, self.lstm_state, train=True, rng=self.rng)
        model.backward()
        names = list(model.params)
        grads = [model.grads[k] for k in names]
        clip_grads(grads, self.config.clip)
        sgd_update([model.params[k] for k in names], grads, self.state.lr)
        return loss

    def validate(self) -> float:
        """Validation perplexity with dropout off (book batching)."""
        return perplexity(self.model, self.valid_ids)

    def _end_epoch(self) -> None:
        """Validate, keep the best parameters, adjust the learning rate."""
        st, cfg = self.state, self.config
        t0 = time.perf_counter()
        ppl = self.validate()
        improved = ppl < st.best_valid_ppl
        if improved:
            st.best_valid_ppl, st.best_epoch = ppl, st.epoch + 1
            self.best_params = {k: v.copy() for k, v in self.model.params.items()}
        record = {
            "type": "valid", "epoch": st.epoch + 1, "valid_ppl": ppl, "lr": st.lr,
            "best_valid_ppl": st.best_valid_ppl, "improved": improved,
            "seconds": st.seconds, "valid_seconds": time.perf_counter() - t0,
        }
        st.history.append(record)
        self._log(record)
        log.info("epoch %d: valid ppl %.2f (best %.2f), lr %g", st.epoch + 1, ppl,
                 st.best_valid_ppl, st.lr)
        st.epoch += 1
        st.iteration = 0
        self.lstm_state = None
        planned = cfg.planned_lrs()
        if planned is not None:
            st.lr = planned[min(st.epoch, len(planned) - 1)]
        elif not improved:
            st.lr /= 4.0

    def fit(
        self,
        max_minutes: float | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        progress: bool = True,
        on_epoch_end: Callable[[Trainer], None] | None = None,
    ) -> bool:
        """Train until the configured epochs are done, the budget runs out or should_stop.

        Writes a checkpoint every ``checkpoint_minutes``, at each epoch end and when it
        stops early. Returns True when all epochs are done.
        """
        from tqdm import tqdm  # progress bars are I/O; kept out of the import path

        cfg, st = self.config, self.state
        planned = cfg.planned_lrs()
        if planned is not None and st.iteration == 0:
            st.lr = planned[min(st.epoch, len(planned) - 1)]
        start = time.monotonic()
        last_ckpt = start
        n_iters = len(self.bx)
        tokens_per_iter = cfg.batch_size * cfg.bptt
        while st.epoch < cfg.epochs:
            bar = tqdm(
                total=n_iters, initial=st.iteration, desc=f"epoch {st.epoch + 1}/{cfg.epochs}",
                unit="win", disable=not progress, dynamic_ncols=True, leave=False,
            )
            loss_sum, loss_n, t_int = 0.0, 0, time.perf_counter()
            while st.iteration < n_iters:
                t_step = time.perf_counter()
                loss = self.train_step(self.bx[st.iteration], self.bt[st.iteration])
                st.seconds += time.perf_counter() - t_step
                st.iteration += 1
                loss_sum += loss
                loss_n += 1
                bar.update(1)
                if loss_n == cfg.log_interval or st.iteration == n_iters:
                    dt = time.perf_counter() - t_int
                    avg = loss_sum / loss_n
                    record = {
                        "type": "train", "epoch": st.epoch + st.iteration / n_iters,
                        "iteration": st.iteration, "loss": avg, "ppl": math.exp(avg),
                        "lr": st.lr, "tokens_per_sec": loss_n * tokens_per_iter / dt,
                        "seconds": st.seconds,
                    }
                    self._log(record)
                    bar.set_postfix(loss=f"{avg:.3f}", ppl=f"{record['ppl']:.1f}",
                                    tok_s=f"{record['tokens_per_sec']:.0f}", lr=st.lr)
                    loss_sum, loss_n, t_int = 0.0, 0, time.perf_counter()
                now = time.monotonic()
                out_of_time = max_minutes is not None and now - start >= max_minutes * 60
                if should_stop() or out_of_time:
                    bar.close()
                    self.save_checkpoint()
                    log.info("stopped at epoch %d, iteration %d (%s)", st.epoch,
                             st.iteration, "budget" if out_of_time else "signal")
                    return False
                if now - last_ckpt >= cfg.checkpoint_minutes * 60:
                    self.save_checkpoint()
                    last_ckpt = now
            bar.close()
            self._end_epoch()
            self.save_checkpoint()
            if on_epoch_end is not None:
                on_epoch_end(self)
            last_ckpt = time.monotonic()
        return True


# --------------------------------------------------------------------- command line
def add_train_arguments(p: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    """Every TrainConfig field as a flag (None = the default, or the checkpoint's value)."""
    p.add_argument("--out", required=True, help="weights directory to write (best validation)")
    p.add_argument("--run-dir", default=None,
                   help="checkpoint and log folder (default ~/.cache/rnnlm/runs/<out name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --run-dir (or --init-from)")
    p.add_argument("--init-from", default=None,
                   help="with --resume and no checkpoint: start from a weights directory")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop cleanly with a checkpoint after this many minutes")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float32",
                   help="dtype of the written weights")
    p.add_argument("--no-final-eval", action="store_true",
                   help="skip measuring the four metrics when the run finishes")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.type in ("bool", bool):
            p.add_argument(flag, type=_parse_bool, default=None, metavar="{true,false}",
                           help=f"(default {default})")
        else:
            # f.type is a string here (postponed annotations): "int", "float | None", ...
            kind = {"int": int, "float": float, "str": str}[str(f.type).split(" ")[0]]
            p.add_argument(flag, type=kind, default=None, help=f"(default {default})")


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes"):
        return True
    if s.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _export(
    trainer: Trainer, out: Path, vocab: Vocab, dtype: Literal["float16", "float32"],
    data_dir: Path, finished: bool,
    run_dir: Path, final_eval: bool, progress: bool = True,
) -> None:
    """Write the best-validation parameters as a weights directory, with log and curve."""
    from model.checkpoint import save_weights, update_metrics
    from model.corpus import PTB_SHA256

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
    save_weights(out, trainer.model.config, trainer.best_params, vocab, dtype=dtype,
                 training=training, metrics={"valid_perplexity_book": st.best_valid_ppl})
    log_src = run_dir / "train_log.jsonl"
    if log_src.exists():
        shutil.copyfile(log_src, out / "train_log.jsonl")
        _plot(out / "train_log.jsonl", out / "curve.png")
    if finished and final_eval:
        from model.cli import all_metrics

        update_metrics(out, all_metrics(out, data_dir, progress=progress))
    log.info("wrote %s (%s)", out, "final" if finished else f"after epoch {st.epoch}")


def _plot(log_file: Path, png: Path) -> None:
    """Draw the curve when matplotlib is there; training does not need it."""
    from model.cli import main as cli_main

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    cli_main(["plot", str(log_file), "--out", str(png), "--quiet"])


def run_training(args: argparse.Namespace) -> dict[str, Any]:
    """The ``rnnlm train`` command: start or resume a run, export the best weights."""
    from model.checkpoint import load_weights
    from model.corpus import build_vocab, load_split, resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    out = Path(args.out)
    run_dir = Path(args.run_dir) if args.run_dir else (
        Path.home() / ".cache" / "rnnlm" / "runs" / out.resolve().name
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt, log_path = run_dir / "checkpoint", run_dir / "train_log.jsonl"
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    vocab = build_vocab(data_dir)
    train_ids = load_split(data_dir, "train", vocab)
    valid_ids = load_split(data_dir, "valid", vocab)
    if args.resume and (ckpt / "trainer.json").exists():
        trainer = Trainer.resume(ckpt, train_ids, valid_ids, log_path, overrides=given)
        log.info("resumed %s at epoch %d, iteration %d, lr %g", ckpt,
                 trainer.state.epoch, trainer.state.iteration, trainer.state.lr)
    elif args.resume and args.init_from:
        w = load_weights(args.init_from)
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
        trainer = Trainer(BetterRnnlm(w.config, params), config, train_ids, valid_ids, ckpt,
                          log_path, state=state, best_params={k: v.copy() for k, v in
                                                              params.items()},
                          rng=np.random.default_rng([config.seed, state.epoch]))
        log.info("no checkpoint in %s: starting from weights %s at epoch %d, lr %g",
                 ckpt, args.init_from, state.epoch, state.lr)
    else:
        if args.resume:
            log.warning("no checkpoint in %s: starting a new run", ckpt)
        elif (ckpt / "trainer.json").exists():
            raise ValueError(f"{ckpt} holds a checkpoint: pass --resume, or another --run-dir")
        config = TrainConfig.from_dict(given)
        rng = np.random.default_rng(config.seed)
        model = BetterRnnlm(config.model_config(len(vocab)), rng=rng)
        trainer = Trainer(model, config, train_ids, valid_ids, ckpt, log_path, rng=rng)
        log_path.unlink(missing_ok=True)
    log.info("run dir %s; config %s", run_dir, asdict(trainer.config))

    stop = {"flag": False}

    def on_signal(signum: int, frame: object) -> None:
        log.warning("signal %d: stopping after this step with a checkpoint", signum)
        stop["flag"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        finished = trainer.fit(
            max_minutes=args.max_minutes, should_stop=lambda: stop["flag"],
            progress=not args.quiet,
            on_epoch_end=lambda t: _export(t, out, vocab, args.dtype, data_dir, False,
                                           run_dir, False),
        )
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if finished:
        _export(trainer, out, vocab, args.dtype, data_dir, True, run_dir,
                not args.no_final_eval, progress=not args.quiet)
    st = trainer.state
    return {
        "status": "finished" if finished else "stopped",
        "epochs_done": st.epoch, "iteration": st.iteration, "lr": st.lr,
        "best_valid_perplexity_book": st.best_valid_ppl, "seconds": st.seconds,
        "checkpoint": str(ckpt), "out": str(out),
    }


def main(argv: list[str] | None = None) -> int:
    """python -m model.train: the same as ``rnnlm train``."""
    from model.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
