"""Training throughput: model.train's step against the same model and recipe in PyTorch.

One step = one 20x35 window of PTB train (the book's batching, state carried): forward
with dropout 0.5, backward, global gradient-norm clip 0.25, SGD lr 20. Ours is
``Trainer.train_step`` itself; torch's is nn.Embedding + nn.Dropout + nn.LSTM(2 layers,
dropout between) + tied nn.Linear, F.cross_entropy, clip_grad_norm_ and optim.SGD.
Before timing, with dropout 0 and the same weights, both must give the same loss and
gradients and the same weights after one full step (float64, tight) and the same loss in
float32.

Run: .venv-bench/bin/python -m bench.train [--smoke] (see bench/README.md).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    CpuMonitor,
    Ratio,
    base_parser,
    build_torch_lm,
    find_data_dir,
    finish,
    interleave,
    pause_of,
    print_table,
    ptb_vocab,
    random_params,
    rate,
    sizes_of,
    start,
    torch_as_ours,
    verdict,
)
from model.corpus import load_split
from model.rnnlm import BetterRnnlm, ModelConfig, init_params
from model.train import TrainConfig, Trainer, clip_grads, sgd_update

TARGETS = {650: 0.95}  # numpy/torch tokens per second (the brief's)
EPOCH_TOKENS = 928_900  # the book's 1327 windows of 20x35 (PERFORMANCE.md)
WINDOWS = 8  # distinct windows the timed steps cycle through


def torch_step_fn(torch: Any, tm: Any, V: int, lr: float, clip: float) -> Any:
    """A function (x (T, N), t (T, N), state) -> (loss tensor, state): one full step."""
    F = torch.nn.functional
    params = [p for p in tm.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)

    def step(x: Any, t: Any, state: Any) -> tuple[Any, Any]:
        if state is not None:
            state = (state[0].detach(), state[1].detach())  # truncated BPTT
        y, state = tm(x, state)  # (T, N, H)
        loss = F.cross_entropy(tm.out(y).view(-1, V), t.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        return loss, state

    return step


def check_same(torch: Any, cfg: ModelConfig, bx: np.ndarray, bt: np.ndarray,
               lr: float, clip: float) -> None:
    """Dropout 0, same weights: same loss, gradients and updated weights as torch."""
    cfg0 = replace(cfg, dropout=0.0)
    base = random_params(cfg0, seed=3)
    x, t = bx[0], bt[0]  # (N, T)
    xt, tt = (torch.from_numpy(np.ascontiguousarray(a.T)).long() for a in (x, t))  # (T, N)
    for dtype, tol in ((np.float64, 1e-9), (np.float32, 2e-4)):
        params = {k: v.astype(dtype) for k, v in base.items()}
        ours = BetterRnnlm(cfg0, {k: v.copy() for k, v in params.items()})
        tm = build_torch_lm(cfg0, params, dropout=0.0,
                            dtype=torch.float64 if dtype == np.float64 else torch.float32)
        tm.train()
        loss, _ = ours.forward(x, t, None, train=True, rng=np.random.default_rng(0))
        ours.backward()
        step = torch_step_fn(torch, tm, cfg.vocab_size, lr, clip)
        y, _ = tm(xt)
        tloss = torch.nn.functional.cross_entropy(tm.out(y).view(-1, cfg.vocab_size),
                                                  tt.reshape(-1))
        tloss.backward()
        tl = float(tloss.detach())
        tgrads = torch_as_ours(tm, cfg0, grad=True)
        gerr = max(float(np.max(np.abs(ours.grads[k] - tgrads[k])))
                   / max(float(np.max(np.abs(tgrads[k]))), 1e-30) for k in tgrads)
        # one full step on each (clip + SGD), from the same weights
        names = list(ours.params)
        grads = [ours.grads[k] for k in names]
        clip_grads(grads, clip)
        sgd_update([ours.params[k] for k in names], grads, lr)
        step(xt, tt, None)
        after = torch_as_ours(tm, cfg0)
        perr = max(float(np.max(np.abs(ours.params[k] - after[k]))) for k in after)
        lerr = abs(loss - tl) / abs(tl)
        print(f"  check {np.dtype(dtype).name}: loss numpy {loss:.6f} torch {tl:.6f} "
              f"(rel {lerr:.1e}); max rel grad diff {gerr:.1e}; max |weight diff| after a "
              f"step {perr:.1e}")
        assert lerr < tol, f"loss differs: {loss} vs {tl}"
        if dtype == np.float64:  # float32 gradients of tiny entries are too noisy to bound
            assert gerr < 1e-7, f"gradients differ: {gerr}"
            assert perr < 1e-9, f"weights after one step differ: {perr}"


def bench_size(torch: Any, H: int, ids: np.ndarray, V: int, args: argparse.Namespace) -> dict:
    """Check, then time numpy and torch steps interleaved; -> this size's results."""
    tc = TrainConfig(wordvec_size=H, hidden_size=H, batch_size=20, bptt=35)
    N, T = (4, 8) if args.smoke else (tc.batch_size, tc.bptt)
    tc = replace(tc, batch_size=N, bptt=T)
    cfg = tc.model_config(V)
    print(f"\n-- 2x{H} tied, V={V}, {N}x{T} windows, dropout {tc.dropout}, clip {tc.clip}, "
          f"SGD lr {tc.lr}")
    ids = ids[: N * T * WINDOWS + 1]
    params = init_params(cfg, np.random.default_rng(0))
    # The real Trainer (its train_step is what `rnnlm train` runs); it writes nothing
    # unless asked to checkpoint, so its folder is never created.
    trainer = Trainer(BetterRnnlm(cfg, {k: v.copy() for k, v in params.items()}), tc,
                      ids, ids[:2], Path(tempfile.gettempdir()) / "rnnlm-bench-unused",
                      rng=np.random.default_rng(0))
    bx, bt = trainer.bx, trainer.bt  # (K, N, T): the book's batching of ids
    # The awd recipe's training-only parts (locked, embedding and weight dropout, AR/TAR,
    # weight decay) on the same windows: the randomised length is off so that the windows
    # match; its share of a step is what the recipe adds.
    awd_tc = replace(TrainConfig.from_recipe({"recipe": "awd"}), wordvec_size=H, hidden_size=H,
                     batch_size=N, bptt=T, bptt_random=False)
    awd = Trainer(BetterRnnlm(cfg, {k: v.copy() for k, v in params.items()}), awd_tc, ids,
                  ids[:2], Path(tempfile.gettempdir()) / "rnnlm-bench-unused",
                  rng=np.random.default_rng(0))
    check_same(torch, cfg, bx, bt, tc.lr, tc.clip)
    tm = build_torch_lm(cfg, params, dropout=tc.dropout).train()
    torch_step = torch_step_fn(torch, tm, V, tc.lr, tc.clip)
    tx = [torch.from_numpy(np.ascontiguousarray(a.T)).long() for a in bx]  # (T, N)
    tt = [torch.from_numpy(np.ascontiguousarray(a.T)).long() for a in bt]
    it = {"numpy": 0, "torch": 0, "awd": 0}
    tstate: dict[str, Any] = {"s": None}

    def numpy_fn() -> float:
        i = it["numpy"] % len(bx)
        it["numpy"] += 1
        return trainer.train_step(bx[i], bt[i])

    def awd_fn() -> float:
        i = it["awd"] % len(bx)
        it["awd"] += 1
        return awd.train_step(bx[i], bt[i])

    def torch_fn() -> float:
        i = it["torch"] % len(tx)
        it["torch"] += 1
        loss, tstate["s"] = torch_step(tx[i], tt[i], tstate["s"])
        return float(loss.detach())

    rounds = args.rounds or (2 if args.smoke else 6)
    reps = args.reps or (1 if args.smoke else 3)
    timings = interleave({"numpy": numpy_fn, "torch": torch_fn, "awd": awd_fn}, rounds, reps,
                         pause=pause_of(args))
    tn, tt_ = timings["numpy"], timings["torch"]
    ta = timings["awd"]
    awd_cost = Ratio.of(tn, ta)  # the awd step's time over the book's: at most 1.15
    r = Ratio.of(tn, tt_)
    tokens = N * T
    target = None if args.smoke else TARGETS.get(H)
    ln, lt = numpy_fn(), torch_fn()
    print(f"{rounds} interleaved rounds x {reps} steps; tokens/s, median of round medians "
          f"[min-max]; losses after the run: numpy {ln:.3f}, torch {lt:.3f}")
    print_table(
        ["model", "numpy tok/s", "torch tok/s", "numpy/torch", "target", "epoch numpy/torch"],
        [[f"2x{H}", rate(tn, tokens), rate(tt_, tokens), str(r), verdict(r.value, target),
          f"{EPOCH_TOKENS * tn.median / tokens:.0f} s / "
          f"{EPOCH_TOKENS * tt_.median / tokens:.0f} s"]])
    print(f"awd recipe's training-only layers: {rate(ta, tokens)} tok/s, a step takes "
          f"{awd_cost} of the book recipe's (target at most 1.15x: "
          f"{'ok' if awd_cost.value <= 1.15 else 'MISS'})")
    return {
        "awd_tok_s": round(tokens / ta.median, 1), "awd_step_ratio": round(awd_cost.value, 3),
        "window": [N, T], "numpy_tok_s": round(tokens / tn.median, 1),
        "torch_tok_s": round(tokens / tt_.median, 1), "numpy_step_s": round(tn.median, 4),
        "torch_step_s": round(tt_.median, 4), "ratio": round(r.value, 3),
        "ratio_min": round(r.lo, 3), "ratio_max": round(r.hi, 3),
        "target": target, "met": None if target is None else r.value >= target,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = base_parser(__doc__.splitlines()[0], "650,256")
    args = p.parse_args(argv)
    torch, info = start("train: numpy Trainer.train_step vs torch (float32)", args)
    monitor = CpuMonitor()
    data_dir = find_data_dir(args.data_dir)
    vocab = ptb_vocab(data_dir)
    if data_dir is not None and vocab is not None:
        ids = load_split(data_dir, "train", vocab).astype(np.int64)
        V = len(vocab)
    else:
        V = 10000
        ids = np.random.default_rng(0).integers(0, V, 100_000)
    results = {f"2x{H}": bench_size(torch, H, ids, V, args) for H in sizes_of(args)}
    finish("train", args, info, monitor, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
