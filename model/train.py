"""The Trainer and its TrainConfig: SGD on a BetterRnnlm, the book's recipe by default.

The "book" recipe: SGD with global gradient-norm clipping, dropout active, truncated BPTT
with the state carried across windows within an epoch, validation with the book's batching
after each epoch and the learning rate divided by 4 when it does not improve (Zaremba et
al. 2014; the book's ch06/train_better_rnnlm.py). The "awd" recipe adds AWD-LSTM's
regularisation (model.regularize), weight decay, a randomised BPTT length and NT-ASGD
(model.optim), after Merity et al. 2017; every value of either is overridable. Runs are
budgeted and resumable: the run state holds everything needed to continue bit for bit
(``model.run_state``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from model.atomic import replace_file
from model.evaluate import book_perplexity
from model.inference import InferenceModel
from model.optim import (
    Averager,
    add_weight_decay,
    clip_grads,
    sgd_update,
    should_start_averaging,
)
from model.regularize import Regularization
from model.rnnlm import BetterRnnlm, LSTMState, ModelConfig
from model.run_state import RunState, load_run_state, save_run_state

__all__ = ["RECIPES", "TrainConfig", "TrainState", "Trainer", "clip_grads", "sgd_update",
           "stream_rows", "window_batches"]

logger = logging.getLogger(__name__)


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
    # "book" or "awd": which defaults the fields below take (RECIPES); informational after
    recipe: str = "book"
    # AWD-LSTM's regularisation (model.regularize.Regularization); any of these non-zero
    # replaces the book's per-element dropout by locked dropout at the same three places
    dropout_embedding: float = 0.0
    dropout_input: float = 0.0
    dropout_hidden: float = 0.0
    dropout_output: float = 0.0
    weight_drop: float = 0.0
    ar_alpha: float = 0.0
    tar_beta: float = 0.0
    weight_decay: float = 0.0
    # a window length drawn per step around bptt, the lr scaled by it (Merity et al. 2017)
    bptt_random: bool = False
    # NT-ASGD: average the weights once validation has not improved for this many epochs
    # (0: never)
    asgd_nonmono: int = 0
    # NT-ASGD at the latest after this epoch, whether or not the trigger fired (0: only the
    # trigger): a run of a fixed budget gets its average even while validation still improves
    asgd_start: int = 0

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"--recipe must be one of {sorted(RECIPES)}, got {self.recipe!r}")
        self.regularization()  # checks the rates
        self.planned_lrs()
        # counts where a negative number has no meaning: refused rather than read as 0
        for name in ("asgd_start", "asgd_nonmono"):
            if getattr(self, name) < 0:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be 0 or more, got {getattr(self, name)}")

    def regularization(self) -> Regularization | None:
        """AWD-LSTM's training-time regularisation, or None for the book's dropout."""
        reg = Regularization(
            dropout_embedding=self.dropout_embedding, dropout_input=self.dropout_input,
            dropout_hidden=self.dropout_hidden, dropout_output=self.dropout_output,
            weight_drop=self.weight_drop, ar_alpha=self.ar_alpha, tar_beta=self.tar_beta,
        )
        return None if reg == Regularization() else reg

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
        """The per-epoch learning rates of a planned schedule, None for plateau or constant."""
        if self.lr_schedule in ("plateau", "constant"):
            return None
        try:
            lrs = [float(x) for x in self.lr_schedule.split(",")]
        except ValueError as e:
            raise ValueError(
                f"--lr-schedule must be 'plateau', 'constant' or a comma list of numbers: {e}"
            ) from None
        if not lrs or any(not (x > 0) for x in lrs):
            raise ValueError("--lr-schedule learning rates must be positive")
        return lrs

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """From a run state's JSON, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_recipe(cls, given: dict[str, Any]) -> TrainConfig:
        """given's recipe ("book" by default) with given's values over its defaults."""
        recipe = given.get("recipe", "book")
        if recipe not in RECIPES:
            raise ValueError(f"--recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
        return cls.from_dict({**RECIPES[recipe], **given, "recipe": recipe})


# The recipes' defaults over TrainConfig's own (the book's). "awd" follows Merity et al.
# 2017's PTB settings for their 3-layer model, chosen for 2 x 650 tied by the pilot recorded
# in docs/training.md.
RECIPES: dict[str, dict[str, Any]] = {
    "book": {},
    "awd": {
        # 90 epochs: about 15 hours of 2 x 650 steps on this 2-core machine (bench/README.md)
        "bptt": 70, "lr": 30.0, "lr_schedule": "constant", "epochs": 90, "dropout": 0.4,
        "dropout_embedding": 0.1, "dropout_input": 0.4, "dropout_hidden": 0.25,
        "dropout_output": 0.4, "weight_drop": 0.5, "ar_alpha": 2.0, "tar_beta": 1.0,
        "weight_decay": 1.2e-6, "bptt_random": True, "asgd_nonmono": 5,
    },
}


@dataclass
class TrainState:
    """Everything besides the parameters that a resumed run needs."""

    epoch: int = 0  # epochs completed
    iteration: int = 0  # windows done within the current epoch
    position: int = 0  # with bptt_random: tokens of each row read within the epoch
    asgd_start_epoch: int | None = None  # NT-ASGD: the epoch after which averaging began
    asgd_steps: int = 0  # iterates in the average
    lr: float = 20.0
    best_valid_ppl: float = math.inf
    best_epoch: int = 0
    seconds: float = 0.0  # training wall time so far, across resumes
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per validation


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


def stream_rows(ids: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The book's layout as whole rows, for windows of varying length: row i reads
    xs[i*jump : (i+1)*jump] (jump = len(xs) // N). -> inputs and targets, (N, jump)."""
    xs, ts = ids[:-1], ids[1:]
    jump = len(xs) // batch_size
    bx = xs[: jump * batch_size].reshape(batch_size, jump)  # (N, J)
    bt = ts[: jump * batch_size].reshape(batch_size, jump)  # (N, J)
    return np.ascontiguousarray(bx), np.ascontiguousarray(bt)


def perplexity(model: BetterRnnlm | InferenceModel, ids: np.ndarray) -> float:
    """Validation perplexity with dropout off and the book's batching (10 x 35)."""
    if isinstance(model, BetterRnnlm):
        model = InferenceModel.from_params(model.config, model.params)
    return book_perplexity(model, ids)


class Trainer:
    """Runs epochs of SGD on a BetterRnnlm with resumable run state, budget and logging."""

    def __init__(
        self,
        model: BetterRnnlm,
        config: TrainConfig,
        train_ids: np.ndarray,
        valid_ids: np.ndarray,
        state_dir: Path,
        log_path: Path | None = None,
        state: TrainState | None = None,
        rng: np.random.Generator | None = None,
        lstm_state: LSTMState | None = None,
        best_params: dict[str, np.ndarray] | None = None,
        avg_params: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.model = model
        self.config = config
        # the recipe's regularisation acts through the model (training forward only)
        model.set_regularization(config.regularization())
        if config.max_train_tokens is not None:
            train_ids = train_ids[: config.max_train_tokens]
        if config.max_valid_tokens is not None:
            valid_ids = valid_ids[: config.max_valid_tokens]
        self.train_ids = train_ids
        self.valid_ids = valid_ids
        self.state_dir = Path(state_dir)
        self.log_path = log_path
        self.state = state or TrainState(lr=config.lr)
        self.rng = rng or np.random.default_rng(config.seed)
        self.lstm_state = lstm_state
        self.best_params = best_params
        self.averager: Averager | None = None
        if avg_params is not None:
            self.averager = Averager(avg_params, steps=self.state.asgd_steps)
        if config.bptt_random:
            self.bx, self.bt = stream_rows(train_ids, config.batch_size)  # (N, J)
            self.n_windows = self.bx.shape[1] // config.bptt
        else:
            self.bx, self.bt = window_batches(train_ids, config.batch_size, config.bptt)
            self.n_windows = len(self.bx)
        if self.n_windows == 0:
            raise ValueError("training data is shorter than one batch of windows")

    # ----------------------------------------------------------------- persistence
    def save_state(self) -> None:
        """Atomically write the run state (params, best params, LSTM state, RNG, counters)."""
        save_run_state(self.state_dir, RunState(
            params=self.model.params,
            best_params=self.best_params,
            avg_params=self.averager.mean if self.averager is not None else None,
            lstm_state=self.lstm_state,
            train_config=asdict(self.config),
            model_config=self.model.config.to_dict(),
            counters=asdict(self.state),
            rng=dict(self.rng.bit_generator.state),
        ))
        logger.info(
            "run state: epoch %d, iteration %d -> %s",
            self.state.epoch, self.state.iteration, self.state_dir,
        )

    @classmethod
    def resume(
        cls,
        state_dir: Path,
        train_ids: np.ndarray,
        valid_ids: np.ndarray,
        log_path: Path | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> Trainer:
        """Continue a run from its run-state folder exactly where it stopped."""
        rs = load_run_state(Path(state_dir))
        tc = dict(rs.train_config)
        tc.update(overrides or {})
        rng = np.random.default_rng()
        rng.bit_generator.state = rs.rng
        if log_path is not None and (n := trim_log(Path(log_path), rs.counters["seconds"])):
            logger.info("dropped %d log records of steps after the run state", n)
        return cls(
            BetterRnnlm(ModelConfig.from_dict(rs.model_config), rs.params),
            TrainConfig.from_dict(tc), train_ids, valid_ids, Path(state_dir), log_path,
            state=TrainState(**rs.counters), rng=rng, lstm_state=rs.lstm_state,
            best_params=rs.best_params, avg_params=rs.avg_params,
        )

    def _log(self, record: dict[str, Any]) -> None:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    # ----------------------------------------------------------------- training
    def train_step(self, xs: np.ndarray, ts: np.ndarray, lr_scale: float = 1.0) -> float:
        """One window: forward with dropout, backward, clip, weight decay, SGD (and the
        average, once NT-ASGD averages); -> the mean cross-entropy."""
        model = self.model
        loss, self.lstm_state = model.forward(xs, ts, self.lstm_state, train=True, rng=self.rng)
        model.backward()
        names = list(model.params)
        grads = [model.grads[k] for k in names]
        params = [model.params[k] for k in names]
        clip_grads(grads, self.config.clip)
        add_weight_decay(params, grads, self.config.weight_decay)
        sgd_update(params, grads, self.state.lr * lr_scale)
        if self.averager is not None:
            self.averager.update(model.params)
            self.state.asgd_steps = self.averager.steps
        return loss

    def _next_window(self) -> tuple[np.ndarray, np.ndarray, float] | None:
        """The next window of this epoch (inputs, targets, lr scale), or None at its end."""
        st, cfg = self.state, self.config
        if not cfg.bptt_random:
            if st.iteration >= self.n_windows:
                return None
            return self.bx[st.iteration], self.bt[st.iteration], 1.0
        J = self.bx.shape[1]
        if J - st.position < 5:
            return None
        # Merity et al. 2017: mostly around bptt, sometimes half of it; the lr follows the
        # length so that a short window does not weigh as much as a long one
        base = cfg.bptt if self.rng.random() < 0.95 else cfg.bptt / 2
        seq = max(5, int(self.rng.normal(base, 5)))
        seq = min(seq, cfg.bptt + 20, J - st.position)
        a, b = st.position, st.position + seq
        st.position = b
        return self.bx[:, a:b], self.bt[:, a:b], seq / cfg.bptt

    def _epoch_fraction(self) -> float:
        """How much of this epoch is done."""
        if self.config.bptt_random:
            return self.state.position / self.bx.shape[1]
        return self.state.iteration / self.n_windows

    def _epoch_done(self) -> bool:
        """True when the epoch has no window left."""
        if self.config.bptt_random:
            return self.bx.shape[1] - self.state.position < 5
        return self.state.iteration >= self.n_windows

    def validate(self) -> float:
        """Validation perplexity with dropout off (book batching; one stream for a validation
        text shorter than its 10 x 35), of the average once NT-ASGD averages."""
        params = self.averager.mean if self.averager is not None else self.model.params
        return perplexity(InferenceModel.from_params(self.model.config, params), self.valid_ids)

    def _end_epoch(self) -> None:
        """Validate, keep the best parameters, adjust the learning rate."""
        st, cfg = self.state, self.config
        t0 = time.perf_counter()
        ppl = self.validate()
        improved = ppl < st.best_valid_ppl
        averaged = self.averager is not None
        if improved:
            st.best_valid_ppl, st.best_epoch = ppl, st.epoch + 1
            source = self.averager.mean if self.averager is not None else self.model.params
            self.best_params = {k: v.astype(np.float32) for k, v in source.items()}
        previous = [h["valid_ppl"] for h in st.history]
        due = cfg.asgd_start > 0 and st.epoch + 1 >= cfg.asgd_start
        if not averaged and (due or should_start_averaging(previous, ppl, cfg.asgd_nonmono)):
            self.averager = Averager(self.model.params)
            st.asgd_start_epoch, st.asgd_steps = st.epoch + 1, 1
            logger.info("NT-ASGD: averaging the weights from epoch %d on", st.epoch + 2)
        record = {
            "type": "valid", "epoch": st.epoch + 1, "valid_ppl": ppl, "lr": st.lr,
            "best_valid_ppl": st.best_valid_ppl, "improved": improved, "averaged": averaged,
            "seconds": st.seconds, "valid_seconds": time.perf_counter() - t0,
        }
        st.history.append(record)
        self._log(record)
        logger.info("epoch %d: valid ppl %.2f (best %.2f), lr %g", st.epoch + 1, ppl,
                 st.best_valid_ppl, st.lr)
        st.epoch += 1
        st.iteration = st.position = 0
        self.lstm_state = None
        planned = cfg.planned_lrs()
        if planned is not None:
            st.lr = planned[min(st.epoch, len(planned) - 1)]
        elif cfg.lr_schedule == "plateau" and not improved:
            st.lr /= 4.0

    def fit(
        self,
        max_minutes: float | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        progress: bool = True,
        on_epoch_end: Callable[[Trainer], None] | None = None,
        stop_at_epoch_end: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Train until the configured epochs are done, the budget runs out, should_stop
        (after the current step) or stop_at_epoch_end (after the current epoch).

        Writes the run state every ``checkpoint_minutes``, at each epoch end and when it
        stops early. Returns True when all epochs are done.
        """
        from tqdm import tqdm  # progress bars are I/O; kept out of the import path

        cfg, st = self.config, self.state
        planned = cfg.planned_lrs()
        if planned is not None and st.iteration == 0:
            st.lr = planned[min(st.epoch, len(planned) - 1)]
        start = time.monotonic()
        last_ckpt = start
        n_iters = self.n_windows
        while st.epoch < cfg.epochs:
            bar = tqdm(
                total=n_iters, initial=st.iteration, desc=f"epoch {st.epoch + 1}/{cfg.epochs}",
                unit="win", disable=not progress, dynamic_ncols=True, leave=False,
            )
            loss_sum, loss_n, tokens, t_int = 0.0, 0, 0, time.perf_counter()
            while (window := self._next_window()) is not None:
                t_step = time.perf_counter()
                xs, ts, lr_scale = window
                loss = self.train_step(xs, ts, lr_scale)
                st.seconds += time.perf_counter() - t_step
                st.iteration += 1
                loss_sum += loss
                loss_n += 1
                tokens += xs.size
                bar.update(1)
                last = self._epoch_done()
                if loss_n == cfg.log_interval or last:
                    dt = time.perf_counter() - t_int
                    avg = loss_sum / loss_n
                    record = {
                        "type": "train", "epoch": st.epoch + self._epoch_fraction(),
                        "iteration": st.iteration, "loss": avg, "ppl": math.exp(avg),
                        "lr": st.lr, "tokens_per_sec": tokens / dt,
                        "seconds": st.seconds,
                    }
                    self._log(record)
                    bar.set_postfix(loss=f"{avg:.3f}", ppl=f"{record['ppl']:.1f}",
                                    tok_s=f"{record['tokens_per_sec']:.0f}", lr=st.lr)
                    loss_sum, loss_n, tokens, t_int = 0.0, 0, 0, time.perf_counter()
                now = time.monotonic()
                out_of_time = max_minutes is not None and now - start >= max_minutes * 60
                if should_stop() or out_of_time:
                    bar.close()
                    self.save_state()
                    logger.info("stopped at epoch %d, iteration %d (%s)", st.epoch,
                             st.iteration, "budget" if out_of_time else "signal")
                    return False
                if now - last_ckpt >= cfg.checkpoint_minutes * 60:
                    self.save_state()
                    last_ckpt = now
            bar.close()
            self._end_epoch()
            self.save_state()
            if on_epoch_end is not None:
                on_epoch_end(self)
            last_ckpt = time.monotonic()
            if stop_at_epoch_end() and st.epoch < cfg.epochs:
                logger.info("stopped at the end of epoch %d (signal)", st.epoch)
                return False
        return True


def trim_log(log_path: Path, seconds: float) -> int:
    """Drop the log's records of training done after a run state (its ``seconds``) -> dropped.

    A run resumed from its last run state repeats the steps logged after it; without this
    its log would hold them twice. The log is replaced atomically.
    """
    if not log_path.exists():
        return 0
    lines = log_path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [x for x in lines if x.strip() and json.loads(x).get("seconds", 0.0) <= seconds]
    if len(kept) < len(lines):
        replace_file(log_path, "".join(kept).encode("utf-8"))
    return len(lines) - len(kept)
