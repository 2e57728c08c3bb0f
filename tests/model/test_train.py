"""Trainer: loss falls, lr / 4 rule, clipping, book batching, resume equals uninterrupted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from model.rnnlm import BetterRnnlm, ModelConfig
from model.train import TrainConfig, Trainer, clip_grads, sgd_update, window_batches

V = 30


def toy_corpus(n: int = 4000, seed: int = 0) -> np.ndarray:
    """A learnable stream: mostly a fixed cycle with some noise."""
    r = np.random.default_rng(seed)
    ids = np.arange(n) % 7
    noise = r.random(n) < 0.1
    ids[noise] = r.integers(7, V, noise.sum())
    return ids.astype(np.int32)


def small_config(**kw: object) -> TrainConfig:
    base = dict(batch_size=4, bptt=10, lr=5.0, clip=0.25, dropout=0.2, wordvec_size=12,
                hidden_size=12, num_layers=2, tied=True, epochs=2, seed=3, log_interval=10)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def make_trainer(tmp_path: Path, cfg: TrainConfig, **kw: object) -> Trainer:
    rng = np.random.default_rng(cfg.seed)
    model = BetterRnnlm(cfg.model_config(V), rng=rng)
    ids = toy_corpus()
    return Trainer(model, cfg, ids[:3000], ids[3000:], tmp_path / "ckpt",
                   tmp_path / "log.jsonl", rng=rng, **kw)  # type: ignore[arg-type]


def resume_finishes_as_uninterrupted(a: Trainer, state_dir: Path) -> Trainer:
    """Resume the run in state_dir to its end and check it equals the uninterrupted run a."""
    ids = toy_corpus()
    c = Trainer.resume(state_dir, ids[:3000], ids[3000:])
    assert c.fit(progress=False)
    for k in a.model.params:
        assert np.array_equal(a.model.params[k], c.model.params[k]), k
    assert a.best_params is not None and c.best_params is not None
    for k in a.best_params:
        assert np.array_equal(a.best_params[k], c.best_params[k]), k
    assert a.state.best_valid_ppl == c.state.best_valid_ppl
    return c


def test_window_batches_follow_the_book() -> None:
    ids = np.arange(1000)
    bx, bt = window_batches(ids, batch_size=4, bptt=5)
    jump = 999 // 4
    assert bx.shape == (999 // 20, 4, 5)
    for k in (0, 3, 10):
        for i in range(4):
            for t in range(5):
                assert bx[k, i, t] == ids[(i * jump + k * 5 + t) % 999]
                assert bt[k, i, t] == ids[(i * jump + k * 5 + t) % 999 + 1]


def test_loss_falls(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, small_config(epochs=3))
    first = tr.validate()
    assert tr.fit(progress=False)
    assert tr.validate() < first / 3
    records = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert sum(r["type"] == "valid" for r in records) == 3


def test_clip_grads_scales_to_max_norm() -> None:
    g = [np.full(4, 3.0, dtype=np.float32), np.full(9, 4.0 / 3, dtype=np.float32)]
    norm = clip_grads(g, 0.25)  # global norm sqrt(36 + 16) over both arrays
    assert math.isclose(norm, math.sqrt(52), rel_tol=1e-6)
    assert math.isclose(math.sqrt(sum(float((x**2).sum()) for x in g)), 0.25, rel_tol=1e-4)
    small = [np.full(2, 0.01, dtype=np.float32)]
    clip_grads(small, 0.25)
    assert np.allclose(small[0], 0.01)  # below the threshold nothing changes


def test_sgd_update() -> None:
    p, g = np.ones(3, dtype=np.float32), np.full(3, 0.5, dtype=np.float32)
    sgd_update([p], [g], 2.0)
    assert np.allclose(p, 0.0)


def test_lr_divided_by_4_when_validation_does_not_improve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tr = make_trainer(tmp_path, small_config(epochs=5, lr=8.0, max_train_tokens=500))
    ppls = iter([100.0, 90.0, 95.0, 80.0, 85.0])
    monkeypatch.setattr(tr, "validate", lambda: next(ppls))
    lrs = []
    monkeypatch.setattr(tr, "save_state", lambda: lrs.append(tr.state.lr))
    tr.fit(progress=False)
    # lr after each epoch: kept, kept, /4, kept, /4
    assert lrs == [8.0, 8.0, 2.0, 2.0, 0.5]
    assert tr.state.best_valid_ppl == 80.0
    assert tr.state.best_epoch == 4


def test_planned_schedule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tr = make_trainer(tmp_path, small_config(epochs=4, lr_schedule="3,2", max_train_tokens=500))
    seen = []
    orig = tr.train_step
    monkeypatch.setattr(tr, "train_step",
                        lambda x, t, s=1.0: (seen.append(tr.state.lr), orig(x, t, s))[1])
    tr.fit(progress=False)
    assert sorted(set(seen), reverse=True) == [3.0, 2.0]
    assert seen[0] == 3.0 and seen[-1] == 2.0
    with pytest.raises(ValueError, match="lr-schedule"):
        small_config(lr_schedule="fast").planned_lrs()


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    cfg = small_config(epochs=2)
    a = make_trainer(tmp_path / "a", cfg)
    assert a.fit(progress=False)

    b = make_trainer(tmp_path / "b", cfg)
    steps = {"n": 0}

    def stop_after_97() -> bool:
        steps["n"] += 1
        return steps["n"] == 97  # mid-epoch 2 (74 windows an epoch)

    assert not b.fit(progress=False, should_stop=stop_after_97)
    assert b.state.epoch == 1 and b.state.iteration == 97 - len(b.bx)
    resume_finishes_as_uninterrupted(a, tmp_path / "b" / "ckpt")


def test_budget_stops_with_a_checkpoint(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, small_config(epochs=50))
    assert not tr.fit(max_minutes=0.0, progress=False)
    meta = json.loads((tmp_path / "ckpt" / "trainer.json").read_text())
    assert meta["state"]["iteration"] == 1


def test_dropout_is_on_in_training_steps(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, small_config(dropout=0.5))
    x, t = tr.bx[0], tr.bt[0]
    tr.model.forward(x, t, None, train=True, rng=tr.rng)
    assert tr.model.dropouts[0].mask is not None
    tr.model.forward(x, t, None, train=False)
    assert tr.model.dropouts[0].mask is None


def test_train_command_output_loads_in_evaluate(
    tmp_path: Path, ptb_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model.cli import main

    out = tmp_path / "w"
    rc = main(["train", "--data-dir", str(ptb_dir), "--out", str(out), "--run-dir",
               str(tmp_path / "run"), "--hidden-size", "16", "--wordvec-size", "16",
               "--epochs", "1", "--max-train-tokens", "14001", "--max-valid-tokens", "4000",
               "--no-final-eval", "--quiet", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["status"] == "finished"
    assert (out / "train_log.jsonl").exists()
    meta = json.loads((out / "config.json").read_text())
    assert meta["training"]["hyperparameters"]["hidden_size"] == 16
    assert meta["training"]["data_sha256"]["train"].startswith("fcea919f")
    assert main(["evaluate", str(out), "--data-dir", str(ptb_dir), "--split", "valid",
                 "--book-batching", "--json", "--quiet"]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert math.isfinite(ev["perplexity"]) and ev["perplexity"] < 10000
    # a second start without --resume refuses to overwrite the run
    assert main(["train", "--data-dir", str(ptb_dir), "--out", str(out), "--run-dir",
                 str(tmp_path / "run"), "--quiet"]) == 2
    _ = ModelConfig


def test_a_run_stopped_at_an_epoch_end_stores_best_once_and_resumes(tmp_path: Path) -> None:
    cfg = small_config(epochs=3)
    a = make_trainer(tmp_path / "a", cfg)
    assert a.fit(progress=False)
    b = make_trainer(tmp_path / "b", cfg)
    assert not b.fit(progress=False, stop_at_epoch_end=lambda: b.state.epoch == 1)
    sdir = tmp_path / "b" / "ckpt"
    assert b.state.epoch == 1 and b.state.iteration == 0
    # epoch 1 always improves on nothing: best == params, written once
    assert json.loads((sdir / "trainer.json").read_text())["best_from"] == "params"
    assert not (sdir / "best.npz").exists()
    ids = toy_corpus()
    r = Trainer.resume(sdir, ids[:3000], ids[3000:])
    assert r.best_params is not None and b.best_params is not None
    for k in b.best_params:
        assert np.array_equal(r.best_params[k], b.best_params[k]), k
    resume_finishes_as_uninterrupted(a, sdir)


def test_sigusr1_stops_rnnlm_train_at_the_epoch_end(
    tmp_path: Path, ptb_dir: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os
    import signal

    from model.cli import main

    orig = Trainer.train_step

    def step_and_signal(self: Trainer, xs: np.ndarray, ts: np.ndarray, s: float = 1.0) -> float:
        if self.state.epoch == 0 and self.state.iteration == 2:
            os.kill(os.getpid(), signal.SIGUSR1)  # the handler runs in this thread, now
        return orig(self, xs, ts, s)

    monkeypatch.setattr(Trainer, "train_step", step_and_signal)
    args = ["train", "--data-dir", str(ptb_dir), "--out", str(tmp_path / "w"), "--run-dir",
            str(tmp_path / "run"), "--hidden-size", "8", "--wordvec-size", "8",
            "--epochs", "3", "--max-train-tokens", "4001", "--max-valid-tokens", "1000",
            "--no-final-eval", "--quiet", "--json"]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the first epoch ran to its end, not one step further
    assert (r["status"], r["epochs_done"], r["iteration"]) == ("stopped", 1, 0)
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    assert main([*args[:-2], "--resume", "--quiet", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (r["status"], r["epochs_done"]) == ("finished", 3)


def test_a_resumed_run_logs_each_step_once(tmp_path: Path) -> None:
    """Steps done after the last run state (a machine that stopped mid-epoch) are done again
    on resume; the log keeps the repeat, not both."""
    import shutil

    cfg = small_config(epochs=2)
    a = make_trainer(tmp_path / "a", cfg)
    assert a.fit(progress=False)
    b = make_trainer(tmp_path / "b", cfg)
    assert not b.fit(progress=False, stop_at_epoch_end=lambda: b.state.epoch == 1)
    saved = tmp_path / "saved"
    shutil.copytree(tmp_path / "b" / "ckpt", saved)
    # the run goes on past the state, then its machine stops before the next one is written
    steps = {"n": 0}

    def stop_after_30() -> bool:
        steps["n"] += 1
        return steps["n"] == 30

    sdir, log = tmp_path / "b" / "ckpt", tmp_path / "b" / "log.jsonl"
    c = Trainer.resume(sdir, b.train_ids, b.valid_ids, log)
    assert not c.fit(progress=False, should_stop=stop_after_30)
    shutil.rmtree(sdir)
    shutil.copytree(saved, sdir)
    d = Trainer.resume(sdir, b.train_ids, b.valid_ids, log)
    assert d.fit(progress=False)

    def records(path: Path) -> list[dict[str, object]]:
        out = [json.loads(x) for x in path.read_text().splitlines()]
        for r in out:  # wall times differ between runs
            for k in ("tokens_per_sec", "valid_seconds", "seconds"):
                r.pop(k, None)
        return out

    # the same records, in the same order, as the run never stopped (losses to the last bit)
    assert records(log) == records(tmp_path / "a" / "log.jsonl")
