"""The "awd" recipe in the Trainer: recipes, NT-ASGD's trigger and average, randomised BPTT,
weight decay, and a stopped AWD run resuming bit for bit (from an epoch end too)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.optim import Averager, add_weight_decay, should_start_averaging
from model.regularize import LockedDropout, Regularization
from model.run_state import load_run_state
from model.train import RECIPES, TrainConfig, Trainer
from tests.model.test_train import (
    make_trainer,
    resume_finishes_as_uninterrupted,
    small_config,
    toy_corpus,
)

AWD_SMALL = dict(
    recipe="awd", lr_schedule="constant", dropout_embedding=0.1, dropout_input=0.2,
    dropout_hidden=0.2, dropout_output=0.2, weight_drop=0.3, ar_alpha=2.0, tar_beta=1.0,
    weight_decay=1e-5, bptt_random=True, asgd_nonmono=1,
)


def test_the_book_recipe_is_the_default_and_awd_overridable() -> None:
    assert TrainConfig.from_recipe({}) == TrainConfig()
    assert TrainConfig().regularization() is None
    awd = TrainConfig.from_recipe({"recipe": "awd", "weight_drop": 0.3})
    assert awd.weight_drop == 0.3 and awd.bptt == RECIPES["awd"]["bptt"]
    assert awd.regularization() == Regularization(
        dropout_embedding=0.1, dropout_input=0.4, dropout_hidden=0.25, dropout_output=0.4,
        weight_drop=0.3, ar_alpha=2.0, tar_beta=1.0)
    with pytest.raises(ValueError, match="recipe"):
        TrainConfig.from_recipe({"recipe": "fancy"})


def test_nonmonotone_trigger() -> None:
    # Merity et al.: average once the loss is worse than the best before the last n
    assert not should_start_averaging([5.0, 4.0], 4.5, nonmono=2)  # too few evaluations
    assert should_start_averaging([5.0, 4.0, 3.0], 5.5, nonmono=2)
    assert not should_start_averaging([5.0, 4.0, 3.0], 4.9, nonmono=2)
    assert not should_start_averaging([5.0, 4.0, 3.0], 9.0, nonmono=0)


def test_averager_is_the_mean_of_the_iterates() -> None:
    r = np.random.default_rng(0)
    iterates = [{"w": r.standard_normal((3, 2))} for _ in range(7)]
    avg = Averager(iterates[0])
    for it in iterates[1:]:
        avg.update(it)
    np.testing.assert_allclose(avg.mean["w"], np.mean([i["w"] for i in iterates], axis=0))
    assert avg.steps == 7
    assert avg.mean["w"] is not iterates[0]["w"]


def test_weight_decay_adds_decay_times_the_weights() -> None:
    p, g = np.full(3, 2.0, np.float32), np.ones(3, np.float32)
    add_weight_decay([p], [g], 0.1)
    np.testing.assert_allclose(g, 1.2)


def test_awd_run_uses_every_part_and_averages(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, small_config(epochs=4, **AWD_SMALL))
    assert isinstance(tr.model.dropouts[0], LockedDropout)
    lengths: list[int] = []
    orig = tr.train_step

    def spy(xs: np.ndarray, ts: np.ndarray, s: float = 1.0) -> float:
        lengths.append(xs.shape[1])
        assert s == pytest.approx(xs.shape[1] / 10)  # the lr follows the window's length
        return orig(xs, ts, s)

    tr.train_step = spy  # type: ignore[method-assign]
    first = tr.validate()
    ppls = iter([50.0, 40.0, 55.0, 44.0])  # epoch 3 is worse than epoch 1: average from then

    def validate() -> float:
        real = Trainer.validate(tr)
        assert real < first
        return next(ppls)

    tr.validate = validate  # type: ignore[method-assign]
    assert tr.fit(progress=False)
    assert len(set(lengths)) > 3 and min(lengths) >= 5  # windows of varying length
    assert tr.state.asgd_start_epoch == 3
    assert tr.averager is not None and tr.state.asgd_steps == tr.averager.steps > 1
    # the average is not the last iterate, and validation reads the average
    w = "lstm.0.Wh"
    assert not np.array_equal(tr.averager.mean[w], tr.model.params[w])
    assert [h["averaged"] for h in tr.state.history] == [False, False, False, True]


def test_asgd_start_averages_from_that_epoch_while_validation_still_improves(
    tmp_path: Path,
) -> None:
    tr = make_trainer(tmp_path, small_config(epochs=3, **{**AWD_SMALL, "asgd_start": 2}))
    ppls = iter([50.0, 40.0, 30.0])  # always improving: the trigger never fires

    def validate() -> float:
        return next(ppls)

    tr.validate = validate  # type: ignore[method-assign]
    assert tr.fit(progress=False)
    assert tr.state.asgd_start_epoch == 2
    assert [h["averaged"] for h in tr.state.history] == [False, False, True]


def test_a_stopped_awd_run_resumes_bit_for_bit(tmp_path: Path) -> None:
    cfg = small_config(epochs=3, **AWD_SMALL)
    a = make_trainer(tmp_path / "a", cfg)
    assert a.fit(progress=False)
    b = make_trainer(tmp_path / "b", cfg)
    n_a = a.state.history
    steps = {"n": 0}

    def stop() -> bool:
        steps["n"] += 1
        return steps["n"] == 2 * b.n_windows + 3  # into epoch 3, after averaging began

    assert not b.fit(progress=False, should_stop=stop)
    ids = toy_corpus()
    c = Trainer.resume(tmp_path / "b" / "ckpt", ids[:3000], ids[3000:])
    assert (c.averager is None) == (b.averager is None)
    assert c.fit(progress=False)
    for k in a.model.params:
        assert np.array_equal(a.model.params[k], c.model.params[k]), k
    assert [h["valid_ppl"] for h in n_a] == [h["valid_ppl"] for h in c.state.history]
    assert a.best_params is not None and c.best_params is not None
    for k in a.best_params:
        assert np.array_equal(a.best_params[k], c.best_params[k]), k


def test_an_awd_run_stopped_at_an_epoch_end_keeps_best_as_the_average(tmp_path: Path) -> None:
    cfg = small_config(epochs=3, **{**AWD_SMALL, "asgd_start": 1})
    a = make_trainer(tmp_path / "a", cfg)
    assert a.fit(progress=False)
    b = make_trainer(tmp_path / "b", cfg)
    assert not b.fit(progress=False, stop_at_epoch_end=lambda: b.state.epoch == 2)
    sdir = tmp_path / "b" / "ckpt"
    best_from = json.loads((sdir / "trainer.json").read_text())["best_from"]
    improved = b.state.history[-1]["improved"]
    assert best_from == ("avg" if improved else "file")
    assert (sdir / "best.npz").exists() == (not improved)
    resume_finishes_as_uninterrupted(a, sdir)


def test_a_run_state_from_before_best_from_reads_best_npz(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, small_config(epochs=2, **AWD_SMALL))
    stop = lambda: tr.state.epoch == 1 and tr.state.iteration == 1  # noqa: E731  mid-epoch 2
    assert not tr.fit(progress=False, should_stop=stop)
    sdir = tmp_path / "ckpt"
    meta = json.loads((sdir / "trainer.json").read_text())
    assert meta["best_from"] == "file"
    del meta["best_from"]
    (sdir / "trainer.json").write_text(json.dumps(meta))
    rs = load_run_state(sdir)
    assert rs.best_params is not None and tr.best_params is not None
    for k in tr.best_params:
        assert np.array_equal(rs.best_params[k], tr.best_params[k]), k


@pytest.mark.parametrize("flag", ["--asgd-start", "--asgd-nonmono"])
def test_a_negative_averaging_count_stops_train_naming_the_flag(
    tmp_path: Path, flag: str, caplog: pytest.LogCaptureFixture
) -> None:
    from model.cli import main

    out = tmp_path / "w"
    rc = main(["train", "--recipe", "awd", flag, "-3", "--out", str(out),
               "--run-dir", str(tmp_path / "run"), "--data-dir", str(tmp_path), "--quiet"])
    assert rc == 2
    assert f"{flag} must be 0 or more, got -3" in caplog.text
    assert not out.exists()


def test_init_from_continues_a_finished_run_from_its_weights(tmp_path: Path) -> None:
    """AWD's fine-tuning stage: a new run from a weights folder starts from its parameters
    (to the last bit), its epoch, lr, best figure and hyperparameters, and averages from
    --asgd-start."""
    from model.cli import main
    from model.run import _from_weights
    from model.weights import load_weights

    text = (Path(__file__).parents[2] / "docs" / "examples" / "founding.txt").read_text()
    lines = text.splitlines()
    (tmp_path / "train.txt").write_text("\n".join(lines[:22]) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(lines[22:]) + "\n")
    own = ["--train-file", str(tmp_path / "train.txt"), "--valid-file",
           str(tmp_path / "valid.txt"), "--min-count", "2", "--quiet"]
    first = tmp_path / "w1"
    assert main(["train", *own, "--out", str(first), "--run-dir", str(tmp_path / "r1"),
                 "--recipe", "awd", "--wordvec-size", "16", "--hidden-size", "16",
                 "--batch-size", "4", "--bptt", "10", "--epochs", "2", "--lr", "5",
                 "--dtype", "float32"]) == 0
    w = load_weights(first)
    training = w.meta["training"]

    ids = np.arange(400, dtype=np.int32) % w.config.vocab_size
    tr = _from_weights(first, {"epochs": 4, "asgd_start": 3}, ids[:300], ids[300:],
                       tmp_path / "s", tmp_path / "log.jsonl")
    for k, v in w.params.items():
        assert np.array_equal(tr.model.params[k], v), k
    assert tr.state.epoch == training["epochs_done"] == 2
    assert tr.state.best_valid_ppl == training["best_valid_perplexity_book"]
    assert tr.config.hidden_size == 16 and tr.config.lr == 5.0 and tr.config.epochs == 4

    second = tmp_path / "w2"
    assert main(["train", *own, "--out", str(second), "--run-dir", str(tmp_path / "r2"),
                 "--init-from", str(first), "--resume", "--epochs", "4",
                 "--asgd-start", "3"]) == 0
    state = load_run_state(tmp_path / "r2" / "state")
    records = [json.loads(x) for x in (tmp_path / "r2" / "train_log.jsonl").open()]
    assert [r["epoch"] for r in records if r["type"] == "valid"] == [3, 4]
    assert [r["averaged"] for r in records if r["type"] == "valid"] == [False, True]
    assert state is not None
    assert load_weights(second).config == w.config
